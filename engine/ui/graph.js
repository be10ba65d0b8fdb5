// Graph (`/graph`): every service as a node, laid out in levels (a service sits one level after
// its deepest dependency, the plan's rule), an edge per `depends_on`, coloured by repository,
// marked with the last status of the chosen operation. Choosing a tag highlights what
// `nestr run OP -t TAG --with-deps` would run (the engine's own plan, `GET /api/plan`).
import { h, put, api, allServices, badge, table, svcLink } from './app.js';

const W = 180, H = 44, GX = 72, GY = 14, PAD = 8, ROWS = 24;

export function levels(services) {
  const by = new Map(services.map((s) => [s.name, s]));
  const level = new Map();
  const of = (name, seen = new Set()) => {
    if (level.has(name)) return level.get(name);
    if (seen.has(name)) return 0;
    seen.add(name);
    const deps = (by.get(name)?.depends_on || []).filter((d) => by.has(d));
    const l = deps.length ? 1 + Math.max(...deps.map((d) => of(d, seen))) : 0;
    level.set(name, l);
    return l;
  };
  services.forEach((s) => of(s.name));
  return level;
}

export default async function graph(main) {
  const services = await allServices();
  const q = new URLSearchParams(location.search);
  const ops = [...new Set(services.flatMap((s) => s.operations.map((o) => o.name)))].sort();
  const tags = [...new Set(services.flatMap((s) => s.tags))].sort();
  const repos = [...new Set(services.map((s) => s.repo))];
  const opSel = h('select', { id: 'g-op' }, ops.map((o) => h('option', { value: o }, o)));
  opSel.value = q.get('operation') || (ops.includes('build') ? 'build' : ops[0] || '');
  const tagSel = h('select', { id: 'g-tag' }, h('option', { value: '' }, 'none'), tags.map((t) => h('option', { value: t }, t)));
  tagSel.value = q.get('tag') || '';
  const note = h('p', { id: 'g-note', 'aria-live': 'polite', class: 'muted' });

  const level = levels(services);
  const cols = [];
  for (const s of services) (cols[level.get(s.name)] ||= []).push(s);
  // A level of more than ROWS services takes several columns side by side.
  const pos = new Map();
  let x0 = PAD, tall = 1;
  for (const col of cols.filter(Boolean)) {
    col.sort((a, b) => repos.indexOf(a.repo) - repos.indexOf(b.repo) || a.name.localeCompare(b.name));
    const per = Math.ceil(col.length / Math.ceil(col.length / ROWS));
    col.forEach((s, i) => pos.set(s.name, { x: x0 + Math.floor(i / per) * (W + GX / 3), y: PAD + (i % per) * (H + GY) }));
    x0 += Math.ceil(col.length / per) * (W + GX / 3) - GX / 3 + GX;
    tall = Math.max(tall, Math.min(col.length, per));
  }
  const width = x0 - GX + PAD;
  const height = PAD * 2 + tall * (H + GY) - GY;
  const svg = h('svg:svg', { id: 'graph', width, height, viewBox: `0 0 ${width} ${height}`, role: 'group', 'aria-label': 'Service dependency graph' },
    h('svg:defs', {}, h('svg:marker', { id: 'arrow', viewBox: '0 0 8 8', refX: 8, refY: 4, markerWidth: 8, markerHeight: 8, orient: 'auto' },
      h('svg:path', { d: 'M0,0 L8,4 L0,8 z', class: 'arrowhead' }))));
  const edges = h('svg:g', {});
  const nodes = h('svg:g', {});
  svg.append(edges, nodes);
  for (const s of services) {
    const to = pos.get(s.name);
    for (const d of s.depends_on) {
      const from = pos.get(d);
      if (!from) continue;
      const x1 = from.x + W, y1 = from.y + H / 2, x2 = to.x - 2, y2 = to.y + H / 2, mx = (x1 + x2) / 2;
      edges.append(h('svg:path', { class: 'edge', 'data-from': d, 'data-to': s.name, d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`, 'marker-end': 'url(#arrow)' }));
    }
  }
  const nodeOf = new Map();
  for (const s of services) {
    const { x, y } = pos.get(s.name);
    const r = repos.indexOf(s.repo) % 8;
    const mark = h('svg:text', { x: x + W - 8, y: y + 17, class: 'mark', 'text-anchor': 'end' });
    const tip = h('svg:title', {});
    const g = h('svg:a', { href: `/services/${encodeURIComponent(s.name)}`, class: 'node', 'data-service': s.name, 'data-repo': s.repo },
      tip,
      h('svg:rect', { x, y, width: W, height: H, rx: 6, class: 'box' }),
      h('svg:rect', { x, y, width: 6, height: H, rx: 2, class: `repo r${r}` }),
      h('svg:text', { x: x + 14, y: y + 18, class: 'name' }, clip(s.name, 20)),
      h('svg:text', { x: x + 14, y: y + 35, class: 'sub' }, clip([s.repo, ...s.tags.map((t) => '#' + t)].join(' '), 26)),
      mark);
    nodeOf.set(s.name, { g, mark, tip, s });
    nodes.append(g);
  }

  const paint = () => {
    const op = opSel.value;
    for (const { g, mark, tip, s } of nodeOf.values()) {
      const o = s.operations.find((x) => x.name === op);
      const st = o ? o.last_status || 'never run' : `no ${op}`;
      g.setAttribute('data-status', st.replace(/ /g, '_'));
      g.setAttribute('class', `node${o?.last_status ? ' st-' + o.last_status : ''}${g.classList.contains('picked') ? ' picked' : ''}`);
      mark.textContent = o ? (o.last_status ? badge(o.last_status).textContent : '○ never') : '';
      tip.textContent = `${s.name} (repository ${s.repo})${s.tags.length ? ', tags ' + s.tags.join(', ') : ''}: ${op} ${st}`;
    }
  };
  const highlight = async () => {
    const tag = tagSel.value;
    const url = new URLSearchParams({ operation: opSel.value });
    if (tag) url.set('tag', tag);
    history.replaceState(null, '', `/graph?${url}`);
    svg.classList.toggle('picking', !!tag);
    for (const n of nodeOf.values()) n.g.classList.remove('picked');
    for (const e of edges.children) e.classList.remove('picked');
    if (!tag) return put(note);
    try {
      const plan = await api(`/plan?${new URLSearchParams({ operation: opSel.value, tags: tag, with_deps: 'true' })}`);
      const picked = new Set(plan.levels.flat().map((s) => s.service));
      for (const name of picked) nodeOf.get(name)?.g.classList.add('picked');
      for (const e of edges.children) if (picked.has(e.dataset.from) && picked.has(e.dataset.to)) e.classList.add('picked');
      put(note, `nestr run ${opSel.value} -t ${tag} --with-deps would run ${picked.size} service${picked.size === 1 ? '' : 's'} in ${plan.levels.length} level${plan.levels.length === 1 ? '' : 's'}.`);
    } catch (e) {
      put(note, String(e.message));
    }
  };
  opSel.addEventListener('change', () => { paint(); highlight(); });
  tagSel.addEventListener('change', highlight);

  put(main,
    h('h1', {}, 'Graph'),
    h('div', { class: 'filters' },
      h('label', { for: 'g-op' }, 'Status of '), opSel, ' ',
      h('label', { for: 'g-tag' }, 'Highlight tag (with its dependencies) '), tagSel),
    note,
    h('ul', { class: 'legend', 'aria-label': 'Repositories' }, repos.map((r, i) => h('li', {}, h('span', { class: `swatch r${i % 8}`, 'aria-hidden': 'true' }), r))),
    h('div', { class: 'graph-box' }, svg),
    h('details', {}, h('summary', {}, 'The same as a table'),
      table(['Service', 'Repository', 'Level', 'Depends on', 'Tags'], services.map((s) => h('tr', {},
        h('td', {}, svcLink(s.name)), h('td', {}, s.repo), h('td', { class: 'num' }, String(level.get(s.name))),
        h('td', {}, s.depends_on.join(', ')), h('td', {}, s.tags.join(', ')))))),
  );
  paint();
  await highlight();
}

const clip = (t, n) => (t.length > n ? t.slice(0, n - 1) + '…' : t);
