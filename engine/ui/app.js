// nestr dashboard: the shared pieces (DOM building, the API client with the token, formats,
// status badges) and the start of every page, which loads the page's own module.
// Text from the API only ever enters the page as text nodes or attribute values: never as markup.

export const $ = (sel, root = document) => root.querySelector(sel);

/** Replaces the children of `el` (nested lists flattened, null and false left out). */
export const put = (el, ...kids) => el.replaceChildren(...kids.flat(9).filter((k) => k != null && k !== false));

/** An element: `h('a', {href, class, onclick}, child, …)`; `svg:` prefixes SVG elements. */
export function h(tag, attrs, ...kids) {
  const el = tag.startsWith('svg:')
    ? document.createElementNS('http://www.w3.org/2000/svg', tag.slice(4))
    : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'text') el.textContent = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const k of kids.flat(9)) if (k != null && k !== false) el.append(k instanceof Node ? k : String(k));
  return el;
}

const TOKEN = 'nestr.token';

export class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

/** GETs a page starts before its module has loaded, taken by its first `api()` of that path. */
const early = new Map();
const FIRST = {
  overview: () => ['/workspace', '/runs?limit=10'],
  run: (a) => [`/runs/${encodeURIComponent(a)}`],
  service: (a) => [`/services/${encodeURIComponent(a)}`],
};

/** Calls the API (`path` after `/api`); JSON in and out, the token as a bearer header. */
export async function api(path, opts = {}) {
  if (!opts.method && !opts.raw && early.has(path)) {
    const p = early.get(path);
    early.delete(path);
    return p;
  }
  const headers = { ...(opts.headers || {}) };
  const token = sessionStorage.getItem(TOKEN);
  if (token) headers.Authorization = 'Bearer ' + token;
  const init = { method: opts.method || 'GET', headers, signal: opts.signal };
  if (opts.body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(opts.body);
  }
  const res = await fetch('/api' + path, init);
  if (res.status === 429 && !opts.retried) {
    // Over the server's rate limit: wait as long as it says, once.
    await sleep(1000 * Math.min(60, Number(res.headers.get('retry-after')) || 1));
    return api(path, { ...opts, retried: true });
  }
  if (res.status === 401) {
    askToken(token ? 'That token is not valid (unknown or revoked).' : 'This server needs an API token.');
    throw new ApiError(401, 'unauthorized');
  }
  if (!res.ok && res.status !== 204) {
    let msg = res.statusText;
    try { msg = (await res.json()).error.message; } catch { /* not the envelope */ }
    throw new ApiError(res.status, msg);
  }
  if (opts.raw) return res;
  return res.status === 204 ? null : res.json();
}

let sessionP;
/** What the credentials allow: `{scope, local}`. */
export const session = () => (sessionP ||= api('/session'));
export const canWrite = async () => (await session()).scope === 'write';

function askToken(why) {
  const main = $('#main');
  if (!main || $('#token-form')) return;
  const input = h('input', { id: 'token', type: 'password', autocomplete: 'off', required: true, size: 50 });
  put(main,
    h('h1', {}, 'Sign in'),
    h('p', {}, why, ' Create one with ', h('code', {}, 'nestr token create'), '; it is kept in this tab only.'),
    h('form', {
      id: 'token-form',
      onsubmit: (e) => { e.preventDefault(); sessionStorage.setItem(TOKEN, input.value.trim()); location.reload(); },
    }, h('label', { for: 'token' }, 'API token '), input, ' ', h('button', { type: 'submit' }, 'Use token')),
  );
  input.focus();
}

async function who() {
  const el = $('#who');
  if (!el) return;
  try {
    const s = await session();
    el.replaceChildren(s.local ? 'local mode' : `token: ${s.scope}`);
    if (!s.local) {
      el.append(' ', h('button', { class: 'link', onclick: () => { sessionStorage.removeItem(TOKEN); location.reload(); } }, 'forget'));
    }
  } catch { /* the page says why */ }
}

// ---- formats

export function dur(ms) {
  if (ms == null) return '';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.round(s % 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function ago(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  const s = (Date.now() - d) / 1000;
  const text = s < 5 ? 'just now' : s < 60 ? `${Math.round(s)} s ago` : s < 3600 ? `${Math.round(s / 60)} min ago`
    : s < 86400 ? `${Math.round(s / 3600)} h ago` : d.toISOString().slice(0, 16).replace('T', ' ');
  return h('time', { datetime: iso, title: iso }, text);
}

export const short = (id) => (id || '').slice(0, 12);
export const plural = (n, word) => `${n} ${word}${n === 1 ? '' : 's'}`;

const MARKS = {
  succeeded: '✓', cached: '✓', failed: '✗', denied: '⊘', timed_out: '✗', resource_exhausted: '✗',
  running: '●', queued: '○', skipped: '–', cancelled: '⊘', interrupted: '!',
  cloned: '✓', updated: '✓', up_to_date: '✓', clean: '✓', dirty: '!', ahead: '↑', behind: '↓',
  diverged: '!', detached: '–', missing: '✗',
};

/** A status word with a mark: never colour alone. */
export function badge(status) {
  const s = status || 'none';
  return h('span', { class: `st st-${s}` }, h('span', { 'aria-hidden': 'true' }, MARKS[s] || '·'), ' ', s.replace(/_/g, ' '));
}

export const link = (href, ...kids) => h('a', { href }, ...kids);
export const runLink = (id) => link(`/runs/${encodeURIComponent(id)}`, h('code', { title: id }, short(id)));
export const svcLink = (name) => link(`/services/${encodeURIComponent(name)}`, name);

export function table(cols, rows, attrs = {}) {
  return h('div', { class: 'scroll' }, h('table', attrs,
    h('thead', {}, h('tr', {}, cols.map((c) => h('th', { scope: 'col' }, c)))),
    h('tbody', {}, rows)));
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function fail(where, e) {
  if (e instanceof ApiError && e.status === 401) return;
  where.append(h('p', { class: 'error', role: 'alert' }, String(e.message || e)));
}

/** Every service (pages of the API's largest size). */
export async function allServices() {
  let out = [], cursor = '';
  for (;;) {
    const p = await api(`/services?limit=1000${cursor ? '&cursor=' + encodeURIComponent(cursor) : ''}`);
    out = out.concat(p.services);
    if (!p.next_cursor) return out;
    cursor = p.next_cursor;
  }
}

// ---- start

async function start() {
  const main = $('#main');
  const { page, arg } = document.body.dataset;
  for (const path of FIRST[page]?.(arg) || []) {
    const p = api(path);
    p.catch(() => {});
    early.set(path, p);
  }
  who();
  try {
    const mod = await import(`./${page}.js`);
    await mod.default(main, arg);
  } catch (e) {
    fail(main, e);
  } finally {
    $('#loading')?.remove();
    document.body.dataset.ready = '1';
  }
}

start();
