// Run (`/runs/{id}`): its status and counts, a timeline of its steps (waits and runs over time,
// so parallelism shows), each step's result, and its log; live while it runs. A `write` token
// gets Cancel (while it runs) and Re-run failed steps (once it has ended).
import { h, put, api, badge, dur, ago, table, svcLink, canWrite, fail, short, plural } from './app.js';
import { LogView } from './log.js';
import { follow } from './stream.js';

const ACTIVE = new Set(['queued', 'running']);
const OK = new Set(['succeeded', 'cached']);

export default async function run(main, id) {
  const enc = encodeURIComponent(id);
  const [r, write] = await Promise.all([api(`/runs/${enc}`), canWrite().catch(() => false)]);
  const head = h('div', { id: 'run-head' });
  const timeline = h('section', { id: 'timeline', 'aria-labelledby': 'tl-h' });
  const steps = h('section', { id: 'steps', 'aria-labelledby': 'steps-h' });
  const log = new LogView(r.run_id, r.steps.map((s) => s.service));
  log.follow = ACTIVE.has(r.status);
  const paint = (r) => {
    document.title = `${r.operation} ${short(r.run_id)} ${r.status} · nestr`;
    put(head, ...header(r, write));
    put(timeline, h('h2', { id: 'tl-h' }, 'Timeline'), gantt(r, (s) => focusStep(s)));
    put(steps, h('h2', { id: 'steps-h' }, 'Steps'), stepTable(r, (s) => focusStep(s)));
  };
  const focusStep = (service) => {
    log.show(service);
    log.el.scrollIntoView({ block: 'start' });
    log.box.focus({ preventScroll: true });
  };
  paint(r);
  put(main, head, timeline, steps, log.el);
  // Painted: the frame after the one these went into.
  requestAnimationFrame(() => setTimeout(() => performance.mark('nestr:painted')));
  await log.load(0);
  if (ACTIVE.has(r.status)) live(r, enc, main, log, paint);
}

/** Follows a run in progress: transitions refresh it (at most every 300 ms), lines go to the log. */
async function live(r, enc, main, log, paint) {
  let pending = null;
  const refresh = () => {
    pending ||= setTimeout(async () => {
      pending = null;
      try { paint(await api(`/runs/${enc}`)); } catch (e) { fail(main, e); }
    }, 300);
  };
  await follow(r.run_id, (event, data) => {
    if (event === 'log') log.push(data);
    else refresh();
  });
  clearTimeout(pending);
  pending = null;
  paint(await api(`/runs/${enc}`));
  log.follow = false;
}

function header(r, write) {
  const counts = {};
  for (const s of r.steps) counts[s.status] = (counts[s.status] || 0) + 1;
  const end = r.finished_at ? new Date(r.finished_at) : null;
  const saved = r.steps.reduce((n, s) => n + (s.cache?.hit ? s.cache.saved_ms || 0 : 0), 0);
  const out = [
    h('h1', {}, `${r.operation} `, h('code', { title: r.run_id }, r.run_id), ' ', badge(r.status)),
    h('p', { class: 'meta' },
      `started by ${r.started_by} `, ago(r.created_at),
      end ? ` · took ${dur(end - new Date(r.created_at))}` : ' · in progress',
      r.queue_position ? ` · place ${r.queue_position} in the queue` : '',
      ` · ${plural(r.steps.length, 'step')}: `,
      Object.entries(counts).map(([k, n], i) => [i ? ', ' : '', `${n} ${k.replace(/_/g, ' ')}`]),
      saved ? ` · the cache saved ${dur(saved)}` : ''),
  ];
  if (write) {
    const msg = h('span', { class: 'muted', 'aria-live': 'polite' });
    const act = async (what, fn) => {
      put(msg, what);
      try { await fn(); } catch (e) { put(msg); fail(msg, e); }
    };
    const buttons = [];
    if (ACTIVE.has(r.status)) {
      buttons.push(h('button', { id: 'cancel', type: 'button', class: 'danger', onclick: () => act('cancelling…', () => api(`/runs/${encodeURIComponent(r.run_id)}/cancel`, { method: 'POST' })) }, 'Cancel run'));
    } else if (r.steps.some((s) => !OK.has(s.status))) {
      buttons.push(h('button', { id: 'rerun', type: 'button', onclick: () => act('starting…', async () => {
        const n = await api(`/runs/${encodeURIComponent(r.run_id)}/rerun`, { method: 'POST' });
        location.assign(`/runs/${encodeURIComponent(n.run_id)}`);
      }) }, 'Re-run failed steps'));
    }
    if (buttons.length) out.push(h('p', { class: 'actions' }, buttons, ' ', msg));
  }
  return out;
}

