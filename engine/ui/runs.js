// Runs (`/runs`): the history, newest first, filtered by operation and status (kept in the URL),
// paged by cursor; the page refreshes itself while it shows the newest runs or a run in progress.
import { h, put, api, ago, badge, table, runLink, dur, sleep, fail, allServices, plural } from './app.js';

export const RUN_COLS = ['Status', 'Run', 'Operation', 'Started', 'Took', 'Steps', 'By'];

export function runRows(runs) {
  return runs.map((r) => {
    const took = r.finished_at ? new Date(r.finished_at) - new Date(r.created_at) : null;
    const parts = [plural(r.steps, 'step')];
    if (r.succeeded) parts.push(`${r.succeeded} ✓`);
    if (r.failed) parts.push(`${r.failed} ✗`);
    if (r.cached) parts.push(`${r.cached} cached (saved ${dur(r.saved_ms)})`);
    return h('tr', { 'data-run': r.run_id, 'data-status': r.status },
      h('td', {}, badge(r.status), r.queue_position ? ` #${r.queue_position}` : ''),
      h('td', {}, runLink(r.run_id)),
      h('td', {}, r.operation),
      h('td', {}, ago(r.created_at)),
      h('td', { class: 'num' }, took == null ? '…' : dur(took)),
      h('td', {}, parts.join(', ')),
      h('td', {}, r.started_by));
  });
}

const STATUSES = ['queued', 'running', 'succeeded', 'failed', 'cancelled', 'interrupted'];

export default async function runs(main) {
  const q = new URLSearchParams(location.search);
  const ops = new Set(['sync', 'assemble']);
  try { for (const s of await allServices()) for (const o of s.operations) ops.add(o.name); } catch { /* list stays short */ }
  const opSel = h('select', { id: 'f-op', name: 'operation' }, h('option', { value: '' }, 'any'),
    [...ops].sort().map((o) => h('option', { value: o, selected: q.get('operation') === o }, o)));
  const stSel = h('select', { id: 'f-status', name: 'status' }, h('option', { value: '' }, 'any'),
    STATUSES.map((s) => h('option', { value: s, selected: q.get('status') === s }, s)));
  const list = h('div', { id: 'runs', 'aria-live': 'polite' });
  put(main,
    h('h1', {}, 'Runs'),
    h('form', { class: 'filters', method: 'get', action: '/runs' },
      h('label', { for: 'f-op' }, 'Operation '), opSel, ' ',
      h('label', { for: 'f-status' }, 'Status '), stSel, ' ',
      h('button', { type: 'submit' }, 'Filter')),
    list);
  const params = new URLSearchParams();
  for (const k of ['operation', 'status', 'cursor']) if (q.get(k)) params.set(k, q.get(k));
  params.set('limit', '25');
  const first = !q.get('cursor');
  const show = async () => {
    let page;
    try {
      page = await api(`/runs?${params}`);
    } catch (e) {
      put(list);
      fail(list, e);
      return false;
    }
    const more = new URLSearchParams(params);
    more.delete('limit');
    if (page.next_cursor) more.set('cursor', page.next_cursor);
    const newest = new URLSearchParams(more);
    newest.delete('cursor');
    put(list,
      page.runs.length ? table(RUN_COLS, runRows(page.runs)) : h('p', { class: 'muted' }, 'No run matches.'),
      h('nav', { class: 'pager', 'aria-label': 'Pages' },
        first ? null : h('a', { href: `/runs?${newest}` }, '← Newest'), ' ',
        page.next_cursor ? h('a', { href: `/runs?${more}`, rel: 'next' }, 'Older →') : null));
    // Live while new runs can appear here or a shown run is in progress.
    return first || page.runs.some((r) => r.status === 'running' || r.status === 'queued');
  };
  if (!(await show())) return;
  (async () => {
    for (;;) {
      await sleep(3000);
      if (document.hidden) await new Promise((r) => document.addEventListener('visibilitychange', r, { once: true }));
      if (!(await show())) return;
    }
  })();
}
