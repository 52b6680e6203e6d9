// The dashboard in a real headless Chromium against a real daemon (issue 18), driven through
// playwright-core. dashboard_browser.py starts the daemon, writes the datasets and passes
// everything in LORAD_DASHBOARD_CONFIG; this file only talks to the page and, to check what the
// page shows, to the API itself.
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');

const cfg = JSON.parse(process.env.LORAD_DASHBOARD_CONFIG);
const { chromium } = require(cfg.playwright);
const ORIGIN = new URL(cfg.base).origin;
const CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
  "font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
const T0 = Date.now();
const problems = [];
const shots = [];

function log(msg) { console.log(`[dashboard ${((Date.now() - T0) / 1000).toFixed(1).padStart(5)} s] ${msg}`); }

class Fail extends Error {}
function check(cond, msg) { if (!cond) throw new Fail(msg); }

// Polls fn until it returns something truthy; on timeout fails naming what did not happen and
// the last thing seen (describe() is called then, so it can read the page).
async function waitFor(what, fn, timeoutMs = 30000, describe = null, everyMs = 200) {
  const end = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
      last = v;
    } catch (e) {
      last = e.message;
    }
    if (Date.now() > end) {
      const seen = describe ? await describe().catch((e) => e.message) : last;
      throw new Fail(`timed out after ${timeoutMs / 1000} s waiting for ${what}; last seen: ${JSON.stringify(seen)}`);
    }
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

async function apiRaw(p, opts = {}) {
  const headers = Object.assign({ Authorization: `Bearer ${cfg.key}` }, opts.headers || {});
  let body = opts.body;
  if (opts.json !== undefined) { headers['Content-Type'] = 'application/json'; body = JSON.stringify(opts.json); }
  return fetch(cfg.base + p, { method: opts.method || 'GET', headers, body });
}

async function api(p, opts) {
  const r = await apiRaw(p, opts);
  const text = await r.text();
  check(r.ok, `${(opts && opts.method) || 'GET'} ${p}: HTTP ${r.status} ${text.slice(0, 400)}`);
  return JSON.parse(text);
}

const job = (id) => api(`/v1/fine_tuning/jobs/${id}`);

async function waitJob(id, statuses, timeoutMs = 60000) {
  let last = null;
  return waitFor(`job ${id} to be ${statuses.join(' or ')} (through the API)`, async () => {
    last = await job(id);
    return statuses.includes(last.status) ? last : null;
  }, timeoutMs, async () => last && { status: last.status, control: last.control, progress: last.progress, error: last.error });
}

async function allMetrics(id) {
  let rows = [], after = null;
  for (;;) {
    const page = await api(`/v1/fine_tuning/jobs/${id}/metrics?format=json${after === null ? '' : `&after_step=${after}`}`);
    rows = rows.concat(page.data);
    if (!page.has_more) return rows;
    after = page.data[page.data.length - 1].step;
  }
}

function sameArray(name, got, want) {
  check(Array.isArray(got), `chart data ${name} is not an array: ${JSON.stringify(got)}`);
  check(got.length === want.length, `chart data ${name} has ${got.length} values, the metrics API ${want.length}`);
  for (let i = 0; i < want.length; i++) {
    check(Object.is(got[i], want[i]) || got[i] === want[i],
      `chart data ${name}[${i}] is ${got[i]}, the metrics API says ${want[i]} (step ${i})`);
  }
}

// Chromium logs every 4xx answer to fetch() as a console error ("Failed to load resource"). The
// test provokes some on purpose (no key, a wrong key, bad form values, a full queue); those are
// allowed by status and path while expected, and any other one fails the test.
const refusals = [];
function expectRefusals(status, pathRe) {
  const r = { status, path: pathRe };
  refusals.push(r);
  return () => refusals.splice(refusals.indexOf(r), 1);
}

function assertClean(where) {
  check(!problems.length, `${where}: the page had problems:\n  ${problems.join('\n  ')}`);
}

async function shot(page, name, opts = {}) {
  const file = path.join(cfg.artifacts, name);
  await page.screenshot(Object.assign({ path: file }, opts));
  shots.push(file);
  log(`screenshot ${file}`);
}

async function text(page, sel) { return (await page.textContent(sel)) || ''; }

async function main() {
  const userData = fs.mkdtempSync(path.join(os.tmpdir(), 'lorad-chromium-'));
  const ctx = await chromium.launchPersistentContext(userData, {
    executablePath: cfg.chromium,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
    viewport: { width: 1280, height: 900 },
    acceptDownloads: true,
    colorScheme: 'light',
  });
  try {
    await run(ctx);
  } finally {
    await ctx.close().catch(() => {});
    fs.rmSync(userData, { recursive: true, force: true });
  }
}

