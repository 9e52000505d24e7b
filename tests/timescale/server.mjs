// Test-only PostgreSQL + TimescaleDB server without Docker.
//
// An in-memory PGlite (PostgreSQL 17 compiled to WASM, with TimescaleDB
// bundled) is exposed on 127.0.0.1 over the PostgreSQL wire protocol with
// pglite-socket's connection handler. PGlite is one session: one client
// connection is served at a time, the others wait until it closes.
//
// Usage: node server.mjs [PORT]        (or PGLITE_PORT=PORT; 0 = any free port)
// Prints exactly one line, "READY <port>", on stdout once it accepts
// connections; everything else goes to stderr. Stops on SIGTERM/SIGINT, and
// also when stdin reaches EOF if PGLITE_EXIT_ON_STDIN_EOF=1 (so that a parent
// which dies without cleaning up does not leave this process behind).
//
// pglite-socket 0.0.19's handler passes each TCP chunk to PGlite as it comes.
// PGlite hits a WASM trap (and this process dies) when a chunk ends inside a
// message, or when COPY FROM STDIN waits for data that is not in the same
// call; and it keeps one session for all clients. The Wire class below sits
// between the two: it passes on whole messages only, answers SSL and GSSAPI
// requests with "N" (not supported), resets the session when a new client
// starts up (rollback, DISCARD ALL, PGlite's own settings), and runs a simple
// query COPY ... FROM STDIN together with its data. A trap that still happens
// ends the process: PGlite is in an unknown state after one.

import { PGlite } from '@electric-sql/pglite'
import { timescaledb } from '@electric-sql/pglite/timescaledb'
import { PGLiteSocketHandler } from '@electric-sql/pglite-socket'
import net from 'node:net'

const SSL_REQUEST = 80877103
const GSSENC_REQUEST = 80877104
const CANCEL_REQUEST = 80877102
const code = (letter) => letter.charCodeAt(0)

function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0))
  let at = 0
  for (const p of parts) {
    out.set(p, at)
    at += p.length
  }
  return out
}

function int32(bytes, at) {
  return new DataView(bytes.buffer, bytes.byteOffset + at, 4).getInt32(0)
}

function query(sql) {
  const body = new TextEncoder().encode(`${sql}\0`)
  const out = new Uint8Array(5 + body.length)
  out[0] = code('Q')
  new DataView(out.buffer).setInt32(1, 4 + body.length)
  out.set(body, 5)
  return out
}

// Splits whole messages off the front of `bytes`. A message starting with a
// zero byte has no type byte (startup, SSL, GSSAPI and cancel requests).
function splitMessages(bytes) {
  const messages = []
  let at = 0
  for (;;) {
    const typed = bytes[at] !== 0
    const header = typed ? 5 : 4
    if (bytes.length - at < header) break
    const size = int32(bytes, typed ? at + 1 : at) + (typed ? 1 : 0)
    if (bytes.length - at < size) break
    messages.push(bytes.subarray(at, at + size))
    at += size
  }
  return { messages, rest: bytes.slice(at) }
}

// Index just past the first backend message of type `letter`, or -1.
function endOfFirst(bytes, letter) {
  for (let at = 0; at + 5 <= bytes.length; ) {
    const end = at + 1 + int32(bytes, at + 1)
    if (bytes[at] === code(letter)) return end
    at = end
  }
  return -1
}

