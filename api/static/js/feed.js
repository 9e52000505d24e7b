// The live alert feed: newest first, coloured by severity, a flash when an alert turns
// critical, and the operator's actions (acknowledge, comment, resolve), shown to keys that
// hold `alerts.act` (GET /me); a 403 all the same (a key's role changed) hides them too.

import { get, post } from './api.js';
import { clear, el } from './dom.js';
import * as fmt from './format.js';
import { lang, pick, t } from './i18n.js';

const FLASH_MS = 6000;

export function alertTitle(alert) {
  return lang() === 'en' && alert.title_en ? alert.title_en : alert.title;
}

export class Actions extends EventTarget {
  constructor({ store, toast }) {
    super();
    this.store = store;
    this.toast = toast;
    this.allowed = false;
    this.known = false;
  }

  // What this key may do, asked of the server: no buttons until it answers.
  async useKey(key) {
    const asked = (this.asking = {});
    this.allowed = false;
    this.known = false;
    this.dispatchEvent(new Event('change'));
    for (;;) {
      try {
        const me = await get('/me', { key });
        if (asked !== this.asking) return; // another key since
        this.allowed = me.permissions.includes('alerts.act');
        this.known = true;
        break;
      } catch (error) {
        if (error.status !== 0 || asked !== this.asking) return; // a 401 signs out
        await new Promise((done) => setTimeout(done, 5000)); // the server is away: ask again
      }
    }
    this.dispatchEvent(new Event('change'));
  }

  async run(kind, alertId, body) {
    const path = { ack: 'ack', resolve: 'resolve', comment: 'comments' }[kind];
    try {
      const answer = await post(`/alerts/${alertId}/${path}`, body || {});
      if (answer && answer.id) this.store.applyAnswer(answer);
      this.toast(t(`action.done.${kind}`, { id: alertId }));
      return true;
    } catch (error) {
      if (error.status === 403) {
        this.allowed = false;
        this.known = true;
        this.dispatchEvent(new Event('change'));
      }
      if (error.status !== 401) this.toast(`${t('action.failed')}: ${error.detail || error.message}`, 'error');
      return false;
    }
  }
}

export class AlertFeed {
  constructor(list, { store, actions, sectors, onOpen, onComment }) {
    this.list = list;
    this.store = store;
    this.actions = actions;
    this.sectors = sectors; // id -> sector (for names)
    this.onOpen = onOpen;
    this.onComment = onComment;
    this.items = new Map();
    this.flashUntil = new Map();
    this.ordering = null;
    store.addEventListener('change', (event) => this._changed(event.detail));
    actions.addEventListener('change', () => this.renderAll());
  }

  reset() {
    clearTimeout(this.ordering);
    this.ordering = null;
    this.items.clear();
    this.flashUntil.clear();
    clear(this.list);
    this._summary();
  }

  _changed({ ids, event }) {
    if (event?.flash) this.flashUntil.set(event.id, Date.now() + FLASH_MS);
    for (const id of ids) {
      const alert = this.store.get(id);
      if (alert) this._fill(this._item(id), alert);
    }
    // a burst of events (a replay after a reconnect) is put in order once, after the burst
    if (!this.ordering) {
      this.ordering = setTimeout(() => {
        this.ordering = null;
        this._order();
      }, 0);
    }
  }

  renderAll() {
    for (const alert of this.store.alerts.values()) this._fill(this._item(alert.id), alert);
    this._order();
  }

  _item(id) {
    let item = this.items.get(id);
    if (!item) {
      item = el('li', { class: 'alert', dataset: { testid: 'alert-item', alertId: String(id) } });
      this.items.set(id, item);
    }
    return item;
  }

  // Items in the store's order; items of alerts it dropped go away.
  _order() {
    const sorted = this.store.sorted();
    const keep = new Set(sorted.map((a) => a.id));
    for (const [id, item] of this.items) {
      if (!keep.has(id)) {
        item.remove();
        this.items.delete(id);
      }
    }
    sorted.forEach((alert, index) => {
      const item = this.items.get(alert.id);
      if (item && this.list.children[index] !== item) this.list.insertBefore(item, this.list.children[index] || null);
    });
    this._summary();
  }

  _summary() {
    const active = this.store.active();
    const critical = active.filter((a) => a.severity === 'critical' && a.status === 'open').length;
    const feed = this.list.closest('[data-testid="alert-feed"]');
    if (!feed) return;
    feed.querySelector('[data-testid="feed-count"]').textContent = t('feed.count', { n: fmt.number(active.length) });
    const banner = feed.querySelector('[data-testid="critical-banner"]');
    banner.hidden = critical === 0;
    banner.textContent = t('feed.critical_open', { n: fmt.number(critical) });
    feed.querySelector('[data-testid="feed-empty"]').hidden = this.store.alerts.size > 0;
    feed.dataset.canAct = this.actions.known ? String(this.actions.allowed) : '';
  }

  _fill(item, alert) {
    const sector = this.sectors(alert.sector);
    item.className = `alert sev-${alert.severity} status-${alert.status}`;
    item.dataset.severity = alert.severity;
    item.dataset.status = alert.status;
    const until = this.flashUntil.get(alert.id);
    if (until && until > Date.now()) {
      item.classList.add('flash');
      setTimeout(() => {
        item.classList.remove('flash');
        this.flashUntil.delete(alert.id);
      }, until - Date.now());
    }
    const open = () => this.onOpen(alert.id);
    const canAct = this.actions.allowed;
    const button = (kind, label, enabled) =>
      canAct && enabled
        ? el('button', {
            type: 'button',
            class: `act act-${kind}`,
            text: t(label),
            dataset: { testid: `alert-${kind}` },
            onclick: async (event) => {
              event.stopPropagation();
              if (kind === 'comment') {
                this.onComment(alert.id);
                return;
              }
              event.currentTarget.disabled = true;
              await this.actions.run(kind, alert.id);
            },
          })
        : null;
    clear(item).append(
      el(
        'div',
        {
          class: 'alert-body',
          role: 'button',
          tabindex: '0',
          onclick: open,
          onkeydown: (event) => event.key === 'Enter' && open(),
        },
        el(
          'div',
          { class: 'alert-top' },
          el('span', { class: 'sev-badge', text: t(`severity.${alert.severity}`) }),
          el('span', { class: 'status-badge', text: t(`alert_status.${alert.status}`), dataset: { testid: 'alert-status' } }),
          alert.escalation_level > 0 ? el('span', { class: 'esc-badge', text: t('alert.escalated', { n: alert.escalation_level }) }) : null,
          el('time', { class: 'alert-time', datetime: alert.opened_at, text: fmt.dayTime(alert.opened_at), title: fmt.dateTime(alert.opened_at) }),
        ),
        el('div', { class: 'alert-title', text: alertTitle(alert), dataset: { testid: 'alert-title' } }),
        el(
          'div',
          { class: 'alert-meta' },
          el('span', { class: 'alert-sector', text: sector ? pick(sector) : alert.sector }),
          alert.source_id ? el('span', { class: 'alert-source', text: alert.source_id }) : null,
          alert.occurrences > 1 ? el('span', { text: t('alert.occurrences', { n: alert.occurrences }) }) : null,
        ),
      ),
      canAct && alert.status !== 'resolved'
        ? el(
            'div',
            { class: 'alert-actions' },
            button('ack', 'action.ack', alert.status === 'open'),
            button('comment', 'action.comment', true),
            button('resolve', 'action.resolve', true),
          )
        : null,
    );
  }
}
