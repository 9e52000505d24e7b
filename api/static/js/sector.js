// The sector view: its figures, a chart of one of its metrics over the last 24 hours
// (GET /telemetry/aggregate, uPlot), and its sources as a list (district, status, last seen,
// open alerts) and on a map (Leaflet): markers coloured by status and ringed by their worst
// open alert, district names at the middle of their sources. The map needs no tile server:
// tiles are drawn only when one is configured, and markers and names show without them.

import { all, get } from './api.js';
import { clear, el } from './dom.js';
import * as fmt from './format.js';
import { pick, t } from './i18n.js';
import { RANK, sectorStatus, worstSeverity } from './status.js';
import { lastDay, sourceCounts } from './tiles.js';

const SOURCES_REFRESH_MS = 60 * 1000;
const SOURCES_MIN_GAP_MS = 10 * 1000;
const CHART_REFRESH_MS = 2 * 60 * 1000;
const MAX_SOURCE_LINES = 8;
const PALETTE = ['#4fc3f7', '#ffb74d', '#81c784', '#f06292', '#ba68c8', '#fff176', '#4db6ac', '#e57373'];
const STATUS_FILL = { online: '#22c55e', offline: '#ef4444', unknown: '#94a3b8' };
const SEVERITY_RING = { critical: '#ff1744', warning: '#ffb300', info: '#40a9ff' };

export class SectorView {
  constructor(root, { store, sectors, profile, config, onClose, onOpenAlert }) {
    this.root = root;
    this.store = store;
    this.sectors = sectors; // id -> sector figures
    this.profile = profile; // () -> profile
    this.config = config;
    this.onClose = onClose;
    this.onOpenAlert = onOpenAlert;
    this.sectorId = null;
    this.metric = null;
    this.sourceList = [];
    this.chart = null;
    this.chartData = null;
    this.map = null;
    this.markers = null;
    this.labels = null;
    this.timers = [];
    this.lastSources = 0;
    this.resize = null;
    store.addEventListener('change', () => this.sectorId && this._sourcesChanged());
  }

  get isOpen() {
    return this.sectorId !== null;
  }

  open(sectorId) {
    const catalogue = this.profile()?.sectors.find((s) => s.id === sectorId);
    this._start(sectorId, catalogue?.kpis?.[0] || catalogue?.metrics?.[0]?.id || null, null);
  }

  _start(sectorId, metric, sources) {
    this.close({ silent: true });
    this.sectorId = sectorId;
    this.metric = metric;
    this.root.hidden = false;
    this._build();
    if (sources) {
      this.sourceList = sources;
      this._sourcesChanged();
    } else {
      this._loadSources();
    }
    this._loadChart();
    this.timers.push(setInterval(() => this._loadSources(), SOURCES_REFRESH_MS));
    this.timers.push(setInterval(() => this._loadChart(), CHART_REFRESH_MS));
  }

  close({ silent = false } = {}) {
    if (this.sectorId === null) return;
    for (const timer of this.timers) clearInterval(timer);
    this.timers = [];
    this.resize?.disconnect();
    this.resize = null;
    this.chartResize?.disconnect();
    this.chartResize = null;
    this.chart?.destroy();
    this.chart = null;
    this.map?.remove();
    this.map = null;
    this.sectorId = null;
    this.sourceList = [];
    this.root.hidden = true;
    clear(this.root);
    if (!silent) this.onClose();
  }

  // New figures of a sector (from /ws/live): the header, and the sources when they changed.
  sectorChanged(sector) {
    if (sector.id !== this.sectorId) return;
    this._head();
    if (Date.now() - this.lastSources > SOURCES_MIN_GAP_MS) this._loadSources();
  }

  // Rebuilt in the new language, keeping the metric and the sources already loaded.
  refreshLabels() {
    if (this.sectorId !== null) this._start(this.sectorId, this.metric, this.sourceList);
  }

  _catalogue() {
    return this.profile()?.sectors.find((s) => s.id === this.sectorId) || null;
  }

  _metricInfo(id) {
    return this._catalogue()?.metrics.find((m) => m.id === id) || null;
  }

