// One word for how a sector is doing, shown as the tile's colour: the worst of its open
// alerts and of its headline KPIs' statuses; `offline` when it has sources and none of them
// is online; `unknown` with neither sources nor values.

export const RANK = { unknown: 0, normal: 1, offline: 2, info: 3, warning: 4, critical: 5 };
export const SEVERITIES = ['critical', 'warning', 'info'];

export function worst(a, b) {
  return (RANK[b] ?? 0) > (RANK[a] ?? 0) ? b : a;
}

export function sectorStatus(sector) {
  let status = 'unknown';
  const alerts = sector.alerts || {};
  for (const severity of SEVERITIES) if (alerts[severity] > 0) status = worst(status, severity);
  let anyValue = false;
  for (const kpi of sector.kpis || []) {
    if (kpi.status && kpi.status !== 'unknown') {
      anyValue = true;
      status = worst(status, kpi.status);
    }
  }
  const sources = sector.sources || {};
  if (sources.total > 0 && sources.online === 0 && RANK[status] < RANK.offline) status = 'offline';
  if (status === 'unknown' && (anyValue || sources.online > 0)) status = 'normal';
  return status;
}

// The most severe of some alerts' severities (null: none).
export function worstSeverity(alerts) {
  let found = null;
  for (const alert of alerts) {
    if (found === null || RANK[alert.severity] > RANK[found]) found = alert.severity;
  }
  return found;
}