/** The steps over time: a light bar while a step waited, a solid one while it ran. */
function gantt(r, pick) {
  const t0 = new Date(r.created_at).getTime();
  const now = Date.now();
  const t = (iso) => (iso ? new Date(iso).getTime() : now) - t0;
  const span = Math.max(1, ...r.steps.map((s) => (s.status === 'queued' && !s.started_at ? 0 : t(s.finished_at))), r.finished_at ? t(r.finished_at) : 0);
  const n = r.steps.length;
  const row = n <= 40 ? 20 : n <= 200 ? 10 : 5;
  const label = row >= 10 ? 150 : 0, W = 1000, chart = W - label - 10;
  const x = (ms) => label + (ms / span) * chart;
  const height = n * row + 24;
  const svg = h('svg:svg', { viewBox: `0 0 ${W} ${height}`, width: '100%', height, class: 'gantt', 'aria-hidden': 'true', preserveAspectRatio: 'none' });
  for (let i = 0; i <= 4; i++) {
    const at = x((span * i) / 4);
    svg.append(h('svg:line', { x1: at, x2: at, y1: 0, y2: n * row, class: 'tick' }),
      h('svg:text', { x: Math.min(at, W - 40), y: n * row + 16, class: 'axis' }, dur((span * i) / 4)));
  }
  // A bar per step; for a large run one path per kind of bar (thousands of elements cost the
  // first paint), a click picking the step by its row.
  const few = n <= 200;
  const paths = {};
  const bar = (cls, x0, y, w, hh, g) => {
    if (few) g.append(h('svg:rect', { x: x0, y, width: w, height: hh, class: cls }));
    else paths[cls] = (paths[cls] || '') + `M${x0.toFixed(1)},${y}h${w.toFixed(1)}v${hh}h${(-w).toFixed(1)}z`;
  };
  r.steps.forEach((s, i) => {
    const y = i * row;
    const g = few ? h('svg:g', { class: 'bar', 'data-service': s.service, onclick: () => pick(s.service) },
      h('svg:title', {}, `${s.service}: ${s.status}${s.duration_ms != null ? ', ' + dur(s.duration_ms) : ''}`)) : null;
    if (label) g.append(h('svg:text', { x: 4, y: y + row * 0.72, class: 'lbl' }, s.service.length > 22 ? s.service.slice(0, 21) + '…' : s.service));
    if (s.started_at) {
      const a = t(s.started_at), b = Math.max(a, t(s.finished_at));
      if (a > 0) bar('wait', x(0), y + 2, Math.max(0, x(a) - x(0)), row - 4, g);
      bar(`run st-${s.status}`, x(a), y + 1, Math.max(2, x(b) - x(a)), row - 2, g);
    } else if (ACTIVE.has(s.status)) {
      bar('wait', x(0), y + 2, Math.max(0, x(t(null)) - x(0)), row - 4, g);
    }
    if (g) svg.append(g);
  });
  for (const [cls, d] of Object.entries(paths)) svg.append(h('svg:path', { class: cls, d }));
  if (!few) {
    svg.classList.add('bars');
    svg.addEventListener('click', (e) => {
      const y = (e.offsetY / svg.getBoundingClientRect().height) * height;
      const s = r.steps[Math.floor(y / row)];
      if (s) pick(s.service);
    });
  }
  return h('div', { class: 'gantt-box' }, svg,
    h('p', { class: 'legend muted' }, h('span', { class: 'swatch wait' }), ' waiting ', h('span', { class: 'swatch run' }), ' running (coloured by how it ended)'));
}

/** The steps: the first rows at once, the rest a batch per frame (a run of thousands of steps
 * lays out in pieces instead of holding the first paint). */
function stepTable(r, pick) {
  const row = (s) => {
    const reason = s.reason && !OK.has(s.status) ? h('details', {}, h('summary', {}, 'why'), h('pre', { class: 'reason' }, s.reason)) : null;
    const cache = s.cache ? (s.cache.hit ? `hit (${s.cache.source}), saved ${dur(s.cache.saved_ms)}` : 'miss') : '';
    return h('tr', { 'data-step': s.service, 'data-status': s.status },
      h('th', { scope: 'row' }, svcLink(s.service)),
      h('td', {}, badge(s.status)),
      h('td', {}, s.plugin),
      h('td', {}, ago(s.started_at)),
      h('td', { class: 'num' }, dur(s.duration_ms)),
      h('td', {}, s.tests ? `${s.tests.passed} passed, ${s.tests.failed} failed, ${s.tests.skipped} skipped` : ''),
      h('td', { title: s.cache ? `key ${s.cache.key}` : null }, cache),
      h('td', {}, s.summary || '', reason, s.artifacts?.length ? h('div', { class: 'small muted' }, `${s.artifacts.length} artifact(s)`) : null),
      h('td', {}, h('button', { type: 'button', class: 'link', onclick: () => pick(s.service), 'aria-label': `Log of ${s.service}` }, 'log')));
  };
  const FIRST = 60, BATCH = 250;
  const t = table(['Service', 'Status', 'Plugin', 'Started', 'Took', 'Tests', 'Cache', 'Summary', ''], r.steps.slice(0, FIRST).map(row), { class: 'steps' });
  const body = t.querySelector('tbody');
  const more = (from) => {
    if (from >= r.steps.length || !body.isConnected && from > FIRST) return;
    requestAnimationFrame(() => setTimeout(() => {
      body.append(...r.steps.slice(from, from + BATCH).map(row));
      more(from + BATCH);
    }));
  };
  more(FIRST);
  return t;
}