async function run(ctx) {
  // Every request the page makes must go to the daemon; blob: URLs (downloads) have its origin.
  ctx.on('request', (r) => {
    let o;
    try { o = new URL(r.url()).origin; } catch (_) { o = r.url(); }
    if (o !== ORIGIN) problems.push(`request to another origin: ${r.url()}`);
  });
  const page = ctx.pages()[0] || await ctx.newPage();
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    const refused = /^Failed to load resource: the server responded with a status of (\d+)/.exec(m.text());
    const url = m.location().url || '';
    if (refused && refusals.some((r) => r.status === Number(refused[1]) && r.path.test(new URL(url, ORIGIN).pathname))) return;
    problems.push(`console error: ${m.text()} (${JSON.stringify(m.location())})`);
  });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.setDefaultTimeout(20000);
  const describe = (sel) => async () => (await page.$(sel)) ? (await page.textContent(sel)).slice(0, 300) : `no ${sel} on ${page.url()}`;

  try {
    await steps(page, describe);
  } catch (e) {
    const f = path.join(cfg.artifacts, 'dashboard-failure.png');
    await page.screenshot({ path: f, fullPage: true }).catch(() => {});
    console.error(`page at failure: ${page.url()} (screenshot ${f})`);
    if (problems.length) console.error(`page problems:\n  ${problems.join('\n  ')}`);
    throw e;
  }
}

