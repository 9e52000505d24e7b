// The sector tiles: one per sector the key may see, in display order, from the /ws/live
// snapshot and its `sector` updates (GET /sectors while the socket is down). Each shows the
// sector's status colour, its sources online and offline, its open alerts by severity and its
// headline KPI with a 24-hour sparkline (GET /telemetry/aggregate, hourly, every few minutes).

import { get } from './api.js';
import { clear, el, svg } from './dom.js';
import * as fmt from './format.js';
import { pick, t } from './i18n.js';
import { sectorStatus } from './status.js';

const SPARK_REFRESH_MS = 5 * 60 * 1000;
const HOUR_MS = 3600 * 1000;

// [from, to) covering the last 24 hours in whole hours: every screen asks the same question
// within an hour, which the API answers from its cache.
export function lastDay(now = Date.now()) {
  const to = Math.ceil(now / HOUR_MS) * HOUR_MS;
  return [new Date(to - 24 * HOUR_MS).toISOString(), new Date(to).toISOString()];
}

export class TileBoard {
  constructor(container, { onOpen }) {
    this.container = container;
    this.onOpen = onOpen;
    this.sectors = new Map();
    this.tiles = new Map();
    this.sparks = new Map(); // sector id -> {metric, points}
    this.sparkTimer = null;
    this.sparkRun = 0;
  }

  reset() {
    this.sectors.clear();
    this.tiles.clear();
    this.sparks.clear();
    clearTimeout(this.sparkTimer);
    this.sparkRun += 1;
    clear(this.container);
  }

  get size() {
    return this.sectors.size;
  }

  // A full list (snapshot or GET /sectors): sectors no longer listed go away.
  replaceAll(sectors) {
    const ids = new Set(sectors.map((s) => s.id));
    for (const id of [...this.sectors.keys()]) {
      if (!ids.has(id)) {
        this.sectors.delete(id);
        this.tiles.get(id)?.remove();
        this.tiles.delete(id);
      }
    }
    for (const sector of sectors) this.sectors.set(sector.id, sector);
    this.render();
    this._sparksSoon();
  }

  // One sector's newer figures; older ones (a slow GET racing the socket) are ignored.
  update(sector) {
    const known = this.sectors.get(sector.id);
    if (known && known.as_of && sector.as_of && Date.parse(sector.as_of) < Date.parse(known.as_of)) return false;
    this.sectors.set(sector.id, sector);
    if (!known) {
      this.render();
      this._sparksSoon();
    } else {
      this._fill(this.tiles.get(sector.id), sector);
    }
    return true;
  }

  sector(id) {
    return this.sectors.get(id);
  }

  ordered() {
    return [...this.sectors.values()].sort((a, b) => a.order - b.order || a.id.localeCompare(b.id));
  }

  render() {
    const ordered = this.ordered();
    this.container.dataset.count = String(ordered.length);
    ordered.forEach((sector, index) => {
      let tile = this.tiles.get(sector.id);
      if (!tile) {
        tile = this._tile(sector);
        this.tiles.set(sector.id, tile);
      }
      if (this.container.children[index] !== tile) this.container.insertBefore(tile, this.container.children[index] || null);
      this._fill(tile, sector);
    });
  }

  _tile(sector) {
    const open = () => this.onOpen(sector.id);
    return el('article', {
      class: 'tile',
      role: 'button',
      tabindex: '0',
      dataset: { testid: 'tile', sector: sector.id },
      onclick: open,
      onkeydown: (event) => {
        if (event.key === 'Enter' || event.key === ' ') {
          event.preventDefault();
          open();
        }
      },
    });
  }

  _fill(tile, sector) {
    if (!tile) return;
    const status = sectorStatus(sector);
    tile.dataset.status = status;
    tile.className = `tile st-${status}`;
    tile.style.setProperty('--sector', sector.colour || '#607d8b');
    tile.setAttribute('aria-label', `${pick(sector)}: ${t(`status.${status}`)}`);
    const [headline, ...others] = sector.kpis || [];
    const sources = sector.sources || {};
    const alerts = sector.alerts || {};
    clear(tile).append(
      el(
        'header',
        { class: 'tile-head' },
        el('span', { class: 'swatch' }),
        el('h3', { class: 'tile-name', text: pick(sector), dataset: { testid: 'tile-name' } }),
        el('span', { class: 'chip status-chip', text: t(`status.${status}`), dataset: { testid: 'tile-status' } }),
      ),
      headline ? this._headline(sector, headline) : el('div', { class: 'tile-kpi empty', text: t('tile.no_kpi') }),
      others.length
        ? el(
            'ul',
            { class: 'tile-more' },
            others.slice(0, 2).map((kpi) =>
              el(
                'li',
                { class: `kpi-${kpi.status}` },
                el('span', { class: 'more-name', text: pick(kpi) }),
                el('span', { class: 'more-value', text: kpi.value === null ? '–' : fmt.quantity(kpi.value, kpi.unit) }),
              ),
            ),
          )
        : null,
      el(
        'footer',
        { class: 'tile-foot' },
        sourceCounts(sources, { testid: 'tile-sources' }),
        el(
          'span',
          { class: 'counts', dataset: { testid: 'tile-alerts' }, title: t('tile.open_alerts') },
          ['critical', 'warning', 'info'].map((severity) =>
            el('span', {
              class: `count sev-${severity}${alerts[severity] ? '' : ' zero'}`,
              text: String(alerts[severity] ?? 0),
              title: t(`severity.${severity}`),
              dataset: { severity },
            }),
          ),
        ),
      ),
    );
  }