  _build() {
    const catalogue = this._catalogue();
    const select = el(
      'select',
      {
        id: 'metric-select',
        dataset: { testid: 'metric-select' },
        onchange: (event) => {
          this.metric = event.target.value;
          this._loadChart();
        },
      },
      (catalogue?.metrics || []).map((m) => el('option', { value: m.id, text: `${pick(m)}${m.unit ? ` (${fmt.unit(m.unit)})` : ''}`, selected: m.id === this.metric })),
    );
    clear(this.root).append(
      el('header', { class: 'sv-head', dataset: { testid: 'sector-head' } }),
      el('div', { class: 'sv-kpis', dataset: { testid: 'sector-kpis' } }),
      el(
        'div',
        { class: 'sv-grid' },
        el(
          'section',
          { class: 'panel sv-chart' },
          el('header', { class: 'panel-head' }, el('h3', { text: t('sector.chart_title') }), el('label', { class: 'sr-only', for: 'metric-select', text: t('sector.metric') }), select),
          el('div', { class: 'chart', dataset: { testid: 'sector-chart' } }),
        ),
        el(
          'section',
          { class: 'panel sv-map' },
          el('header', { class: 'panel-head' }, el('h3', { text: t('sector.map_title') }), el('span', { class: 'map-note', dataset: { testid: 'map-note' } })),
          el('div', { class: 'map', dataset: { testid: 'sector-map' } }),
        ),
        el(
          'section',
          { class: 'panel sv-sources' },
          el('header', { class: 'panel-head' }, el('h3', { text: t('sector.sources_title') }), el('span', { class: 'sources-count', dataset: { testid: 'sources-count' } })),
          el(
            'div',
            { class: 'table-wrap' },
            el(
              'table',
              { class: 'sources-table', dataset: { testid: 'sector-sources' } },
              el(
                'thead',
                {},
                el(
                  'tr',
                  {},
                  ['sector.col_source', 'sector.col_district', 'sector.col_status', 'sector.col_last_seen', 'sector.col_alerts'].map((key) => el('th', { scope: 'col', text: t(key) })),
                ),
              ),
              el('tbody'),
            ),
          ),
        ),
      ),
    );
    this._head();
    this._mapInit();
  }

  _head() {
    const sector = this.sectors(this.sectorId);
    const catalogue = this._catalogue();
    const head = this.root.querySelector('.sv-head');
    const kpis = this.root.querySelector('.sv-kpis');
    if (!head) return;
    const status = sector ? sectorStatus(sector) : 'unknown';
    head.className = `sv-head st-${status}`;
    head.style.setProperty('--sector', sector?.colour || catalogue?.colour || '#607d8b');
    const alerts = sector?.alerts || {};
    const sources = sector?.sources || {};
    clear(head).append(
      el('button', { type: 'button', class: 'back', text: `← ${t('sector.back')}`, dataset: { testid: 'sector-back' }, onclick: () => this.close() }),
      el('span', { class: 'swatch' }),
      el('h2', { text: pick(sector || catalogue), dataset: { testid: 'sector-title' } }),
      el('span', { class: 'chip status-chip', text: t(`status.${status}`) }),
      sourceCounts(sources, { unknown: true }),
      el(
        'span',
        { class: 'counts' },
        ['critical', 'warning', 'info'].map((s) => el('span', { class: `count sev-${s}${alerts[s] ? '' : ' zero'}`, text: String(alerts[s] ?? 0), title: t(`severity.${s}`) })),
      ),
    );
    clear(kpis).append(
      ...(sector?.kpis || []).map((kpi) =>
        el(
          'button',
          {
            type: 'button',
            class: `kpi-card kpi-${kpi.status}${kpi.metric === this.metric ? ' selected' : ''}`,
            title: t('sector.show_metric'),
            onclick: () => {
              this.metric = kpi.metric;
              const select = this.root.querySelector('[data-testid="metric-select"]');
              if (select) select.value = kpi.metric;
              this._head();
              this._loadChart();
            },
          },
          el('span', { class: 'kpi-name', text: pick(kpi) }),
          el('span', { class: 'kpi-value', text: kpi.value === null ? '–' : fmt.quantity(kpi.value, kpi.unit) }),
          kpi.change?.percent === null || kpi.change?.percent === undefined ? null : el('span', { class: 'kpi-change', text: `${fmt.percent(kpi.change.percent)} / 24h` }),
        ),
      ),
    );
  }

  // --- sources: list and map ------------------------------------------------------------------

