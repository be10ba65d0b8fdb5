// Environments: what runs where, newest plans, approvals.
import { h, put, api, session, table, runLink, ago, short, fail } from './app.js';

export default async function envs(main) {
  const [{ environments: all }, s] = await Promise.all([api('/environments'), session()]);
  const td = (...k) => h('td', {}, ...k);
  const ok = async (id) => {
    try { await api(`/deploys/${id}/approve`, { method: 'POST' }); await envs(main); } catch (e) { fail(main, e); }
  };
  put(main, h('h1', {}, 'Environments'), all.map((e) => h('section', {},
    h('h2', {}, e.name, e.approval ? ' · approval' : '', e.lock ? ` · held by ${short(e.lock.plan_id)}` : ''),
    table(['Service', 'Commit', 'Deployed', 'State', 'Run'], e.services.map((v) => h('tr', {},
      h('th', {}, v.service), td(short(v.commit) || '–'), td(v.at ? ago(v.at) : 'never'),
      td(v.unknown ? 'unknown' : v.behind == null ? '–' : v.behind ? `${v.behind} behind` : 'up to date'),
      td(v.run_id && runLink(v.run_id))))),
    table(['Plan', 'State', 'By', 'Approved by'], e.plans.map((p) => h('tr', {},
      td(h('code', {}, short(p.id))), td(p.state), td(p.created_by),
      td(p.approved_by || (s.scope == 'approve' && p.state == 'planned' ? h('button', { onclick: () => ok(p.id) }, 'Approve') : '–'))))))));
}
