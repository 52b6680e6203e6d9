// The official OpenAI Node SDK (the `openai` npm package pinned in tools/) against a real lorad
// daemon: upload a file, create, list (with cursor pagination), retrieve and cancel jobs, list events
// and checkpoints, and read an API error. Every answer is checked for the shape the SDK documents.
//
//   node serve_openai_sdk.cjs BASE_URL DATASET.jsonl MODEL
// BASE_URL is http://127.0.0.1:PORT/v1. Exits 0 and prints "sdk ok" when every check passes.
'use strict';
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');

const source = process.env.LORAD_SOURCE_DIR || path.join(__dirname, '..', '..');
const OpenAI = require(path.join(source, 'tools', 'node_modules', 'openai'));

const [baseURL, dataset, model] = process.argv.slice(2);
const client = new OpenAI({ apiKey: 'anything', baseURL, maxRetries: 0, timeout: 30000 });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const STATUSES = ['validating_files', 'queued', 'running', 'paused', 'succeeded', 'failed', 'cancelled', 'cancelling'];

function checkJob(j, id) {
  assert.match(j.id, /^ftjob-[A-Za-z0-9]{1,64}$/);
  if (id) assert.equal(j.id, id);
  assert.equal(j.object, 'fine_tuning.job');
  assert.equal(typeof j.created_at, 'number');
  assert.equal(j.model, model);
  assert.ok(STATUSES.includes(j.status), `status ${j.status}`);
  assert.equal(typeof j.hyperparameters, 'object');
}

async function waitFor(what, fn, ms) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

async function main() {
  // files.create: multipart, as the SDK sends it.
  const size = fs.statSync(dataset).size;
  const file = await client.files.create({ file: fs.createReadStream(dataset), purpose: 'fine-tune' });
  assert.match(file.id, /^file-[A-Za-z0-9]{1,64}$/);
  assert.equal(file.object, 'file');
  assert.equal(file.bytes, size);
  assert.equal(file.filename, path.basename(dataset));
  assert.equal(file.purpose, 'fine-tune');
  assert.equal((await client.files.retrieve(file.id)).id, file.id);

  // fineTuning.jobs.create: a long job (so it is still running when cancelled) and a short one that
  // waits behind it. lorad's own keys (lora, threads) pass through the SDK untouched.
  const hyperparameters = { n_epochs: 1000, batch_size: 4, learning_rate: 0.01, max_seq_len: 64,
                            checkpoint_every_steps: 5, threads: 1 };
  const job = await client.fineTuning.jobs.create({ model, training_file: file.id, seed: 3, suffix: 'sdk',
                                                    hyperparameters, lora: { r: 4, alpha: 8 } });
  checkJob(job);
  assert.equal(job.training_file, file.id);
  assert.equal(job.seed, 3);
  const second = await client.fineTuning.jobs.create({ model, training_file: file.id, seed: 4,
                                                       hyperparameters: { n_epochs: 1, threads: 1 } });
  checkJob(second);
  assert.notEqual(second.id, job.id);

  // list: one page, then auto-pagination one job per page (the SDK follows `after` = last id).
  const page = await client.fineTuning.jobs.list({ limit: 10 });
  assert.equal(page.has_more, false);
  assert.deepEqual(page.data.map((j) => j.id).slice(0, 2), [second.id, job.id], 'newest first');
  page.data.forEach((j) => checkJob(j));
  const all = [];
  for await (const j of client.fineTuning.jobs.list({ limit: 1 })) all.push(j.id);
  assert.deepEqual(all, [second.id, job.id], 'auto-pagination with limit 1');
  // The raw list envelope (the SDK's page objects keep only data and has_more).
  const raw = await client.get('/fine_tuning/jobs', { query: { limit: 1 } });
  assert.equal(raw.object, 'list');
  assert.equal(raw.has_more, true);
  assert.equal(raw.data.length, 1);

  // retrieve
  const got = await client.fineTuning.jobs.retrieve(job.id);
  checkJob(got, job.id);
  await waitFor('the job to run', async () => (await client.fineTuning.jobs.retrieve(job.id)).status === 'running', 60000);

  // checkpoints.list: every 5 steps, so some exist soon.
  const ckpts = await waitFor('a checkpoint', async () => {
    const p = await client.fineTuning.jobs.checkpoints.list(job.id);
    return p.data.length ? p : null;
  }, 60000);
  for (const c of ckpts.data) {
    assert.match(c.id, /^ftckpt-[A-Za-z0-9]{1,64}$/);
    assert.equal(c.object, 'fine_tuning.job.checkpoint');
    assert.equal(c.fine_tuning_job_id, job.id);
    assert.ok(Number.isInteger(c.step_number) && c.step_number > 0 && c.step_number % 5 === 0, `step ${c.step_number}`);
    assert.equal(typeof c.created_at, 'number');
  }

  // listEvents: one page of 3, then all of them through the cursor.
  const ev = await client.fineTuning.jobs.listEvents(job.id, { limit: 3 });
  assert.equal(ev.data.length, 3);
  assert.equal(ev.has_more, true);
  const seen = new Set();
  for await (const e of client.fineTuning.jobs.listEvents(job.id, { limit: 3 })) {
    assert.equal(e.object, 'fine_tuning.job.event');
    assert.equal(typeof e.id, 'string');
    assert.ok(['info', 'warn', 'error'].includes(e.level), `level ${e.level}`);
    assert.equal(typeof e.message, 'string');
    assert.equal(typeof e.created_at, 'number');
    assert.ok(!seen.has(e.id), `event ${e.id} listed twice`);
    seen.add(e.id);
    if (seen.size >= 30) break;
  }
  assert.ok(seen.size > 3, 'paging through events');

  // cancel the waiting job (first, while the running one keeps the worker busy), then the running one.
  const c2 = await client.fineTuning.jobs.cancel(second.id);
  checkJob(c2, second.id);
  assert.equal(c2.status, 'cancelled', 'a queued job is cancelled at once');
  const c1 = await client.fineTuning.jobs.cancel(job.id);
  checkJob(c1, job.id);
  assert.ok(['cancelling', 'cancelled'].includes(c1.status), `cancel answered ${c1.status}`);
  await waitFor('cancelled', async () => (await client.fineTuning.jobs.retrieve(job.id)).status === 'cancelled', 10000);

  // API errors arrive as the SDK's typed errors with lorad's param and code.
  try {
    await client.fineTuning.jobs.retrieve('ftjob-' + 'A'.repeat(24));
    assert.fail('retrieving an unknown job succeeded');
  } catch (e) {
    assert.ok(e instanceof OpenAI.NotFoundError, `want NotFoundError, got ${e && e.constructor.name}: ${e}`);
    assert.equal(e.status, 404);
    assert.equal(e.param, 'fine_tuning_job_id');
  }
  try {
    await client.fineTuning.jobs.cancel(job.id);
    assert.fail('cancelling a cancelled job succeeded');
  } catch (e) {
    assert.ok(e instanceof OpenAI.ConflictError, `want ConflictError, got ${e && e.constructor.name}: ${e}`);
    assert.equal(e.status, 409);
  }
  console.log('sdk ok');
}

main().catch((e) => {
  console.error('FAIL:', e && e.stack ? e.stack : e);
  process.exit(1);
});
