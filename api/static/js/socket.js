// A websocket that keeps itself connected: it reconnects with a growing, jittered delay
// (1 s doubling to 30 s, back to 1 s once a connection has delivered a message), at once
// after a 4408 (the server closed a client that fell behind: resume) or when the browser
// comes back online, and it closes a connection that stays silent past three heartbeat
// periods (a dead link the browser has not noticed). A 4401 (the key is refused) or 4403
// stops it: the owner decides what to do.

export const State = Object.freeze({
  CONNECTING: 'connecting',
  OPEN: 'open',
  RECONNECTING: 'reconnecting',
  STOPPED: 'stopped',
});

const FIRST_DELAY_MS = 1000;
const MAX_DELAY_MS = 30000;

export class LiveSocket {
  // url(): the address of the next connection (with the current cursor);
  // protocols(): its subprotocols; onMessage(message); onState(state, info);
  // onRefused(code, reason): a close that must not be retried.
  constructor({ name, url, protocols, onMessage, onState, onRefused, heartbeatS = 15 }) {
    this.name = name;
    this.url = url;
    this.protocols = protocols;
    this.onMessage = onMessage;
    this.onState = onState || (() => {});
    this.onRefused = onRefused || (() => {});
    this.silenceMs = Math.max(10000, heartbeatS * 3000);
    this.state = State.STOPPED;
    this.ws = null;
    this.delay = FIRST_DELAY_MS;
    this.failures = 0;
    this.timer = null;
    this.watchdog = null;
    this.connects = 0;
    this._online = () => this.state === State.RECONNECTING && this._connectSoon(0);
  }

  start() {
    if (this.state !== State.STOPPED) return;
    window.addEventListener('online', this._online);
    this._connect();
  }

  stop() {
    window.removeEventListener('online', this._online);
    this._setState(State.STOPPED);
    clearTimeout(this.timer);
    clearTimeout(this.watchdog);
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.onclose = ws.onmessage = ws.onerror = ws.onopen = null;
      ws.close(1000, 'signed out');
    }
  }

  // Drop the current connection and open a new one (as after a lost link).
  reconnect() {
    if (this.ws) this.ws.close(4000, 'reconnect');
  }

  _setState(state, info = {}) {
    this.state = state;
    this.onState(state, { failures: this.failures, ...info });
  }

  _connect() {
    clearTimeout(this.timer);
    this._setState(this.connects === 0 ? State.CONNECTING : State.RECONNECTING);
    let ws;
    try {
      ws = new WebSocket(this.url(), this.protocols());
    } catch (error) {
      this._closed(1006, String(error));
      return;
    }
    this.ws = ws;
    this.connects += 1;
    let heard = false;
    ws.onopen = () => {
      this._setState(State.OPEN);
      this._arm();
    };
    ws.onmessage = (event) => {
      this._arm();
      if (!heard) {
        heard = true;
        this.delay = FIRST_DELAY_MS;
        this.failures = 0;
      }
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      this.onMessage(message);
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      clearTimeout(this.watchdog);
      this._closed(event.code, event.reason);
    };
  }

  _arm() {
    clearTimeout(this.watchdog);
    this.watchdog = setTimeout(() => this.ws && this.ws.close(4000, 'silent'), this.silenceMs);
  }

  _closed(code, reason) {
    if (this.state === State.STOPPED) return;
    if (code === 4401 || code === 4403 || code === 4400) {
      this._setState(State.STOPPED, { code, reason });
      window.removeEventListener('online', this._online);
      this.onRefused(code, reason);
      return;
    }
    if (code === 4408) {
      this._setState(State.RECONNECTING, { code, reason });
      this._connectSoon(0);
      return;
    }
    this.failures += 1;
    const wait = this.delay * (0.8 + Math.random() * 0.4);
    this.delay = Math.min(this.delay * 2, MAX_DELAY_MS);
    this._setState(State.RECONNECTING, { code, reason, retryInMs: wait });
    this._connectSoon(wait);
  }

  _connectSoon(ms) {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this._connect(), ms);
  }
}
