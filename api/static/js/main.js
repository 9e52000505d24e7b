// The operations screen: sign-in, then the sector tiles (/ws/live), the alert feed
// (/ws/alerts), an alert's detail and the sector view. Everything a session starts (sockets,
// timers) stops when it signs out or its key is refused.

import { ApiError, all, bus, forgetKey, get, storedKey, storeKey, takeKeyFromAddress, validKey, wsUrl } from './api.js';
import { AlertStore } from './alerts.js';
import { AlertDetail } from './detail.js';
import { $, el } from './dom.js';
import { Actions, AlertFeed } from './feed.js';
import * as fmt from './format.js';
import { initialLanguage, lang, loadStrings, onLangChange, pick, setLang, t } from './i18n.js';
import { SectorView } from './sector.js';
import { LiveSocket, State } from './socket.js';
import { TileBoard } from './tiles.js';

const SECTORS_POLL_MS = 15000;
const SECTORS_POLL_AFTER_MS = 10000;
const OFFLINE_AFTER_FAILURES = 3;

let config = null;
let session = null;

function toast(message, kind = 'info') {
  const box = $('[data-testid="toast"]');
  const item = el('div', { class: `toast-item ${kind}`, text: message, dataset: { testid: 'toast-item' } });
  box.append(item);
  setTimeout(() => item.remove(), kind === 'error' ? 10000 : 5000);
}

// --- one signed-in session ------------------------------------------------------------------

class Session {
  constructor(key) {
    this.key = key;
    this.profile = null;
    this.store = new AlertStore();
    this.actions = new Actions({ store: this.store, toast });
    this.actions.useKey(key);
    this.tiles = new TileBoard($('[data-testid="tiles"]'), { onOpen: (id) => showSector(id) });
    const sectorOf = (id) => this.tiles.sector(id) || this.profile?.sectors.find((s) => s.id === id);
    this.feed = new AlertFeed($('[data-testid="alert-list"]'), {
      store: this.store,
      actions: this.actions,
      sectors: sectorOf,
      onOpen: (id) => this.detail.open(id),
      onComment: (id) => this.detail.open(id, { focusComment: true }),
    });
    this.detail = new AlertDetail($('[data-testid="alert-detail"]'), {
      store: this.store,
      actions: this.actions,
      sectors: sectorOf,
      profile: () => this.profile,
    });
    this.sectorView = new SectorView($('[data-testid="sector-view"]'), {
      store: this.store,
      sectors: sectorOf,
      profile: () => this.profile,
      config,
      onClose: () => {
        if (location.hash.startsWith('#sector=')) history.pushState(null, '', location.pathname + location.search);
        showBoard();
      },
      onOpenAlert: (id) => this.detail.open(id),
    });
    this.states = { alerts: State.CONNECTING, live: State.CONNECTING };
    this.failures = { alerts: 0, live: 0 };
    this.listed = false;
    this.snapshot = false;
    this.pollTimer = null;
    this.stopped = false;
  }

