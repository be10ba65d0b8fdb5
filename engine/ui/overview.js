// Overview (`/`): the workspace, its repositories with their drift and last sync, the last runs,
// and (for a `write` token) a form to start a run.
import { h, put, api, ago, badge, table, link, canWrite, fail, allServices } from './app.js';
import { startForm } from './start.js';
import { runRows, RUN_COLS } from './runs.js';

export default async function overview(main) {
  const [ws, runs] = await Promise.all([api('/workspace'), api('/runs?limit=10')]);
  document.title = `${ws.name} · nestr`;
  const c = ws.counts;
  put(main,
    h('h1', {}, ws.name),
    ws.description ? h('p', { class: 'lead' }, ws.description) : null,
    h('ul', { class: 'cards', 'aria-label': 'Counts' },
      card(c.repos, 'repositories'), card(c.services, 'services', '/graph'), card(c.plugins, 'plugins'),
      card(c.runs_active, 'runs active', '/runs?status=running')),
    h('h2', {}, 'Repositories'),
    table(['Repository', 'Branch / pin', 'Head', 'State', 'Ahead / behind', 'Changes', 'Last sync'],
      ws.repos.map(repoRow), { id: 'repos' }),
    h('h2', {}, 'Last runs'),
    runs.runs.length ? table(RUN_COLS, runRows(runs.runs), { id: 'last-runs' }) : h('p', { class: 'muted' }, 'No run yet.'),
    h('p', {}, link('/runs', 'All runs →'), ' · ', link('/graph', 'Dependency graph →')),
  );
  if (await canWrite()) {
    const sec = h('section', { 'aria-labelledby': 'start-h' }, h('h2', { id: 'start-h' }, 'Start a run'));
    main.append(sec);
    try { sec.append(startForm(await allServices())); } catch (e) { fail(sec, e); }
  }
}

function card(n, label, href) {
  const body = [h('strong', {}, String(n)), ' ', label];
  return h('li', {}, href ? link(href, ...body) : body);
}

function pin(r) {
  const p = r.pin || {};
  const want = p.kind === 'default' ? 'remote HEAD' : `${p.kind} ${p.kind === 'rev' ? p.value.slice(0, 10) : p.value}`;
  return [r.branch ? h('code', {}, r.branch) : h('span', { class: 'muted' }, 'detached'), h('br'), h('small', { class: 'muted' }, want)];
}

function repoRow(r) {
  const changes = r.dirty ? `${r.staged} staged, ${r.modified} modified, ${r.untracked} untracked` : 'none';
  return h('tr', { 'data-repo': r.name },
    h('th', { scope: 'row' }, r.name, h('br'), h('small', { class: 'muted' }, r.path)),
    h('td', {}, pin(r)),
    h('td', {}, r.head ? h('code', { title: r.head }, r.head.slice(0, 10)) : '–'),
    h('td', {}, r.error ? h('span', { class: 'error' }, r.error) : badge(r.state)),
    h('td', { class: 'num' }, r.upstream ? `${r.ahead} / ${r.behind}` : '–'),
    h('td', {}, changes),
    h('td', {}, r.last_sync_result ? [badge(r.last_sync_result), ' ', ago(r.last_sync_at)] : h('span', { class: 'muted' }, 'never'),
      r.last_sync_message ? h('div', { class: 'muted small' }, r.last_sync_message) : null),
  );
}

