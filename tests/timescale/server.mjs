// Test-only PostgreSQL + TimescaleDB server without Docker.
//
// An in-memory PGlite (PostgreSQL compiled to WASM, with the TimescaleDB
// extension bundled) is exposed on 127.0.0.1 over the PostgreSQL wire protocol.
// PGlite is single-session: the socket server serves one client connection at
// a time and queues the others until the current one closes.
//
// Usage: node server.mjs [PORT]        (or PGLITE_PORT=PORT; 0 = any free port)
// Prints exactly one line, "READY <port>", on stdout once it accepts
// connections; everything else goes to stderr. Stops on SIGTERM/SIGINT, and
// also when stdin reaches EOF if PGLITE_EXIT_ON_STDIN_EOF=1 (so that a parent
// which dies without cleaning up does not leave this process behind).

import { PGlite } from '@electric-sql/pglite'
import { timescaledb } from '@electric-sql/pglite/timescaledb'
import { PGLiteSocketServer } from '@electric-sql/pglite-socket'

const rawPort = process.argv[2] ?? process.env.PGLITE_PORT ?? '5432'
const port = Number.parseInt(rawPort, 10)
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`invalid port: ${rawPort}`)
  process.exit(2)
}

const db = await PGlite.create({ extensions: { timescaledb } })
const server = new PGLiteSocketServer({ db, host: '127.0.0.1', port })
server.addEventListener('error', (event) => {
  console.error('pglite-socket error:', event.detail)
})

let stopping = false
async function shutdown(reason) {
  if (stopping) return
  stopping = true
  console.error(`stopping (${reason})`)
  // Give up on a clean stop if it hangs; the caller is waiting for us to exit.
  setTimeout(() => process.exit(1), 5000).unref()
  try {
    await server.stop()
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

await server.start()
const [, actualPort] = server.getServerConn().split(':')
process.stdout.write(`READY ${actualPort}\n`)
