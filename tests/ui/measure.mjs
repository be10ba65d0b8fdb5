// The dashboard's budgets, measured in Debian's Chromium (playwright-core) against a release
// `nestr serve`: run by `cargo bench --bench dashboard` with one argument, a JSON object naming
// the server, the runs to open and the rounds; prints one JSON object of figures (ms, a list per
// measure, one value per round).
import { createRequire } from 'node:module';

const cfg = JSON.parse(process.argv[2]);
const require = createRequire(cfg.modules + '/');
const { chromium } = require('playwright-core');

const browser = await chromium.launch({
  executablePath: cfg.chromium,
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--no-first-run', '--disable-quic'],
});
const out = { paint_1000: [], api_run_1000: [], log_open: [], log_end: [], log_search: [], api_search: [], log_error: [], live: [] };

for (let round = 0; round < cfg.rounds; round++) {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  let p = await ctx.newPage();
  // The baseline: the run's JSON alone, fetched by the same browser.
  await p.goto(cfg.url + '/blank'); // a page of the server's (its CSP allows fetching from it) that loads nothing
  out.api_run_1000.push(await p.evaluate(async (u) => {
    const t = performance.now();
    await (await fetch(u)).json();
    return performance.now() - t;
  }, `/api/runs/${cfg.run1000}`));
  // First paint of the run page: navigation start to the page's `nestr:painted` mark.
  await p.goto(`${cfg.url}/runs/${cfg.run1000}`);
  await p.waitForFunction(() => performance.getEntriesByName('nestr:painted').length > 0);
  out.paint_1000.push(await p.evaluate(() => performance.getEntriesByName('nestr:painted')[0].startTime));
  await p.close();

  // The 1,000,000-line log.
  p = await ctx.newPage();
  let t = Date.now();
  await p.goto(`${cfg.url}/runs/${cfg.flood}`);
  await p.waitForFunction(() => document.querySelector('#log .ln[data-n="0"] .tx')?.textContent.length > 1);
  out.log_open.push(Date.now() - t);
  const total = await p.evaluate(() => Number(document.querySelector('#log-info').textContent.replace(/[^\d]/g, '')));
  t = Date.now();
  await p.click('#log-end');
  await p.waitForFunction((n) => {
    const el = document.querySelector(`#log .ln[data-n="${n - 1}"] .tx`);
    return el && el.textContent !== '…';
  }, total);
  out.log_end.push(Date.now() - t);
  out.api_search.push(await p.evaluate(async (u) => {
    const t = performance.now();
    await (await fetch(u)).json();
    return performance.now() - t;
  }, `/api/runs/${cfg.flood}/logs/search?q=flux%20capacitor&limit=1000`));
  t = Date.now();
  await p.fill('#log-q', 'flux capacitor');
  await p.press('#log-q', 'Enter');
  await p.waitForFunction(() => document.querySelector('#log .ln.cur mark'));
  out.log_search.push(Date.now() - t);
  await p.click('#log-end');
  t = Date.now();
  await p.click('#log-error');
  await p.waitForFunction(() => /of 1 error/.test(document.querySelector('#log-count').textContent) && document.querySelector('#log .ln.cur'));
  out.log_error.push(Date.now() - t);
  await p.close();

  // Live lines: a run that prints a line with its time every 100 ms; how long until each shows.
  p = await ctx.newPage();
  await p.addInitScript(() => {
    window.__ticks = new Map();
    new MutationObserver(() => {
      for (const el of document.querySelectorAll('#log .ln .tx')) {
        const m = /tick (\d+) (\d{13})/.exec(el.textContent);
        if (m && !window.__ticks.has(m[1])) window.__ticks.set(m[1], Date.now() - Number(m[2]));
      }
    }).observe(document, { subtree: true, childList: true, characterData: true });
  });
  await p.goto(cfg.url + '/blank'); // a page of the server's (its CSP allows fetching from it) that loads nothing
  const id = await p.evaluate(async () => {
    const r = await fetch('/api/operations/run', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ operation: 'ticks', services: ['r00-s02'] }) });
    return (await r.json()).run_id;
  });
  await p.goto(`${cfg.url}/runs/${id}`);
  await p.waitForSelector('#run-head .st-succeeded', { timeout: 60000 });
  out.live.push(...(await p.evaluate(() => [...window.__ticks.values()])));
  await ctx.close();
}
await browser.close();
console.log(JSON.stringify(out));