  async _loadSources() {
    const id = this.sectorId;
    this.lastSources = Date.now();
    try {
      const sources = await all(`/sources?sector=${encodeURIComponent(id)}&limit=1000`, { maxPages: 5 });
      if (id !== this.sectorId) return;
      this.sourceList = sources;
      this._sourcesChanged();
    } catch (error) {
      if (id !== this.sectorId || error.status === 401) return;
      this.root.querySelector('[data-testid="sources-count"]').textContent = error.detail || error.message;
    }
  }

  _alertsBySource() {
    const by = new Map();
    for (const alert of this.store.active()) {
      if (alert.sector !== this.sectorId || !alert.source_id) continue;
      if (!by.has(alert.source_id)) by.set(alert.source_id, []);
      by.get(alert.source_id).push(alert);
    }
    return by;
  }

  _districtName(id) {
    if (!id) return '';
    const district = this.profile()?.districts.find((d) => d.id === id);
    return district ? pick(district) : id;
  }

  _sourcesChanged() {
    const body = this.root.querySelector('[data-testid="sector-sources"] tbody');
    if (!body) return;
    const alerts = this._alertsBySource();
    const order = { offline: 0, unknown: 1, online: 2 };
    const rows = [...this.sourceList].sort((a, b) => {
      const wa = RANK[worstSeverity(alerts.get(a.id) || [])] ?? 0;
      const wb = RANK[worstSeverity(alerts.get(b.id) || [])] ?? 0;
      return wb - wa || order[a.status] - order[b.status] || (a.name || a.id).localeCompare(b.name || b.id);
    });
    this.root.querySelector('[data-testid="sources-count"]').textContent = t('sector.sources_count', { n: fmt.number(rows.length) });
    clear(body).append(
      ...rows.map((source) => {
        const open = alerts.get(source.id) || [];
        const worstAlert = open.slice().sort((a, b) => RANK[b.severity] - RANK[a.severity])[0];
        return el(
          'tr',
          { dataset: { testid: 'source-row', sourceId: source.id, status: source.status } },
          el('td', {}, el('div', { class: 'src-name', text: source.name || source.id }), source.name ? el('div', { class: 'src-id', text: source.id }) : null),
          el('td', { text: this._districtName(source.district) || '–' }),
          el('td', {}, el('span', { class: `dot ${source.status}` }), ` ${t(`source_status.${source.status}`)}`),
          el('td', { text: fmt.ago(source.last_seen_at), title: source.last_seen_at ? fmt.dateTime(source.last_seen_at) : '' }),
          el(
            'td',
            {},
            open.length
              ? el('button', {
                  type: 'button',
                  class: `count sev-${worstAlert.severity}`,
                  text: String(open.length),
                  title: t('sector.open_alert'),
                  onclick: () => this.onOpenAlert(worstAlert.id),
                })
              : el('span', { class: 'muted', text: '–' }),
          ),
        );
      }),
    );
    this._mapMarkers(alerts);
  }

  _mapInit() {
    const box = this.root.querySelector('[data-testid="sector-map"]');
    const L = window.L;
    if (!box || !L) return;
    this.map = L.map(box, { zoomControl: true, attributionControl: true, worldCopyJump: false, minZoom: 3 });
    this.map.attributionControl.setPrefix('Leaflet');
    const tiles = this.config.map?.tile_url;
    if (tiles) {
      L.tileLayer(tiles, { attribution: this.config.map.attribution || '', maxZoom: 19, crossOrigin: false }).addTo(this.map);
    }
    this.root.querySelector('[data-testid="map-note"]').textContent = tiles ? '' : t('sector.map_no_tiles');
    this.map.setView([14.06, 108.28], 5); // Việt Nam until the sources are known
    this.markers = L.layerGroup().addTo(this.map);
    this.labels = L.layerGroup().addTo(this.map);
    this.fitted = false;
    this.resize = new ResizeObserver(() => this.map?.invalidateSize());
    this.resize.observe(box);
  }

