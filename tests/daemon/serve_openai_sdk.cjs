// The official OpenAI Node SDK (the `openai` npm package pinned in tools/) against a real lorad
// daemon: upload a file, create, list (with cursor pagination), retrieve and cancel jobs, list events
// and checkpoints, and read an API error; then a DPO job with OpenAI's `method` form on a preference
// file, read back with its method and trained to its DPO metrics. Every answer is checked for the
// shape the SDK documents.
//
//   node serve_openai_sdk.cjs BASE_URL DATASET.jsonl MODEL PAIRS.jsonl
// BASE_URL is http://127.0.0.1:PORT/v1. Exits 0 and prints "sdk ok" when every check passes.
'use strict';
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');

const source = process.env.LORAD_SOURCE_DIR || path.join(__dirname, '..', '..');
const OpenAI = require(path.join(source, 'tools', 'node_modules', 'openai'));

const [baseURL, dataset, model, pairs] = process.argv.slice(2);
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
  // The job echoes its method as OpenAI's does, the deprecated top-level hyperparameters inside it.
  assert.equal(job.method.type, 'supervised');
  assert.equal(job.method.supervised.hyperparameters.n_epochs, 1000);
  assert.equal(job.method.supervised.hyperparameters.batch_size, 4);
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
  await dpo(file);
  console.log('sdk ok');
}

// DPO: OpenAI's method form on a preference file, read back, trained, its metrics read; and the
// refusals named by param: the wrong kind of file for the method, a beta out of bounds.
async function dpo(textFile) {
  const prefs = await client.files.create({ file: fs.createReadStream(pairs), purpose: 'fine-tune' });
  assert.equal((await client.files.retrieve(prefs.id)).status, 'processed');
  const method = { type: 'dpo', dpo: { hyperparameters: { beta: 0.25, n_epochs: 1, batch_size: 2,
                                                          learning_rate_multiplier: 2 } } };
  const job = await client.fineTuning.jobs.create({ model, training_file: prefs.id, method,
                                                    hyperparameters: { threads: 1, max_seq_len: 64 } });
  checkJob(job);
  assert.equal(job.method.type, 'dpo');
  assert.equal(job.method.dpo.hyperparameters.beta, 0.25);
  assert.equal(job.method.dpo.hyperparameters.n_epochs, 1);
  assert.equal(job.method.dpo.hyperparameters.batch_size, 2);
  const got = await client.fineTuning.jobs.retrieve(job.id);
  checkJob(got, job.id);
  assert.deepEqual(got.method, job.method);
  const done = await waitFor('the DPO job to succeed', async () => {
    const j = await client.fineTuning.jobs.retrieve(job.id);
    assert.ok(!['failed', 'cancelled'].includes(j.status), `DPO job ${j.status}: ${JSON.stringify(j.error)}`);
    return j.status === 'succeeded' ? j : null;
  }, 60000);
  assert.match(done.fine_tuned_model, /^ft:/);
  const metrics = await client.get(`/fine_tuning/jobs/${job.id}/metrics`);
  assert.equal(metrics.data.length, 4, '8 pairs in steps of 2');
  assert.ok(Math.abs(metrics.data[0].train_loss - Math.log(2)) < 1e-6, 'step 1: the policy is the reference');
  for (const row of metrics.data) {
    for (const k of ['rewards_margin', 'rewards_accuracy', 'rewards_chosen', 'rewards_rejected'])
      assert.equal(typeof row[k], 'number', `metrics row ${row.step} lacks ${k}`);
  }

  const refused = [
    [{ model, training_file: textFile.id, method: { type: 'dpo' } }, 'training_file'],
    [{ model, training_file: prefs.id }, 'training_file'],
    [{ model, training_file: prefs.id, method: { type: 'dpo', dpo: { hyperparameters: { beta: 0 } } } },
     'method.dpo.hyperparameters.beta'],
    [{ model, training_file: prefs.id, method: { type: 'reinforcement' } }, 'method.type'],
  ];
  for (const [body, param] of refused) {
    try {
      await client.fineTuning.jobs.create(body);
      assert.fail(`${JSON.stringify(body)} was accepted`);
    } catch (e) {
      assert.ok(e instanceof OpenAI.BadRequestError, `want BadRequestError, got ${e && e.constructor.name}: ${e}`);
      assert.equal(e.param, param);
    }
  }
}

main().catch((e) => {
  console.error('FAIL:', e && e.stack ? e.stack : e);
  process.exit(1);
});
