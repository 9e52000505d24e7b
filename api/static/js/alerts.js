// The alerts the screen knows, one per alert id: filled with the active alerts once the alert
// socket is live, then kept current by its events (in commit order), and by the answers to
// the operator's own actions. An event for a known alert changes that alert; nothing is ever
// listed twice.

const RAISING = new Set(['opened', 'raised', 'reopened', 'escalated']);
const MAX_RESOLVED = 100;

function stamp(value) {
  const ms = Date.parse(value);
  return Number.isNaN(ms) ? 0 : ms;
}

// The alert of a websocket event (`sector`) or of the REST API (`sector_id`), one shape.
export function normalise(alert, at) {
  return {
    id: alert.id,
    sector: alert.sector ?? alert.sector_id,
    source_id: alert.source_id ?? null,
    metric: alert.metric ?? null,
    rule_kind: alert.rule_kind ?? null,
    severity: alert.severity,
    peak_severity: alert.peak_severity ?? null,
    status: alert.status,
    title: alert.title,
    title_en: alert.title_en ?? null,
    last_value: alert.last_value ?? null,
    occurrences: alert.occurrences ?? 1,
    escalation_level: alert.escalation_level ?? 0,
    opened_at: alert.opened_at,
    acknowledged_by: alert.acknowledged_by ?? null,
    resolved_by: alert.resolved_by ?? null,
    assigned_to: alert.assigned_to ?? null,
    retracted: Boolean(alert.retracted),
    stamp: stamp(at ?? alert.updated_at),
  };
}

export class AlertStore extends EventTarget {
  constructor() {
    super();
    this.alerts = new Map();
    this.cursor = null;
  }

  reset() {
    this.alerts.clear();
    this.cursor = null;
    this._changed([], null);
  }

  get(id) {
    return this.alerts.get(id);
  }

  // The cursor of a message of /ws/alerts (events, `live`, heartbeats): where to resume.
  seen(cursor) {
    if (typeof cursor === 'number' && (this.cursor === null || cursor > this.cursor)) this.cursor = cursor;
  }

  // One websocket event: events come in commit order, so each one's alert is the newest state.
  // A resolved alert the screen never listed stays out.
  applyEvent(event) {
    const alert = normalise(event.alert, event.at);
    const known = this.alerts.get(alert.id);
    if (!known && alert.status === 'resolved') return null;
    this.alerts.set(alert.id, { ...known, ...alert, stamp: Math.max(alert.stamp, known?.stamp ?? 0) });
    const flash = alert.severity === 'critical' && RAISING.has(event.kind) && alert.status === 'open';
    this._prune();
    this._changed([alert.id], { kind: event.kind, id: alert.id, flash, isNew: !known });
    return alert.id;
  }

  // Alerts from GET /alerts: only those the socket has not told about already.
  addListed(items) {
    const added = [];
    for (const item of items) {
      if (this.alerts.has(item.id)) continue;
      this.alerts.set(item.id, normalise(item));
      added.push(item.id);
    }
    if (added.length) this._changed(added, null);
  }

  // The answer of an action: the alert afterwards, unless an event already told something newer.
  applyAnswer(item) {
    const alert = normalise(item);
    const known = this.alerts.get(alert.id);
    if (known && known.stamp > alert.stamp) return;
    this.alerts.set(alert.id, alert);
    this._changed([alert.id], null);
  }

  sorted() {
    return [...this.alerts.values()].sort((a, b) => stamp(b.opened_at) - stamp(a.opened_at) || b.id - a.id);
  }

  active() {
    return [...this.alerts.values()].filter((a) => a.status !== 'resolved');
  }

  _prune() {
    const resolved = this.sorted().filter((a) => a.status === 'resolved');
    for (const alert of resolved.slice(MAX_RESOLVED)) this.alerts.delete(alert.id);
  }

  _changed(ids, event) {
    this.dispatchEvent(new CustomEvent('change', { detail: { ids, event } }));
  }
}
