// One alert in full (GET /alerts/{id}) with its history (GET /alerts/{id}/history), the
// operator's actions and a comment box; kept current while open by the alert's events.

import { all, get } from './api.js';
import { clear, el } from './dom.js';
import { alertTitle } from './feed.js';
import * as fmt from './format.js';
import { pick, t, tOr } from './i18n.js';

// `key:ab12cd34:Trực ban ca 1` -> `Trực ban ca 1`; `system` -> the engine.
export function actorName(actor) {
  if (!actor) return '–';
  if (actor === 'system') return t('actor.system');
  const match = /^key:[^:]+:(.*)$/.exec(actor);
  if (match) return match[1];
  return actor.replace(/^cli:/, '');
}

function note(detail) {
  if (!detail) return null;
  if (detail.text) return detail.text;
  if (detail.note) return detail.note;
  if ('to' in detail) return detail.to ? `→ ${detail.to}` : t('history.unassigned');
  return null;
}

export class AlertDetail {
  constructor(panel, { store, actions, sectors, profile }) {
    this.panel = panel;
    this.store = store;
    this.actions = actions;
    this.sectors = sectors;
    this.profile = profile;
    this.alertId = null;
    this.history = [];
    this.loading = null;
    this.refreshTimer = null;
    this.draft = '';
    store.addEventListener('change', (event) => {
      if (this.alertId !== null && event.detail.ids.includes(this.alertId)) {
        this._render();
        this._refreshSoon();
      }
    });
    actions.addEventListener('change', () => this.alertId !== null && this._render());
    panel.addEventListener('keydown', (event) => event.key === 'Escape' && this.close());
  }

  async open(alertId, { focusComment = false } = {}) {
    this.alertId = alertId;
    this.history = [];
    this.remote = null;
    this.error = null;
    this.draft = '';
    this.panel.hidden = false;
    this._render();
    await this._load();
    if (focusComment) this.panel.querySelector('[data-testid="comment-text"]')?.focus();
    else this.panel.querySelector('[data-testid="detail-close"]')?.focus();
  }

  close() {
    this.alertId = null;
    clearTimeout(this.refreshTimer);
    this.panel.hidden = true;
    clear(this.panel);
  }

  async _load() {
    const id = this.alertId;
    try {
      const [alert, history] = await Promise.all([get(`/alerts/${id}`), all(`/alerts/${id}/history?limit=200`, { maxPages: 5 })]);
      if (id !== this.alertId) return;
      this.remote = alert;
      this.history = history;
      this._render();
    } catch (error) {
      if (id !== this.alertId || error.status === 401) return;
      this.error = error.detail || error.message;
      this._render();
    }
  }

  _refreshSoon() {
    clearTimeout(this.refreshTimer);
    this.refreshTimer = setTimeout(() => this._load(), 300);
  }

  refreshLabels() {
    if (this.alertId !== null) this._render();
  }

