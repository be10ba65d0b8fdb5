// Service (`/services/{name}`): its repository and folder, dependencies and dependents, each
// operation with its plugin and that plugin's grants, and the recent steps of each operation.
import { h, put, api, allServices, badge, table, runLink, svcLink, ago, dur, canWrite, fail } from './app.js';
import { startForm } from './start.js';

export default async function service(main, name) {
  const enc = encodeURIComponent(name);
  const [svc, all, steps, plugins] = await Promise.all([
    api(`/services/${enc}`), allServices(), api(`/services/${enc}/steps?limit=100`), api('/plugins').catch(() => []),
  ]);
  const dependents = all.filter((s) => s.depends_on.includes(name)).map((s) => s.name);
  const grants = new Map(plugins.map((p) => [p.name, p.grants]));
  const list = (names) => (names.length ? names.map((n, i) => [i ? ', ' : '', svcLink(n)]) : h('span', { class: 'muted' }, 'none'));
  const byOp = new Map();
  for (const s of steps.steps) (byOp.get(s.operation) || byOp.set(s.operation, []).get(s.operation)).push(s);
  put(main,
    h('h1', {}, svc.name),
    h('dl', { class: 'facts' },
      h('dt', {}, 'Repository'), h('dd', {}, svc.repo, ' ', h('span', { class: 'muted' }, `(folder ${svc.path})`)),
      h('dt', {}, 'Depends on'), h('dd', { id: 'deps' }, list(svc.depends_on)),
      h('dt', {}, 'Dependents'), h('dd', { id: 'dependents' }, list(dependents)),
      h('dt', {}, 'Tags'), h('dd', {}, svc.tags.length ? svc.tags.join(', ') : h('span', { class: 'muted' }, 'none')),
      svc.opted_out.length ? [h('dt', {}, 'Opted out of'), h('dd', {}, svc.opted_out.join(', '))] : null),
    h('h2', {}, 'Operations'),
    table(['Operation', 'Plugin', 'Grants', 'Last status'], svc.operations.map((o) => h('tr', { 'data-op': o.name },
      h('th', { scope: 'row' }, o.name), h('td', {}, o.plugin),
      h('td', {}, h('code', { class: 'wrap' }, grants.get(o.plugin) || '')),
      h('td', {}, o.last_status ? badge(o.last_status) : h('span', { class: 'muted' }, 'never run'))))),
    h('h2', {}, 'Recent steps'),
    byOp.size ? [...byOp].map(([op, rows]) => [
      h('h3', {}, op),
      table(['Status', 'Run', 'Started', 'Took', 'Tests', 'Cache', 'Summary'], rows.map((s) => h('tr', {},
        h('td', {}, badge(s.status)), h('td', {}, runLink(s.run_id)), h('td', {}, ago(s.started_at || s.run_created_at)),
        h('td', { class: 'num' }, dur(s.duration_ms)),
        h('td', {}, s.tests ? `${s.tests.passed} passed, ${s.tests.failed} failed, ${s.tests.skipped} skipped` : ''),
        h('td', {}, s.cache ? (s.cache.hit ? `hit (${s.cache.source}), saved ${dur(s.cache.saved_ms)}` : 'miss') : ''),
        h('td', {}, s.summary || '')))),
    ]) : h('p', { class: 'muted' }, 'No step yet.'),
  );
  if (await canWrite()) {
    const sec = h('section', {}, h('h2', {}, 'Start a run'));
    main.append(sec);
    try { sec.append(startForm(all, { services: [name], operation: svc.operations[0]?.name })); } catch (e) { fail(sec, e); }
  }
}
