// A log line on the page: plain SGR colour sequences (`ESC [ … m`) become styled spans; every
// other control character and bidirectional override is shown escaped (`\x1b`, `\r`, `\u{202e}`),
// as `nestr logs` shows it, so a line can neither inject markup nor move or hide text.

const SGR = /\x1b\[([0-9;]{0,32})m/g;
const CTRL = /[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]/g;

const escape = (t) => t.replace(CTRL, (c) => {
  const n = c.charCodeAt(0);
  if (c === '\r') return '\\r';
  if (c === '\n') return '\\n';
  return n < 0x20 || n === 0x7f ? `\\x${n.toString(16).padStart(2, '0')}` : `\\u{${n.toString(16)}}`;
});

/** The text as shown: colours dropped, controls escaped (what the API's search matches). */
export const shown = (text) => escape(text.replace(SGR, ''));

const XTERM = [0, 0x5f, 0x87, 0xaf, 0xd7, 0xff];
function c256(n) {
  if (n < 16) return { cls: n };
  if (n >= 232) { const v = 8 + (n - 232) * 10; return { rgb: `rgb(${v},${v},${v})` }; }
  n -= 16;
  return { rgb: `rgb(${XTERM[Math.floor(n / 36)]},${XTERM[Math.floor(n / 6) % 6]},${XTERM[n % 6]})` };
}

function apply(st, params) {
  const p = params === '' ? [0] : params.split(';').map((x) => +x || 0);
  for (let i = 0; i < p.length; i++) {
    const n = p[i];
    if (n === 0) { st.b = st.d = st.i = st.u = false; st.fg = st.bg = null; }
    else if (n === 1) st.b = true;
    else if (n === 2) st.d = true;
    else if (n === 3) st.i = true;
    else if (n === 4) st.u = true;
    else if (n === 22) st.b = st.d = false;
    else if (n === 23) st.i = false;
    else if (n === 24) st.u = false;
    else if (n >= 30 && n <= 37) st.fg = { cls: n - 30 };
    else if (n >= 90 && n <= 97) st.fg = { cls: n - 82 };
    else if (n === 39) st.fg = null;
    else if (n >= 40 && n <= 47) st.bg = { cls: n - 40 };
    else if (n >= 100 && n <= 107) st.bg = { cls: n - 92 };
    else if (n === 49) st.bg = null;
    else if (n === 38 || n === 48) {
      let c = null;
      if (p[i + 1] === 5) { c = c256(p[i + 2] & 255); i += 2; }
      else if (p[i + 1] === 2) { c = { rgb: `rgb(${p[i + 2] & 255},${p[i + 3] & 255},${p[i + 4] & 255})` }; i += 4; }
      if (n === 38) st.fg = c; else st.bg = c;
    }
  }
}

function piece(st, text) {
  if (!st.b && !st.d && !st.i && !st.u && !st.fg && !st.bg) return document.createTextNode(text);
  const s = document.createElement('span');
  const cls = [];
  if (st.b) cls.push('a-b');
  if (st.d) cls.push('a-d');
  if (st.i) cls.push('a-i');
  if (st.u) cls.push('a-u');
  if (st.fg) st.fg.rgb ? (s.style.color = st.fg.rgb) : cls.push(`f${st.fg.cls}`);
  if (st.bg) st.bg.rgb ? (s.style.backgroundColor = st.bg.rgb) : cls.push(`g${st.bg.cls}`);
  s.className = cls.join(' ');
  s.textContent = text;
  return s;
}

/** Appends `text` to `el` as text nodes and styled spans (never markup). */
export function render(text, el) {
  const st = {};
  let at = 0;
  SGR.lastIndex = 0;
  for (let m; (m = SGR.exec(text));) {
    if (m.index > at) el.append(piece(st, escape(text.slice(at, m.index))));
    apply(st, m[1]);
    at = SGR.lastIndex;
  }
  if (at < text.length) el.append(piece(st, escape(text.slice(at))));
}

/** Wraps each case-insensitive occurrence of `q` in the text nodes under `el` in a <mark>. */
export function mark(el, q) {
  if (!q) return;
  const lq = q.toLowerCase();
  const walk = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
  const nodes = [];
  while (walk.nextNode()) nodes.push(walk.currentNode);
  for (const node of nodes) {
    const t = node.nodeValue;
    const low = t.toLowerCase();
    let i = low.indexOf(lq);
    if (i < 0) continue;
    const frag = document.createDocumentFragment();
    let at = 0;
    for (; i >= 0; i = low.indexOf(lq, at)) {
      frag.append(t.slice(at, i));
      const m = document.createElement('mark');
      m.textContent = t.slice(i, i + q.length);
      frag.append(m);
      at = i + q.length;
    }
    frag.append(t.slice(at));
    node.replaceWith(frag);
  }
}
