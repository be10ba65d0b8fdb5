// A run's live events (`GET /api/runs/{id}/events`, Server-Sent Events) read with fetch, so that
// the token travels as a header; after a dropped connection it resumes from the last event id
// (`Last-Event-ID`), so no event is missed or seen twice. Ends after `run_finished` (or a 204).
import { api, sleep } from './app.js';

export async function follow(runId, on, signal) {
  let last = null;
  while (!signal?.aborted) {
    try {
      const res = await api(`/runs/${encodeURIComponent(runId)}/events`, {
        raw: true, signal, headers: last ? { 'Last-Event-ID': last } : {},
      });
      if (res.status === 204) return;
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value.replace(/\r\n?/g, '\n');
        for (let i; (i = buf.indexOf('\n\n')) >= 0;) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          let id = null, event = 'message', data = [];
          for (const line of block.split('\n')) {
            const c = line.indexOf(':');
            if (c === 0) continue;
            const k = c < 0 ? line : line.slice(0, c);
            const v = c < 0 ? '' : line.slice(c + 1).replace(/^ /, '');
            if (k === 'id') id = v; else if (k === 'event') event = v; else if (k === 'data') data.push(v);
          }
          if (!data.length) continue;
          if (id) last = id;
          on(event, JSON.parse(data.join('\n')));
          if (event === 'run_finished') return;
        }
      }
    } catch (e) {
      if (signal?.aborted || e.status === 401 || e.status === 404) return;
    }
    await sleep(1000);
  }
}
