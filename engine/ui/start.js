// The form that starts an operation (`POST /api/operations/run`) over a selection: services, tags,
// with dependencies or dependents, continue mode. Shown only to a `write` token.
import { h, api, fail } from './app.js';

let n = 0;

/** `services` from the API; `preset` may name `operation`, `services`, `tags`. */
export function startForm(services, preset = {}) {
  const id = (s) => `start-${n}-${s}`;
  n++;
  const ops = [...new Set(services.flatMap((s) => s.operations.map((o) => o.name)))].sort();
  const tags = [...new Set(services.flatMap((s) => s.tags))].sort();
  const field = (name, label, input) => h('div', { class: 'field' }, h('label', { for: id(name) }, label), input);
  const op = h('select', { id: id('op'), name: 'operation', required: true },
    ops.map((o) => h('option', { value: o, selected: o === preset.operation }, o)));
  const svc = h('select', { id: id('svc'), name: 'services', multiple: true, size: Math.min(6, services.length) },
    services.map((s) => h('option', { value: s.name, selected: (preset.services || []).includes(s.name) }, s.name)));
  const tag = h('select', { id: id('tag'), name: 'tags', multiple: true, size: Math.min(4, Math.max(tags.length, 1)) },
    tags.map((t) => h('option', { value: t, selected: (preset.tags || []).includes(t) }, t)));
  const check = (name, label) => h('label', { class: 'check' }, h('input', { type: 'checkbox', name }), ' ', label);
  const cont = h('select', { id: id('cont'), name: 'continue' },
    ['never', 'dependencies-ok', 'always'].map((c) => h('option', { value: c }, c)));
  const out = h('p', { 'aria-live': 'polite' });
  const form = h('form', { class: 'start', 'data-form': 'start' },
    field('op', 'Operation', op),
    field('svc', 'Services (none: all)', svc),
    field('tag', 'Tags', tag),
    h('div', { class: 'field' }, check('with_deps', 'with dependencies'), check('with_dependents', 'with dependents')),
    field('cont', 'After a failure', cont),
    h('div', { class: 'field' }, h('button', { type: 'submit', class: 'primary' }, 'Start run')),
    out);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const picked = (sel) => [...sel.selectedOptions].map((o) => o.value);
    out.replaceChildren('Starting…');
    try {
      const r = await api('/operations/run', {
        method: 'POST',
        body: {
          operation: op.value,
          services: picked(svc),
          tags: picked(tag),
          with_deps: form.elements.with_deps.checked,
          with_dependents: form.elements.with_dependents.checked,
          continue: cont.value,
        },
      });
      location.assign(`/runs/${encodeURIComponent(r.run_id)}`);
    } catch (err) {
      out.replaceChildren();
      fail(out, err);
    }
  });
  return form;
}