  async start() {
    this.feed.reset();
    this.tiles.reset();
    try {
      this.profile = await get('/profile');
    } catch (error) {
      if (error.status === 401 || this.stopped) return;
      toast(`${t('error.load')}: ${error.detail || error.message}`, 'error');
      this.retry = setTimeout(() => !this.stopped && this.start(), 5000);
      return;
    }
    if (this.stopped) return;
    fmt.setTimeZone(this.profile.timezone);
    renderTitle(this.profile);
    this._pollSectors();
    this.alerts = new LiveSocket({
      name: 'alerts',
      heartbeatS: config.ws_heartbeat_s,
      url: () => {
        const url = wsUrl('ws/alerts');
        if (this.store.cursor !== null) url.searchParams.set('since', String(this.store.cursor));
        return url;
      },
      protocols: () => ['ioc.v1', `bearer.${this.key}`],
      onMessage: (message) => this._alertMessage(message),
      onState: (state, info) => this._state('alerts', state, info),
      onRefused: (code, reason) => this._refused(code, reason),
    });
    this.live = new LiveSocket({
      name: 'live',
      heartbeatS: config.ws_heartbeat_s,
      url: () => wsUrl('ws/live'),
      protocols: () => ['ioc.v1', `bearer.${this.key}`],
      onMessage: (message) => this._liveMessage(message),
      onState: (state, info) => this._state('live', state, info),
      onRefused: (code, reason) => this._refused(code, reason),
    });
    this.alerts.start();
    this.live.start();
    route();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.retry);
    clearTimeout(this.pollTimer);
    this.alerts?.stop();
    this.live?.stop();
    this.detail.close();
    this.sectorView.close({ silent: true });
    this.tiles.reset();
    this.feed.reset();
    this.store.reset();
  }

  _alertMessage(message) {
    if (message.type === 'reset') {
      // the server cannot replay from our cursor (a database replaced, or too far behind):
      // what is shown may be stale; drop it and list the active alerts once the socket is live
      this.store.reset();
      this.listed = false;
    }
    this.store.seen(message.cursor);
    if (message.type === 'event') {
      this.store.applyEvent(message.event);
    } else if (message.type === 'live' && !this.listed) {
      // the socket is live: every change from here on arrives on it, so the list read now
      // misses nothing (what it already shows, the events merely confirm)
      this.listed = true;
      this._listActive();
    }
  }

  async _listActive() {
    try {
      const items = await all('/alerts?status=open&status=acknowledged&limit=500', { maxPages: 4 });
      if (!this.stopped) this.store.addListed(items);
    } catch (error) {
      if (error.status !== 401 && !this.stopped) {
        toast(`${t('error.load')}: ${error.detail || error.message}`, 'error');
        this.listed = false;
      }
    }
  }

  _liveMessage(message) {
    if (message.type === 'snapshot') {
      this.snapshot = true;
      this.tiles.replaceAll(message.sectors);
      this._sectorsShown();
      const open = this.sectorView.sectorId && this.tiles.sector(this.sectorView.sectorId);
      if (open) this.sectorView.sectorChanged(open);
    } else if (message.type === 'sector') {
      if (this.tiles.update(message.sector)) this.sectorView.sectorChanged(message.sector);
    }
  }

  // GET /sectors at start and, every few seconds, while /ws/live is not delivering.
  _pollSectors() {
    clearTimeout(this.pollTimer);
    const poll = async () => {
      if (this.stopped || this.states.live === State.OPEN) return;
      try {
        const answer = await get('/sectors');
        if (this.stopped) return;
        if (!this.snapshot || this.states.live !== State.OPEN) {
          for (const sector of answer.sectors) this.tiles.update(sector);
          if (!this.snapshot) this.tiles.replaceAll(answer.sectors);
          this._sectorsShown();
        }
      } catch (error) {
        if (error instanceof ApiError && error.status === 401) return;
      }
      if (!this.stopped && this.states.live !== State.OPEN) this.pollTimer = setTimeout(poll, SECTORS_POLL_MS);
    };
    poll();
  }

  _sectorsShown() {
    $('[data-testid="tiles-empty"]').hidden = this.tiles.size > 0;
  }

  _state(name, state, info) {
    this.states[name] = state;
    this.failures[name] = info.failures || 0;
    if (name === 'live') {
      if (state === State.OPEN) clearTimeout(this.pollTimer);
      else if (state === State.RECONNECTING) {
        clearTimeout(this.pollTimer);
        this.pollTimer = setTimeout(() => this._pollSectors(), SECTORS_POLL_AFTER_MS);
      }
    }
    showConnection(this);
  }

  _refused(code, reason) {
    if (code === 4401) signOut(t('signin.expired'));
    else toast(`${t('error.socket')}: ${reason || code}`, 'error');
  }

  connection() {
    const states = Object.values(this.states);
    if (!navigator.onLine) return 'offline';
    if (states.every((s) => s === State.OPEN)) return 'connected';
    if (Object.values(this.failures).some((n) => n >= OFFLINE_AFTER_FAILURES)) return 'offline';
    if (states.some((s) => s === State.STOPPED)) return 'offline';
    return states.some((s) => s === State.RECONNECTING) ? 'reconnecting' : 'connecting';
  }

  refreshLabels() {
    this.tiles.refreshLabels();
    this.feed.renderAll();
    this.detail.refreshLabels();
    this.sectorView.refreshLabels();
    renderTitle(this.profile);
    showConnection(this);
  }
}

// --- screen-wide pieces ----------------------------------------------------------------------

function renderTitle(profile) {
  const source = profile || config?.profile;
  const title = pick(source, 'title') || 'IOC';
  $('[data-testid="title"]').textContent = title;
  document.title = `${title} · ${t('app.name')}`;
}

function showConnection(current) {
  const box = $('[data-testid="conn-state"]');
  const state = current ? current.connection() : 'offline';
  box.dataset.state = state;
  document.body.dataset.conn = state;
  box.querySelector('.conn-label').textContent = t(`conn.${state}`);
}