const textOf = (m) => new TextDecoder().decode(m.subarray(5))
const COPY_FROM_STDIN = /^\s*copy\b[\s\S]*\bfrom\s+stdin\b/i
const COPY_DONE = new Uint8Array([code('c'), 0, 0, 0, 4])
const COPY_BINARY = /\(\s*format\s+binary\b|\bbinary\b/i
// An empty binary COPY stream: signature, flags, header extension length, trailer.
const EMPTY_BINARY_COPY = (() => {
  const data = concat([
    new TextEncoder().encode('PGCOPY\n'),
    new Uint8Array([0xff, 0x0d, 0x0a, 0x00]),
    new Uint8Array(8),
    new Uint8Array([0xff, 0xff]),
  ])
  const message = new Uint8Array(5 + data.length)
  message[0] = code('d')
  new DataView(message.buffer).setInt32(1, 4 + data.length)
  message.set(data, 5)
  return message
})()

class Wire {
  constructor(db, resetSession) {
    this.db = db
    this.resetSession = resetSession // run before each client's startup packet
    this.reset()
  }

  reset() {
    this.pending = new Uint8Array(0)
    this.copy = null // messages of a COPY FROM STDIN until CopyDone/CopyFail
    this.startedUp = false // the client sent a message past its startup packet
  }

  // What pglite-socket needs of a PGlite instance.
  get waitReady() {
    return this.db.waitReady
  }

  runExclusive(fn) {
    // The handler rejects its lock when the client socket fails (e.g. reset
    // by a client that gave up) and never looks at the result: without this
    // catch that rejection is unhandled and ends the process.
    const done = this.db.runExclusive(fn)
    done.catch(() => {})
    return done
  }

  async execProtocolRaw(chunk) {
    try {
      return this.exchange(chunk)
    } catch (err) {
      console.error('PGlite failed, stopping:', err)
      process.exit(70)
    }
  }

  exchange(chunk) {
    const { messages, rest } = splitMessages(concat([this.pending, chunk]))
    this.pending = rest
    const replies = []
    let batch = []
    const flush = () => {
      if (batch.length > 0) replies.push(this.db.execProtocolRawSync(concat(batch)))
      batch = []
    }
    for (const m of messages) {
      if (m[0] !== 0) this.startedUp = true
      if (this.copy) {
        this.copy.push(m)
        if (m[0] === code('c') || m[0] === code('f')) {
          // The client already has its CopyInResponse: drop the repeated one.
          const reply = this.db.execProtocolRawSync(concat(this.copy))
          replies.push(reply.subarray(Math.max(endOfFirst(reply, 'G'), 0)))
          this.copy = null
        }
      } else if (m[0] === 0) {
        const request = int32(m, 4)
        flush()
        if (request === SSL_REQUEST || request === GSSENC_REQUEST) {
          replies.push(new Uint8Array([code('N')]))
        } else if (request !== CANCEL_REQUEST) {
          this.db.execProtocolRawSync(this.resetSession)
          batch.push(m)
        }
      } else if (m[0] === code('Q') && COPY_FROM_STDIN.test(textOf(m))) {
        // Dry run with no rows to get the CopyInResponse (or the error) now;
        // the real run waits until the client has sent all of its data.
        // A binary COPY needs its header even when empty, or the dry run fails (and
        // aborts the client's transaction).
        flush()
        const probe = COPY_BINARY.test(textOf(m)) ? [m, EMPTY_BINARY_COPY, COPY_DONE] : [m, COPY_DONE]
        const reply = this.db.execProtocolRawSync(concat(probe))
        const end = endOfFirst(reply, 'G')
        if (end < 0) {
          replies.push(reply)
        } else {
          replies.push(reply.subarray(0, end))
          this.copy = [m]
        }
      } else {
        batch.push(m)
      }
    }
    flush()
    return concat(replies)
  }
}

const rawPort = process.argv[2] ?? process.env.PGLITE_PORT ?? '5432'
const port = Number.parseInt(rawPort, 10)
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`invalid port: ${rawPort}`)
  process.exit(2)
}

const db = await PGlite.create({ extensions: { timescaledb } })

// What a new client gets: no transaction, nothing left by the previous client,
// and the settings PGlite makes for its own session (search_path = public),
// which DISCARD ALL would undo. PGlite starts its backend with
// client_min_messages = debug3; clients get PostgreSQL's usual "notice".
const { rows: ownSettings } = await db.query(
  "SELECT format('SELECT set_config(%L, %L, false)', name, setting) AS sql" +
    " FROM pg_settings WHERE source = 'session'",
)
const resetSession = concat([
  new Uint8Array([code('S'), 0, 0, 0, 4]), // ends a failed extended-protocol exchange
  query('ROLLBACK'),
  query('DISCARD ALL'),
  ...ownSettings.map((row) => query(row.sql)),
  query('SET client_min_messages TO notice'),
])
const wire = new Wire(db, resetSession)

// One client at a time, the others wait in arrival order. (pglite-socket's
// own server stalls or dies when a queued client gives up, so it is not used.)
// A client that gave up while waiting may still hold its socket open: one that
// has not got past its startup packet (sent its password) within
// STARTUP_TIMEOUT_MS of its turn is dropped, so that it does not block the
// clients behind it.
const STARTUP_TIMEOUT_MS = 3000
const waiting = []
let serving = null

function serveNext() {
  if (serving) return
  const socket = waiting.shift()
  if (!socket) return
  if (socket.destroyed) return serveNext()
  serving = socket
  wire.reset()
  const handler = new PGLiteSocketHandler({ db: wire, closeOnDetach: true })
  const timer = setTimeout(() => wire.startedUp || socket.destroy(), STARTUP_TIMEOUT_MS)
  const finish = () => {
    if (serving !== socket) return
    serving = null
    clearTimeout(timer)
    socket.destroy()
    serveNext()
  }
  handler.addEventListener('close', finish)
  handler.addEventListener('error', finish)
  handler.attach(socket).then(
    () => {
      // Closed before the handler listened for it: no close event will come.
      if (socket.destroyed) {
        handler.detach(true)
        finish()
      }
    },
    (err) => {
      console.error('attach failed:', err)
      finish()
    },
  )
}

const server = net.createServer((socket) => {
  socket.on('error', () => {}) // a waiting client that vanishes is just skipped
  waiting.push(socket)
  serveNext()
})

let stopping = false
async function shutdown(reason) {
  if (stopping) return
  stopping = true
  console.error(`stopping (${reason})`)
  // Give up on a clean stop if it hangs; the caller is waiting for us to exit.
  setTimeout(() => process.exit(1), 5000).unref()
  server.close()
  for (const socket of [serving, ...waiting]) socket?.destroy()
  try {
    await db.close()
  } catch (err) {
    console.error('error during shutdown:', err)
    process.exit(1)
  }
  process.exit(0)
}

process.on('SIGTERM', () => shutdown('SIGTERM'))
process.on('SIGINT', () => shutdown('SIGINT'))
if (process.env.PGLITE_EXIT_ON_STDIN_EOF === '1') {
  process.stdin.on('end', () => shutdown('stdin closed'))
  process.stdin.resume()
}

server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`READY ${server.address().port}\n`)
})