async function steps(page, describe) {
  // ---- no key: the page loads, its CSP is there, and the API's 401 is a banner ----
  const unauth = [expectRefusals(401, /^\/v1\//), expectRefusals(403, /^\/v1\//)];
  const resp = await page.goto(cfg.base + '/');
  check(resp.status() === 200, `GET / answered ${resp.status()}`);
  check(resp.headers()['content-security-policy'] === CSP,
    `GET /: Content-Security-Policy is ${JSON.stringify(resp.headers()['content-security-policy'])}`);
  await waitFor('the auth-error banner without a key', () => page.isVisible('#auth-error'), 15000, describe('#auth-error'));
  const banner = await text(page, '#auth-error');
  check(/missing/i.test(banner) && /missing bearer token/.test(banner), `the 401 banner does not say the key is missing with the API's message: ${banner}`);
  check((await page.$$('#jobs-body tr')).length === 0, 'jobs are listed without a key');
  log('no key: 401 banner shown');

  await page.fill('#api-key', 'sk-not-the-key');
  await page.press('#api-key', 'Enter');
  await waitFor('the banner to say the key is wrong (403)', async () => /wrong/i.test(await text(page, '#auth-error')) && page.isVisible('#auth-error'),
    10000, describe('#auth-error'));
  log('wrong key: 403 banner shown');

  // The key through the keyboard: type it, Enter.
  await page.focus('#api-key');
  await page.fill('#api-key', '');
  await page.keyboard.type(cfg.key);
  await page.keyboard.press('Enter');
  unauth.forEach((stop) => stop());
  await waitFor('the banner to go and the empty jobs list', async () => !(await page.isVisible('#auth-error')) && page.isVisible('#jobs-empty'),
    10000, describe('#view-jobs'));
  check(await page.evaluate(() => sessionStorage.getItem('lorad.apiKey')) === cfg.key, 'the key is not kept in sessionStorage');
  assertClean('jobs list');
  log('key set: jobs list shown');

  // ---- new job: a bad file's line-numbered report, the API's 400 beside the field ----
  await page.click('#nav-new');
  await waitFor('base model demo-tiny in #base-model', async () =>
    (await page.$$eval('#base-model option', (os) => os.map((o) => o.value))).includes(cfg.base_model), 10000, describe('#base-model'));
  const bases = await page.$$eval('#base-model option', (os) => os.map((o) => o.value));
  check(bases.length === 1, `#base-model lists more than the base models: ${bases}`);

  await page.setInputFiles('#train-file', cfg.bad);
  await waitFor(`the bad line ${cfg.bad_line} in #train-bad-lines`, () => page.isVisible(`#train-bad-lines li[data-line="${cfg.bad_line}"]`),
    15000, describe('#train-report'));
  const badItems = await page.$$eval('#train-bad-lines li', (ls) => ls.map((l) => [l.dataset.line, l.textContent]));
  check(badItems.length === 1 && badItems[0][1].includes(`line ${cfg.bad_line}`) && badItems[0][1].includes('invalid_json'),
    `#train-bad-lines: ${JSON.stringify(badItems)}`);
  log(`bad file: ${badItems[0][1]}`);
  await shot(page, 'dashboard-new.png');

  // The API refuses a job on the file with a bad line: its message beside the file field.
  const badForm = expectRefusals(400, /^\/v1\/fine_tuning\/jobs$/);
  await page.click('#submit-job');
  await waitFor('the refusal beside #train-file', () => page.isVisible('#err-train-file'), 10000, describe('#job-form'));
  const fileErr = await text(page, '#err-train-file');
  const badId = await text(page, '#train-report [data-testid=file-id]');
  check(badId.startsWith('file-') && fileErr.includes(badId), `#err-train-file does not name the bad file ${badId}: ${fileErr}`);
  log(`job on the bad file refused: ${fileErr}`);

  await page.setInputFiles('#train-file', cfg.train);
  await waitFor('the good training file to be processed', async () => (await page.getAttribute('#train-report', 'data-state')) === 'processed',
    15000, describe('#train-report'));
  await page.setInputFiles('#valid-file', cfg.valid);
  await waitFor('the validation file to be processed', async () => (await page.getAttribute('#valid-report', 'data-state')) === 'processed',
    15000, describe('#valid-report'));

  const form = cfg.form;
  await page.fill('#hp-n_epochs', String(form.n_epochs));
  await page.fill('#hp-learning_rate', '5');
  await page.fill('#hp-batch_size', String(form.batch_size));
  await page.fill('#lora-r', String(form.r));
  await page.fill('#lora-alpha', String(form.alpha));
  for (const t of form.target_modules) await page.check(`#target-${t}`);
  await page.click('#more-settings summary');
  await page.fill('#hp-eval_every_steps', String(form.eval_every_steps));
  await page.fill('#hp-checkpoint_every_steps', String(form.checkpoint_every_steps));
  await page.fill('#suffix', form.suffix);
  await page.click('#submit-job');
  await waitFor('the API message beside #hp-learning_rate', () => page.isVisible('#err-hp-learning_rate'), 10000, describe('#job-form'));
  const lrErr = await text(page, '#err-hp-learning_rate');
  check(lrErr.includes('hyperparameters.learning_rate must be in (0, 1]'), `#err-hp-learning_rate: ${lrErr}`);
  log(`learning rate 5 refused beside its field: ${lrErr}`);

  badForm();
  await page.fill('#hp-learning_rate', String(form.learning_rate));
  await page.click('#submit-job');
  const jobId = await waitFor('the job page after submitting', async () => {
    const m = /#\/jobs\/(ftjob-[A-Za-z0-9]+)$/.exec(page.url());
    return m && m[1];
  }, 15000, describe('#job-form'));
  const created = await job(jobId);
  check(created.hyperparameters.n_epochs === form.n_epochs && created.hyperparameters.learning_rate === form.learning_rate &&
    created.lora.r === form.r && [...created.lora.target_modules].sort().join() === [...form.target_modules].sort().join() &&
    created.validation_file && created.suffix === form.suffix,
    `the job does not have the form's settings: ${JSON.stringify({ hp: created.hyperparameters, lora: created.lora })}`);
  log(`job ${jobId} created through the form`);

  // ---- the jobs list: the job appears and its progress advances ----
  await page.click('#nav-jobs');
  const row = `#jobs-body tr[data-job-id="${jobId}"]`;
  await waitFor(`job ${jobId} in the jobs list`, () => page.isVisible(row), 10000, describe('#jobs-body'));
  const stepOf = async () => Number(await page.getAttribute(`${row} [data-testid=job-progress]`, 'data-step'));
  const s1 = await waitFor('a first step in the list', async () => { const s = await stepOf(); return s > 0 && s; }, 30000, describe(row));
  const s2 = await waitFor(`the list's progress to advance past step ${s1}`, async () => { const s = await stepOf(); return s > s1 && s; }, 20000, describe(row));
  const rowText = await page.innerText(row);
  check(/running|succeeded/.test(rowText), `row status: ${rowText}`);
  log(`jobs list: progress ${s1} -> ${s2} (${rowText.replace(/\s+/g, ' ').trim()})`);
  await shot(page, 'dashboard-jobs.png');

  // ---- the job page: the chart gains points, and then equals the metrics API ----
  await page.click(`${row} a.job-link`);
  await waitFor('the job page', async () => (await text(page, '#job-title')) === jobId, 10000, describe('#job-title'));
  const count = async () => Number(await page.getAttribute('#chart-loss', 'data-count') || 0);
  const c1 = await waitFor('points in the loss chart', async () => { const c = await count(); return c > 0 && c; }, 20000, describe('#chart-loss'));
  const status1 = await page.getAttribute('#job-status', 'data-status');
  check(!['succeeded', 'failed', 'cancelled'].includes(status1) || c1 < created.hyperparameters.n_epochs * 2,
    `job ${jobId} was ${status1} before its chart could be watched growing: the form's job is too short for this machine (FORM in dashboard_browser.py)`);
  const c2 = await waitFor(`the loss chart to grow past ${c1} points`, async () => { const c = await count(); return c > c1 && c; }, 30000,
    async () => ({ count: await count(), status: await page.getAttribute('#job-status', 'data-status') }));
  log(`loss chart: ${c1} -> ${c2} points (job ${status1})`);

  // Hover readout and the controls of the chart.
  const box = await page.locator('#chart-loss svg').boundingBox();
  await page.mouse.move(box.x + box.width * 0.5, box.y + box.height * 0.5);
  await waitFor('the hover readout', async () => /step \d+ · train/.test(await text(page, '#chart-readout')), 5000, describe('#chart-readout'));
  log(`hover: ${await text(page, '#chart-readout')}`);
  await page.focus('#chart-loss');
  await page.keyboard.press('Home');
  await waitFor('the keyboard readout at the first step', async () => /^step 1 · train/.test(await text(page, '#chart-readout')), 5000, describe('#chart-readout'));
  await page.check('#log-scale');
  await page.fill('#smoothing', '0.9');
  await page.dispatchEvent('#smoothing', 'input');
  check((await text(page, '#smoothing-value')) === '0.90', 'the smoothing slider does not show its value');

  await waitFor(`job ${jobId} to succeed on its page`, async () => (await page.getAttribute('#job-status', 'data-status')) === 'succeeded',
    150000, async () => ({ status: await page.getAttribute('#job-status', 'data-status'), progress: await text(page, '#job-progress') }), 500);
  await waitFor('the final full read of the metrics (data-complete)', async () => (await page.getAttribute('#chart-loss', 'data-complete')) === 'true',
    15000, describe('#chart-loss'));
  const chart = await page.evaluate(() => window.loradChartData);
  const rows = await allMetrics(jobId);
  check(chart.job_id === jobId, `window.loradChartData is of ${chart.job_id}, not ${jobId}`);
  sameArray('steps', chart.steps, rows.map((r) => r.step));
  sameArray('train_loss', chart.train_loss, rows.map((r) => r.train_loss));
  sameArray('valid_loss', chart.valid_loss, rows.map((r) => r.valid_loss));
  const nValid = rows.filter((r) => r.valid_loss !== null).length;
  check(nValid > 0, 'the job has no validation loss: the test job should evaluate');
  check(Number(await page.getAttribute('#chart-loss', 'data-count')) === rows.length, 'the chart does not draw every row');
  log(`chart data equals /metrics?format=json: ${rows.length} steps, ${nValid} validation losses`);

  // Events streamed to their end, checkpoints with downloads, the settings, the dataset report.
  await waitFor('the events stream to end ([DONE])', async () => /complete/.test(await text(page, '#events-state')), 15000, describe('#events-state'));
  const evText = await text(page, '#events-log');
  check(evText.includes('Fine-tuning job started') && evText.includes('training data:'), `events log: ${evText.slice(0, 500)}`);
  const nCkpt = (await api(`/v1/fine_tuning/jobs/${jobId}/checkpoints?limit=100`)).data.length;
  await waitFor(`${nCkpt} checkpoints in the table`, async () => (await page.$$('#checkpoints-body tr')).length === nCkpt, 10000, describe('#checkpoints-body'));
  const held = await page.$$eval('#checkpoints-body [data-testid=held-out-loss]', (ts) => ts.map((t) => t.textContent));
  check(held.every((t) => t !== '—'), `held-out losses: ${held}`);
  const ckptLinks = await page.$$eval('#checkpoints-body tr:first-child a[data-download]', (as) => as.map((a) => a.getAttribute('href')));
  check(ckptLinks.length === 4 && ckptLinks.some((h) => h.endsWith('/adapter.gguf')) && ckptLinks.some((h) => h.endsWith('/adapter.tar')) &&
    ckptLinks.some((h) => h.endsWith('/adapter_model.safetensors')), `checkpoint download links: ${ckptLinks}`);
  check((await text(page, '#hyperparameters')).includes('n_epochs') && (await text(page, '#lora-settings')).includes('lm_head'), 'settings not shown');
  check((await text(page, '#dataset-report')).includes('processed'), `dataset report: ${await text(page, '#dataset-report')}`);

  // A download through the page (fetched with the key, saved from an object URL).
  await waitFor('the final adapter downloads', () => page.isVisible('#adapter-downloads a[href$="/adapter_model.safetensors"]'), 10000, describe('#adapter-downloads'));
  const final = await job(jobId);
  const model = await api(`/v1/models/${encodeURIComponent(final.fine_tuned_model)}`);
  const want = model.files.find((f) => f.name === 'adapter_model.safetensors').bytes;
  const [dl] = await Promise.all([page.waitForEvent('download'), page.click('#adapter-downloads a[href$="/adapter_model.safetensors"]')]);
  const saved = path.join(cfg.workdir, 'downloaded-adapter_model.safetensors');
  await dl.saveAs(saved);
  check(fs.statSync(saved).size === want, `downloaded ${fs.statSync(saved).size} bytes, the adapter is ${want}`);
  check(dl.suggestedFilename() === `${jobId}-adapter_model.safetensors`, `download name ${dl.suggestedFilename()}`);
  log(`downloaded ${dl.suggestedFilename()} (${want} bytes) with the key`);
  await page.fill('#smoothing', '0.6');
  await page.dispatchEvent('#smoothing', 'input');
  await page.evaluate(() => window.scrollTo(0, 0));
  await shot(page, 'dashboard-job.png');
  await page.emulateMedia({ colorScheme: 'dark' });
  await shot(page, 'dashboard-job-dark.png');
  await page.emulateMedia({ colorScheme: 'light' });
  await page.uncheck('#log-scale');
  assertClean('job page');

  // ---- a second job: pause, resume (refused while the queue is full, then accepted), cancel ----
  const long = { model: cfg.base_model, training_file: created.training_file, hyperparameters: { n_epochs: 1000, batch_size: 4 } };
  const j2 = (await api('/v1/fine_tuning/jobs', { method: 'POST', json: Object.assign({ suffix: 'controls' }, long) })).id;
  await page.goto(`${cfg.base}/#/jobs/${j2}`);
  await waitFor(`job ${j2} running on its page`, async () => (await page.getAttribute('#job-status', 'data-status')) === 'running' &&
    !(await page.isDisabled('#btn-pause')), 30000, describe('#job-summary'));
  await page.click('#btn-pause');
  await waitJob(j2, ['paused']);
  await waitFor('the page to show paused', async () => (await page.getAttribute('#job-status', 'data-status')) === 'paused' &&
    !(await page.isDisabled('#btn-resume')), 15000, describe('#job-summary'));
  log(`${j2}: paused with the button`);

  // The daemon runs with max_queued_jobs 1: one job running and one queued fill the queue, so
  // the resume is refused with 429 and the page must show the API's message.
  const j3 = (await api('/v1/fine_tuning/jobs', { method: 'POST', json: long })).id;
  await waitJob(j3, ['running']);
  const j4 = (await api('/v1/fine_tuning/jobs', { method: 'POST', json: long })).id;
  await waitJob(j4, ['queued']);
  const full = expectRefusals(429, new RegExp(`^/v1/fine_tuning/jobs/${j2}/resume$`));
  await page.click('#btn-resume');
  await waitFor('the refusal of resume', () => page.isVisible('#job-action-error'), 10000, describe('#view-job'));
  const refusal = await text(page, '#job-action-error');
  const r429 = await apiRaw(`/v1/fine_tuning/jobs/${j2}/resume`, { method: 'POST' });
  const apiMsg = (await r429.json()).error.message;
  check(r429.status === 429 && refusal.includes(apiMsg), `#job-action-error ${JSON.stringify(refusal)} does not show the API's ${r429.status} message ${JSON.stringify(apiMsg)}`);
  check((await job(j2)).status === 'paused', 'a refused resume changed the job');
  log(`${j2}: resume refused, shown: ${refusal}`);
  full();
  await api(`/v1/fine_tuning/jobs/${j4}/cancel`, { method: 'POST' });
  await api(`/v1/fine_tuning/jobs/${j3}/cancel`, { method: 'POST' });
  await waitJob(j3, ['cancelled']);

  await page.click('#btn-resume');
  await waitJob(j2, ['queued', 'running']);
  check(!(await page.isVisible('#job-action-error')), 'the old refusal is still shown after a resume that worked');
  await waitJob(j2, ['running']);
  await waitFor('the page to show running again', async () => (await page.getAttribute('#job-status', 'data-status')) === 'running' &&
    !(await page.isDisabled('#btn-cancel')), 15000, describe('#job-summary'));
  log(`${j2}: resumed with the button`);
  await page.click('#btn-cancel');
  await waitJob(j2, ['cancelled']);
  await waitFor('the page to show cancelled', async () => (await page.getAttribute('#job-status', 'data-status')) === 'cancelled', 15000, describe('#job-summary'));
  check(await page.isDisabled('#btn-pause') && await page.isDisabled('#btn-resume') && await page.isDisabled('#btn-cancel'),
    'controls stay enabled on a cancelled job');
  log(`${j2}: cancelled with the button`);
  assertClean('job controls');

  // ---- playground: the adapter knows the code, the base does not ----
  await page.click('#nav-playground');
  await waitFor('the playground models', async () => (await page.getAttribute('#pg-form', 'data-ready')) === 'true', 10000, describe('#pg-form'));
  const adapters = await page.$$eval('#pg-adapter option', (os) => os.map((o) => o.value));
  check(adapters.includes(final.fine_tuned_model) && adapters.some((a) => a.includes(':ckpt-step-')), `adapter choices: ${adapters}`);
  await page.selectOption('#pg-adapter', final.fine_tuned_model);
  check((await page.inputValue('#pg-base')) === cfg.base_model, `the base select is ${await page.inputValue('#pg-base')}, not the adapter's base`);
  await page.fill('#pg-max-tokens', '24');
  await page.fill('#pg-prompt', cfg.question);
  await page.focus('#pg-prompt');
  await page.keyboard.press('Control+Enter');
  await waitFor('both answers to finish', async () =>
    (await page.getAttribute('#pg-out-base', 'data-state')) === 'done' && (await page.getAttribute('#pg-out-adapter', 'data-state')) === 'done',
  60000, async () => ({ base: await page.getAttribute('#pg-out-base', 'data-state'), adapter: await page.getAttribute('#pg-out-adapter', 'data-state'),
    texts: [await text(page, '#pg-out-base'), await text(page, '#pg-out-adapter')] }));
  const aText = await text(page, '#pg-out-adapter'), bText = await text(page, '#pg-out-base');
  check(aText.trim() === cfg.code, `the adapter answered ${JSON.stringify(aText)}, not the trained ${cfg.code}`);
  check(!bText.includes(cfg.code), `the base model answered the trained code: ${JSON.stringify(bText)}`);
  log(`playground: adapter ${JSON.stringify(aText)}, base ${JSON.stringify(bText.slice(0, 40))}`);
  await shot(page, 'dashboard-playground.png');
  assertClean('playground');

  // ---- a phone: no horizontal page scroll on any view ----
  await page.setViewportSize({ width: 375, height: 812 });
  for (const [hash, ready] of [['#/jobs', `#jobs-body tr[data-job-id="${jobId}"]`], [`#/jobs/${jobId}`, '#checkpoints-body tr'],
    ['#/new', '#base-model option'], ['#/playground', '#pg-adapter option']]) {
    await page.goto(`${cfg.base}/${hash}`);
    await page.waitForSelector(ready, { state: 'attached' });
    await page.waitForTimeout(300);
    const w = await page.evaluate(() => ({ scroll: document.documentElement.scrollWidth, body: document.body.scrollWidth, inner: window.innerWidth }));
    check(w.scroll <= w.inner && w.body <= w.inner, `${hash} at 375 px scrolls sideways: ${JSON.stringify(w)}`);
    if (hash === '#/jobs') await shot(page, 'dashboard-phone.png');
    if (hash.startsWith('#/jobs/')) await shot(page, 'dashboard-phone-job.png');
  }
  log('375 px: no view scrolls sideways');
  assertClean('the end');
  console.log(`SCREENSHOTS ${JSON.stringify(shots)}`);
}

const deadline = setTimeout(() => { console.error(`FAIL: the browser test did not finish within ${cfg.timeout_s} s`); process.exit(1); }, cfg.timeout_s * 1000);
main().then(() => { clearTimeout(deadline); log('all checks passed'); }, (e) => {
  console.error(`FAIL: ${e instanceof Fail ? e.message : e.stack}`);
  process.exit(1);
});