function showBoard() {
  $('[data-testid="tiles-panel"]').hidden = false;
}

function showSector(id) {
  if (location.hash !== `#sector=${encodeURIComponent(id)}`) history.pushState(null, '', `#sector=${encodeURIComponent(id)}`);
  route();
}

// `#sector=<id>` opens that sector's view (a link, the back button, a wall screen fixed on one).
function route() {
  if (!session || !session.profile) return;
  const params = new URLSearchParams(location.hash.slice(1));
  const id = params.get('sector');
  if (id && session.profile.sectors.some((s) => s.id === id)) {
    $('[data-testid="tiles-panel"]').hidden = true;
    if (session.sectorView.sectorId !== id) session.sectorView.open(id);
  } else if (session.sectorView.isOpen) {
    session.sectorView.close({ silent: true });
    showBoard();
  }
}

function showSignIn(message = '') {
  $('[data-testid="app"]').hidden = true;
  $('[data-testid="signin"]').hidden = false;
  $('[data-testid="signout"]').hidden = true;
  $('[data-testid="conn-state"]').hidden = true;
  const note = $('[data-testid="signin-message"]');
  note.textContent = message;
  note.hidden = !message;
  $('[data-testid="signin-key"]').focus();
}

function startSession(key) {
  session?.stop();
  $('[data-testid="signin"]').hidden = true;
  $('[data-testid="app"]').hidden = false;
  $('[data-testid="signout"]').hidden = false;
  $('[data-testid="conn-state"]').hidden = false;
  session = new Session(key);
  showConnection(session);
  session.start();
}

function signOut(message = '') {
  session?.stop();
  session = null;
  forgetKey();
  renderTitle(null);
  showSignIn(message);
}

async function signIn(event) {
  event.preventDefault();
  const input = $('[data-testid="signin-key"]');
  const key = input.value.trim();
  const note = $('[data-testid="signin-message"]');
  if (!validKey(key)) {
    note.textContent = t('signin.malformed');
    note.hidden = false;
    return;
  }
  const button = $('[data-testid="signin-submit"]');
  button.disabled = true;
  try {
    await get('/profile', { key, signOutOn401: false });
    storeKey(key);
    input.value = '';
    startSession(key);
  } catch (error) {
    note.textContent = error.status === 401 ? t('signin.refused') : `${t('error.load')}: ${error.detail || error.message}`;
    note.hidden = false;
  } finally {
    button.disabled = false;
  }
}

function tick() {
  const clock = $('[data-testid="clock"]');
  clock.textContent = fmt.timeSeconds(new Date());
}

async function boot() {
  const response = await fetch(new URL('screen/config.json', document.baseURI), { cache: 'no-store' });
  config = await response.json();
  await loadStrings(config.languages);
  setLang(initialLanguage(config.language), { remember: false });
  fmt.setTimeZone(config.profile.timezone);
  renderTitle(null);

  $('[data-testid="lang-toggle"]').addEventListener('click', () => setLang(lang() === 'vi' ? 'en' : 'vi'));
  $('[data-testid="signout"]').addEventListener('click', () => signOut(t('signin.signed_out')));
  $('[data-testid="signin-form"]').addEventListener('submit', signIn);
  onLangChange(() => {
    $('[data-testid="lang-toggle"]').textContent = lang() === 'vi' ? 'EN' : 'VI';
    session?.refreshLabels();
    if (!session) renderTitle(null);
    tick();
  });
  $('[data-testid="lang-toggle"]').textContent = lang() === 'vi' ? 'EN' : 'VI';
  bus.addEventListener('unauthorized', () => session && signOut(t(session.profile ? 'signin.expired' : 'signin.refused')));
  window.addEventListener('hashchange', () => {
    if (takeKeyFromAddress()) startSession(storedKey());
    else route();
  });
  window.addEventListener('popstate', route);
  window.addEventListener('online', () => session && showConnection(session));
  window.addEventListener('offline', () => session && showConnection(session));
  tick();
  setInterval(tick, 1000);

  takeKeyFromAddress();
  const key = storedKey();
  if (key) startSession(key);
  else showSignIn();
  document.body.dataset.ready = 'true';
}

boot().catch((error) => {
  document.body.dataset.ready = 'error';
  const box = $('[data-testid="toast"]');
  box.append(el('div', { class: 'toast-item error', text: `Không tải được màn hình / The screen failed to load: ${error.message}` }));
});