  _mapMarkers(alerts) {
    const L = window.L;
    if (!this.map || !L) return;
    this.markers.clearLayers();
    this.labels.clearLayers();
    const located = this.sourceList.filter((s) => s.latitude !== null && s.longitude !== null);
    const note = this.root.querySelector('[data-testid="map-note"]');
    if (!located.length) {
      note.textContent = t('sector.map_none');
      return;
    }
    note.textContent = this.config.map?.tile_url ? '' : t('sector.map_no_tiles');
    const districts = new Map();
    for (const source of located) {
      const open = alerts.get(source.id) || [];
      const severity = worstSeverity(open);
      const marker = L.circleMarker([source.latitude, source.longitude], {
        radius: severity ? 11 : 9,
        fillColor: STATUS_FILL[source.status] || STATUS_FILL.unknown,
        fillOpacity: 0.95,
        color: severity ? SEVERITY_RING[severity] : '#0b1220',
        weight: severity ? 4 : 1.5,
        className: `src-marker status-${source.status}${severity ? ` alert-${severity}` : ''}`,
      });
      const tip = el(
        'div',
        { class: 'marker-tip' },
        el('b', { text: source.name || source.id }),
        el('div', { text: `${t(`source_status.${source.status}`)} · ${fmt.ago(source.last_seen_at)}` }),
        open.length ? el('div', { text: t('sector.marker_alerts', { n: open.length }) }) : null,
      );
      marker.bindTooltip(tip, { direction: 'top', offset: [0, -8] });
      if (open.length) marker.on('click', () => this.onOpenAlert(open[0].id));
      marker.addTo(this.markers);
      const path = marker.getElement();
      if (path) {
        path.setAttribute('data-testid', 'map-marker');
        path.setAttribute('data-source-id', source.id);
        path.setAttribute('data-status', source.status);
        if (severity) path.setAttribute('data-alert', severity);
      }
      if (source.district) {
        if (!districts.has(source.district)) districts.set(source.district, []);
        districts.get(source.district).push([source.latitude, source.longitude]);
      }
    }
    for (const [district, points] of districts) {
      const lat = points.reduce((sum, p) => sum + p[0], 0) / points.length;
      const lon = points.reduce((sum, p) => sum + p[1], 0) / points.length;
      const label = el('span', { text: this._districtName(district), dataset: { testid: 'district-label', district } });
      L.tooltip({ permanent: true, direction: 'top', offset: [0, -12], className: 'district-label', interactive: false, opacity: 1 }).setLatLng([lat, lon]).setContent(label).addTo(this.labels);
    }
    if (!this.fitted) {
      this.fitted = true;
      const bounds = L.latLngBounds(located.map((s) => [s.latitude, s.longitude]));
      this.map.fitBounds(bounds.pad(0.25), { maxZoom: 13 });
    }
  }

  // --- chart ------------------------------------------------------------------------------------

  async _loadChart() {
    const id = this.sectorId;
    const metric = this.metric;
    const box = this.root.querySelector('[data-testid="sector-chart"]');
    if (!box || !metric) return;
    const [from, to] = lastDay();
    const interval = this._metricInfo(metric)?.interval_s || 60;
    const bucket = interval < 900 ? '15m' : '1h';
    const query = new URLSearchParams({ sector: id, metric, from, to, bucket, fn: 'avg', per: 'source', gap_fill: 'null' });
    let answer;
    try {
      answer = await get(`/telemetry/aggregate?${query}`);
    } catch (error) {
      if (id !== this.sectorId || metric !== this.metric || error.status === 401) return;
      this._chartMessage(box, error.detail || error.message);
      return;
    }
    if (id !== this.sectorId || metric !== this.metric) return;
    this._drawChart(box, answer);
  }

  _chartMessage(box, text) {
    this.chart?.destroy();
    this.chart = null;
    clear(box).append(el('p', { class: 'chart-empty', text, dataset: { testid: 'chart-empty' } }));
  }

