// The log view of a run: every step interleaved (with its service) or one step, of any length.
// Only the lines in sight are in the page; they are read in pages of 1,000 from
// `GET /api/runs/{id}/logs?line=N` as the view scrolls, and live lines arrive from the run's
// event stream. Search, the first error line and the download are the API's (`/logs/search`,
// `/logs/text`), so a log of millions of lines never has to be held here.
import { h, put, api, ApiError } from './app.js';
import { render, mark } from './ansi.js';

const PAGE = 1000, LH = 18, MAXH = 8e6;

export class LogView {
  constructor(runId, services) {
    this.run = encodeURIComponent(runId);
    this.runId = runId;
    this.svc = '';
    this.reset();
    this.hits = [];
    this.hitTotal = 0;
    this.hit = -1;
    this.query = '';
    this.follow = false;
    this.box = h('div', { class: 'logbox', tabindex: '0', role: 'region', 'aria-label': 'Log lines (scroll with the arrow and page keys)' });
    this.win = h('div', { class: 'logwin' });
    this.space = h('div', { class: 'logspace' }, this.win);
    this.box.append(this.space);
    this.pick = h('select', { id: 'log-step', 'aria-label': 'Which log' }, h('option', { value: '' }, 'all steps'));
    for (const s of services) this.pick.add(new Option(s, s));
    this.pick.addEventListener('change', () => this.show(this.pick.value));
    this.q = h('input', { id: 'log-q', type: 'search', placeholder: 'Find in log', 'aria-label': 'Find in log' });
    this.count = h('span', { id: 'log-count', class: 'muted', 'aria-live': 'polite' });
    this.info = h('span', { id: 'log-info', class: 'muted' });
    const btn = (id, label, fn) => h('button', { type: 'button', id, onclick: fn }, label);
    this.el = h('section', { id: 'log', class: 'log', 'aria-labelledby': 'log-h' },
      h('h2', { id: 'log-h' }, 'Log'),
      h('div', { class: 'logbar' },
        h('label', { for: 'log-step' }, 'Show '), this.pick, ' ',
        h('form', { class: 'inline', onsubmit: (e) => { e.preventDefault(); this.find(this.q.value); } },
          this.q, ' ', h('button', { type: 'submit' }, 'Find')),
        btn('log-prev', '↑', () => this.step(-1)), btn('log-next', '↓', () => this.step(1)), ' ', this.count, ' ',
        btn('log-error', 'First error', () => this.find(null)),
        btn('log-end', 'End', () => this.toEnd()),
        btn('log-download', 'Download', () => this.download()),
        this.info),
      this.box);
    this.box.addEventListener('scroll', () => this.schedule());
    new ResizeObserver(() => this.schedule()).observe(this.box);
  }

  reset() {
    this.total = 0;
    this.pages = new Map();
    this.loading = new Set();
    this.stamp = new Map();
  }

  /** The number a line has in the view: its run-wide line, or its sequence in the step. */
  num(l) { return this.svc ? l.seq : l.line; }

  async show(svc) {
    this.svc = svc;
    this.pick.value = svc;
    this.reset();
    this.hits = [];
    this.hit = -1;
    put(this.count);
    this.box.scrollTop = 0;
    await this.load(0);
  }