  _headline(sector, kpi) {
    const spark = this.sparks.get(sector.id);
    const change = kpi.change?.percent;
    return el(
      'div',
      { class: `tile-kpi kpi-${kpi.status}`, dataset: { testid: 'tile-kpi' } },
      el('div', { class: 'kpi-name', text: pick(kpi) }),
      el(
        'div',
        { class: 'kpi-line' },
        el('span', { class: 'kpi-value', text: kpi.value === null ? '–' : fmt.number(kpi.value) }),
        el('span', { class: 'kpi-unit', text: kpi.value === null ? '' : fmt.unit(kpi.unit) }),
        change === null || change === undefined
          ? null
          : el('span', {
              class: `kpi-change ${change > 0 ? 'up' : change < 0 ? 'down' : 'flat'}`,
              text: `${change > 0 ? '▲' : change < 0 ? '▼' : '■'} ${fmt.percent(change)}`,
              title: t('kpi.change_day'),
            }),
      ),
      sparkline(spark && spark.metric === kpi.metric ? spark.points : null, sector.colour),
    );
  }

  _sparksSoon() {
    clearTimeout(this.sparkTimer);
    this.sparkTimer = setTimeout(() => this.loadSparks(), 200);
  }

  // One request per sector, one after the other, then again after a few minutes.
  async loadSparks() {
    clearTimeout(this.sparkTimer);
    const run = ++this.sparkRun;
    const [from, to] = lastDay();
    for (const sector of this.ordered()) {
      const metric = sector.kpis?.[0]?.metric;
      if (!metric) continue;
      const query = new URLSearchParams({ sector: sector.id, metric, from, to, bucket: '1h', fn: 'avg', per: 'all', gap_fill: 'null' });
      try {
        const answer = await get(`/telemetry/aggregate?${query}`);
        if (run !== this.sparkRun) return;
        const points = answer.series?.[0]?.points || [];
        this.sparks.set(sector.id, { metric, points });
        this._fill(this.tiles.get(sector.id), this.sectors.get(sector.id));
      } catch (error) {
        if (error.status === 401) return;
      }
    }
    if (run === this.sparkRun) this.sparkTimer = setTimeout(() => this.loadSparks(), SPARK_REFRESH_MS);
  }

  refreshLabels() {
    for (const sector of this.sectors.values()) this._fill(this.tiles.get(sector.id), sector);
  }
}

// A 24-hour line in a 100 x 30 box (gaps of more than 3 buckets left open); empty without data.
export function sparkline(points, colour) {
  const box = svg('svg', { class: 'spark', viewBox: '0 0 100 30', preserveAspectRatio: 'none', 'data-testid': 'sparkline', 'aria-hidden': 'true' });
  if (!points || points.length < 2) return box;
  const values = points.map((p) => p.v).filter((v) => v !== null && v !== undefined);
  if (!values.length) return box;
  let low = Math.min(...values);
  let high = Math.max(...values);
  if (high === low) {
    high += 1;
    low -= 1;
  }
  const step = 100 / (points.length - 1);
  let d = '';
  let empty = Infinity; // buckets since the last value: a short gap is joined, a long one breaks
  points.forEach((p, i) => {
    if (p.v === null || p.v === undefined) {
      empty += 1;
      return;
    }
    const x = (i * step).toFixed(2);
    const y = (28 - ((p.v - low) / (high - low)) * 26).toFixed(2);
    d += `${empty > 3 ? 'M' : 'L'}${x} ${y}`;
    empty = 0;
  });
  box.append(svg('path', { d, fill: 'none', stroke: colour || 'currentColor', 'stroke-width': '1.6', 'vector-effect': 'non-scaling-stroke' }));
  box.dataset.points = String(values.length);
  return box;
}

// Sources online and offline (and unknown, when asked), as tiles and the sector view show them.
export function sourceCounts(sources, { testid, unknown = false } = {}) {
  const count = (state) => [
    el('span', { class: `dot ${state}` }),
    el('b', { text: fmt.number(sources[state] ?? 0) }),
    ` ${t(`sources.${state}`)}`,
  ];
  return el(
    'span',
    { class: 'sources', dataset: testid ? { testid } : {} },
    count('online'),
    count('offline'),
    unknown && sources.unknown ? count('unknown') : null,
  );
}