  _render() {
    const id = this.alertId;
    if (id === null) return;
    const box = this.panel.querySelector('[data-testid="comment-text"]');
    const typing = box !== null && document.activeElement === box;
    if (box) this.draft = box.value;
    const known = this.store.get(id);
    const alert = known || (this.remote ? { ...this.remote, sector: this.remote.sector_id } : null);
    const sector = alert ? this.sectors(alert.sector) : null;
    const metric = alert?.metric ? this.profile()?.sectors.find((s) => s.id === alert.sector)?.metrics.find((m) => m.id === alert.metric) : null;
    const remote = this.remote || {};
    const row = (label, value) => (value === null || value === undefined || value === '' ? null : el('div', { class: 'row' }, el('dt', { text: t(label) }), el('dd', { text: String(value) })));
    const canAct = this.actions.allowed && alert && alert.status !== 'resolved';
    const action = (kind, label, enabled) =>
      enabled
        ? el('button', {
            type: 'button',
            class: `act act-${kind}`,
            text: t(label),
            dataset: { testid: `detail-${kind}` },
            onclick: async (event) => {
              event.currentTarget.disabled = true;
              await this.actions.run(kind, id);
              this._refreshSoon();
            },
          })
        : null;
    clear(this.panel).append(
      el(
        'div',
        { class: `detail-card sev-${alert?.severity || 'info'}`, role: 'document' },
        el(
          'header',
          { class: 'detail-head' },
          el('span', { class: 'sev-badge', text: alert ? t(`severity.${alert.severity}`) : '' }),
          el('span', { class: 'status-badge', text: alert ? t(`alert_status.${alert.status}`) : '', dataset: { testid: 'detail-status' } }),
          el('span', { class: 'detail-id', text: `#${id}` }),
          el('button', { type: 'button', class: 'close', text: '×', 'aria-label': t('close'), dataset: { testid: 'detail-close' }, onclick: () => this.close() }),
        ),
        el('h2', { class: 'detail-title', text: alert ? alertTitle(alert) : t('loading') }),
        this.error ? el('p', { class: 'error', text: this.error }) : null,
        alert
          ? el(
              'dl',
              { class: 'detail-fields' },
              row('detail.sector', sector ? pick(sector) : alert.sector),
              row('detail.source', alert.source_id),
              row('detail.metric', metric ? pick(metric) : alert.metric),
              row('detail.value', alert.last_value === null ? null : fmt.quantity(alert.last_value, metric?.unit)),
              row('detail.opened', fmt.dateTime(alert.opened_at)),
              row('detail.condition_started', remote.condition_started_at ? fmt.dateTime(remote.condition_started_at) : null),
              row('detail.acknowledged', remote.acknowledged_at ? `${fmt.dateTime(remote.acknowledged_at)} · ${actorName(remote.acknowledged_by)}` : null),
              row('detail.resolved', remote.resolved_at ? `${fmt.dateTime(remote.resolved_at)} · ${actorName(remote.resolved_by)}` : null),
              row('detail.assigned', alert.assigned_to),
              row('detail.occurrences', alert.occurrences > 1 ? fmt.number(alert.occurrences) : null),
              row('detail.escalation', alert.escalation_level > 0 ? fmt.number(alert.escalation_level) : null),
            )
          : null,
        canAct
          ? el(
              'div',
              { class: 'detail-actions' },
              action('ack', 'action.ack', alert.status === 'open'),
              action('resolve', 'action.resolve', true),
            )
          : null,
        el('h3', { text: t('detail.history') }),
        el(
          'ol',
          { class: 'history', dataset: { testid: 'alert-history' } },
          this.history.map((entry) =>
            el(
              'li',
              { class: `hist hist-${entry.kind}`, dataset: { testid: 'history-entry', kind: entry.kind } },
              el('time', { datetime: entry.at, text: fmt.dateTime(entry.at) }),
              el('span', { class: 'hist-kind', text: tOr(`kind.${entry.kind}`, entry.kind) }),
              el('span', { class: 'hist-actor', text: actorName(entry.actor) }),
              note(entry.detail) ? el('q', { class: 'hist-note', text: note(entry.detail) }) : null,
            ),
          ),
        ),
        this.actions.allowed
          ? el(
              'form',
              {
                class: 'comment-form',
                dataset: { testid: 'comment-form' },
                onsubmit: async (event) => {
                  event.preventDefault();
                  const text = event.currentTarget.elements.text.value.trim();
                  if (!text) return;
                  if (await this.actions.run('comment', id, { text })) {
                    // the form may have been drawn again meanwhile (the comment's own event)
                    this.draft = '';
                    const box = this.panel.querySelector('[data-testid="comment-text"]');
                    if (box) box.value = '';
                    this._refreshSoon();
                  }
                },
              },
              el('label', { for: 'comment-text', text: t('detail.comment') }),
              el('textarea', { id: 'comment-text', name: 'text', rows: '2', maxlength: '2000', dataset: { testid: 'comment-text' }, placeholder: t('detail.comment_placeholder') }),
              el('button', { type: 'submit', class: 'act', text: t('action.comment'), dataset: { testid: 'comment-submit' } }),
            )
          : null,
      ),
    );
    const textarea = this.panel.querySelector('[data-testid="comment-text"]');
    if (textarea && this.draft) textarea.value = this.draft;
    if (textarea && typing) textarea.focus();
  }
}