  async load(p) {
    if (this.loading.has(p)) return;
    this.loading.add(p);
    this.stamp.set(p, Date.now());
    try {
      const q = new URLSearchParams({ limit: PAGE, line: p * PAGE });
      if (this.svc) q.set('service', this.svc);
      const svc = this.svc;
      const r = await api(`/runs/${this.run}/logs?${q}`);
      if (svc !== this.svc) return;
      const arr = this.pages.get(p) || [];
      for (const l of r.lines) arr[this.num(l) - p * PAGE] = l;
      this.pages.set(p, arr);
      this.grow(r.total);
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 401)) put(this.info, ` ${e.message}`);
    } finally {
      this.loading.delete(p);
      this.schedule();
    }
  }

  /** A line from the event stream. */
  push(l) {
    if (this.svc && l.service !== this.svc) return;
    const n = this.num(l), p = Math.floor(n / PAGE);
    if (!this.pages.has(p)) this.pages.set(p, []);
    this.pages.get(p)[n - p * PAGE] = l;
    this.grow(n + 1);
  }

  grow(total) {
    if (total <= this.total) return this.schedule();
    const bottom = this.atBottom();
    this.total = total;
    this.space.style.height = `${Math.min(this.total * LH, MAXH)}px`;
    this.box.style.height = `${Math.max(120, Math.min(this.total * LH + 24, innerHeight * 0.6))}px`;
    put(this.info, ` ${this.total.toLocaleString('en')} lines`);
    if (this.follow && bottom) this.box.scrollTop = this.box.scrollHeight;
    this.schedule();
  }

  atBottom() { return this.box.scrollTop + this.box.clientHeight >= this.box.scrollHeight - 2 * LH; }

  schedule() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => { this.frame = 0; this.draw(); });
  }

  geometry() {
    const view = this.box.clientHeight || 400;
    const rows = Math.ceil(view / LH) + 1;
    const full = this.total * LH, space = Math.min(full, MAXH);
    if (full <= MAXH) {
      const first = Math.max(0, Math.floor(this.box.scrollTop / LH));
      return { first, rows, top: first * LH, view, space };
    }
    // Taller than a browser lays out: the scroll position maps proportionally onto the lines.
    const frac = Math.min(1, this.box.scrollTop / Math.max(1, space - view));
    const first = Math.floor(frac * Math.max(0, this.total - rows + 1));
    return { first, rows, top: this.box.scrollTop, view, space };
  }

  line(n) {
    const p = Math.floor(n / PAGE);
    const l = this.pages.get(p)?.[n - p * PAGE];
    if (!l && !this.loading.has(p) && Date.now() - (this.stamp.get(p) || 0) > 500) this.load(p);
    return l;
  }

  draw() {
    const { first, rows, top } = this.geometry();
    const cur = this.hits[this.hit];
    const out = [];
    for (let n = first; n < Math.min(this.total, first + rows); n++) {
      const l = this.line(n);
      const tx = h('span', { class: 'tx' });
      if (l) {
        render(l.text, tx);
        if (this.query) mark(tx, this.query);
      } else tx.append('…');
      out.push(h('div', { class: `ln${l && l.stream === 'system' ? ' sys' : ''}${l && l.stream === 'stderr' ? ' err' : ''}${n === cur ? ' cur' : ''}`, 'data-n': n },
        h('span', { class: 'no' }, String(n + 1)),
        this.svc ? null : h('span', { class: 'svc' }, l ? l.service : ''),
        h('span', { class: 'mk', 'aria-hidden': 'true' }, l && l.stream === 'system' ? '!' : '|'),
        tx));
    }
    this.win.style.transform = `translateY(${top}px)`;
    put(this.win, ...out);
  }

  /** Scrolls so that line `n` is in the middle of the view. */
  goto(n) {
    const { rows, view, space } = this.geometry();
    const full = this.total * LH;
    this.box.scrollTop = full <= MAXH
      ? n * LH - view / 2 + LH / 2
      : (Math.max(0, n - rows / 2) / Math.max(1, this.total - rows + 1)) * (space - view);
    this.schedule();
  }

  toEnd() {
    this.box.scrollTop = this.box.scrollHeight;
    this.schedule();
  }

  /** Finds `q` (or, with null, the lines that look like errors) and goes to the first. */
  async find(q, from = 0) {
    const p = new URLSearchParams({ limit: 1000, from });
    if (q) p.set('q', q); else p.set('errors', 'true');
    if (this.svc) p.set('service', this.svc);
    put(this.count, 'searching…');
    try {
      const r = await api(`/runs/${this.run}/logs/search?${p}`);
      const nums = r.matches.map((l) => this.num(l));
      if (from === 0) {
        this.query = q || '';
        this.hits = nums;
        this.hitTotal = r.total;
        this.hit = nums.length ? 0 : -1;
      } else {
        this.hits.push(...nums);
      }
      this.grow(r.lines);
      this.tell(q);
      if (this.hit >= 0) this.goto(this.hits[this.hit]);
      else this.schedule();
    } catch (e) {
      put(this.count, e.message);
    }
  }

  tell(q) {
    const what = q ? 'matches' : 'error lines';
    put(this.count, this.hitTotal ? `${this.hit + 1} of ${this.hitTotal.toLocaleString('en')} ${what}` : `no ${what}`);
  }

  async step(d) {
    if (!this.hits.length) return;
    const next = this.hit + d;
    if (next >= this.hits.length && this.hits.length < this.hitTotal) {
      this.hit = next;
      return this.find(this.query || null, this.hits[this.hits.length - 1] + 1);
    }
    this.hit = Math.max(0, Math.min(this.hits.length - 1, next));
    this.tell(this.query);
    this.goto(this.hits[this.hit]);
  }

  async download() {
    const q = this.svc ? `?service=${encodeURIComponent(this.svc)}` : '';
    try {
      const res = await api(`/runs/${this.run}/logs/text${q}`, { raw: true });
      const url = URL.createObjectURL(await res.blob());
      const a = h('a', { href: url, download: `nestr-${this.runId}${this.svc ? '-' + this.svc : ''}.log`, hidden: true });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    } catch (e) {
      put(this.info, ` ${e.message}`);
    }
  }
}