  _drawChart(box, answer) {
    const uPlot = window.uPlot;
    const series = (answer.series || []).filter((s) => s.points.some((p) => p.v !== null));
    if (!uPlot || !series.length) {
      this._chartMessage(box, t('sector.no_data'));
      return;
    }
    const info = this._metricInfo(this.metric);
    const xs = series[0].points.map((p) => Date.parse(p.t) / 1000);
    const step = xs.length > 1 ? xs[1] - xs[0] : 900;
    // a source is expected every `interval_s`: empty buckets shorter than a few intervals (or an
    // hour) are joined, longer ones break the line (the source was silent)
    const joinable = Math.max(3600, 3 * (info?.interval_s || 60)) / step;
    const columns = series.map((s) => joinShortGaps(s.points.map((p) => p.v), joinable));
    const mean = xs.map((_, i) => {
      const vals = columns.map((c) => c[i]).filter((v) => v !== null && v !== undefined);
      return vals.length ? vals.reduce((a, b) => a + b, 0) / vals.length : null;
    });
    const data = [xs];
    const sector = this.sectors(this.sectorId);
    const main = sector?.colour || '#4fc3f7';
    const value = (u, v) => (v === null || v === undefined ? '–' : fmt.number(v));
    const specs = [{ label: t('sector.time'), value: (u, ts) => (ts === null || ts === undefined ? '–' : fmt.dayTime(new Date(ts * 1000))) }];
    const sparse = (column) => column.filter((v) => v !== null && v !== undefined).length <= 30;
    if (series.length <= MAX_SOURCE_LINES) {
      series.forEach((s, i) => {
        data.push(columns[i]);
        specs.push({ label: s.name || s.source_id, stroke: PALETTE[i % PALETTE.length], width: 1.5, value, points: { show: sparse(columns[i]), size: 4 } });
      });
      if (series.length > 1) {
        data.push(joinShortGaps(mean, joinable));
        specs.push({ label: t('sector.mean'), stroke: main, width: 3, value, points: { show: false } });
      }
    } else {
      const low = xs.map((_, i) => minOf(columns.map((c) => c[i])));
      const high = xs.map((_, i) => maxOf(columns.map((c) => c[i])));
      data.push(joinShortGaps(mean, joinable), joinShortGaps(low, joinable), joinShortGaps(high, joinable));
      specs.push(
        { label: t('sector.mean'), stroke: main, width: 3, value, points: { show: false } },
        { label: t('sector.min'), stroke: '#90a4ae', width: 1, dash: [4, 4], value, points: { show: false } },
        { label: t('sector.max'), stroke: '#90a4ae', width: 1, dash: [4, 4], value, points: { show: false } },
      );
    }
    for (const threshold of info?.thresholds || []) {
      data.push(xs.map(() => threshold.value));
      specs.push({
        label: `${t(`severity.${threshold.severity}`)} ${threshold.direction === 'above' ? '≥' : '≤'} ${fmt.number(threshold.value)}`,
        stroke: SEVERITY_RING[threshold.severity],
        width: 1.5,
        dash: [8, 6],
        value: () => fmt.number(threshold.value),
        points: { show: false },
      });
    }
    const axis = { stroke: '#9fb3c8', grid: { stroke: 'rgba(159,179,200,0.12)', width: 1 }, ticks: { stroke: 'rgba(159,179,200,0.25)', width: 1 }, font: '12px system-ui, sans-serif' };
    const options = {
      width: Math.max(280, box.clientWidth),
      height: 200,
      series: specs,
      axes: [
        { ...axis, values: (u, splits) => splits.map((ts) => fmt.axisTime(new Date(ts * 1000))) },
        { ...axis, label: fmt.unit(info?.unit || answer.unit || ''), labelFont: '12px system-ui, sans-serif', size: 60, values: (u, splits) => splits.map((v) => fmt.number(v)) },
      ],
      legend: { live: true },
      cursor: { points: { size: 6 } },
      scales: { x: { time: true } },
    };
    this.chart?.destroy();
    clear(box);
    this.chart = new uPlot(options, data, box);
    box.dataset.series = String(series.length);
    // the plot takes what the legend leaves of the panel
    const fit = () => {
      if (!this.chart) return;
      const legend = this.chart.root.querySelector('.u-legend');
      const height = box.clientHeight - (legend ? legend.offsetHeight : 0) - 8;
      this.chart.setSize({ width: Math.max(280, box.clientWidth), height: Math.max(140, height) });
    };
    fit();
    if (!this.chartResize) this.chartResize = new ResizeObserver(() => fit());
    this.chartResize.disconnect();
    this.chartResize.observe(box);
  }
}

// Runs of nulls up to `longest` buckets become undefined (uPlot joins the line across them);
// longer runs stay null (a break in the line).
function joinShortGaps(values, longest) {
  const out = values.slice();
  let start = -1;
  for (let i = 0; i <= out.length; i += 1) {
    const empty = i < out.length && (out[i] === null || out[i] === undefined);
    if (empty && start < 0) start = i;
    if (!empty && start >= 0) {
      const inside = start > 0 && i < out.length;
      if (inside && i - start <= longest) for (let j = start; j < i; j += 1) out[j] = undefined;
      start = -1;
    }
  }
  return out;
}

function minOf(values) {
  const vals = values.filter((v) => v !== null && v !== undefined);
  return vals.length ? Math.min(...vals) : null;
}

function maxOf(values) {
  const vals = values.filter((v) => v !== null && v !== undefined);
  return vals.length ? Math.max(...vals) : null;
}
