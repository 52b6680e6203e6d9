// The official OpenAI Node SDK (the `openai` npm package pinned in tools/) against lorad's inference
// routes (issue 17): client.completions.create and client.chat.completions.create, with and without
// `stream: true` (iterated with for await), on a base model and a fine-tuned model. Streamed text must
// equal the non-streamed text at temperature 0, usage must add up, finish_reason must be OpenAI's, and
// a bad temperature must surface as the SDK's BadRequestError with param "temperature".
//
//   node serve_inference_sdk.cjs BASE_URL BASE_MODEL FINE_TUNED_MODEL
// BASE_URL is http://127.0.0.1:PORT/v1. Exits 0 and prints "sdk inference ok" when every check passes.
'use strict';
const assert = require('node:assert/strict');
const path = require('node:path');

const source = process.env.LORAD_SOURCE_DIR || path.join(__dirname, '..', '..');
const modules = process.env.LORAD_NODE_MODULES || path.join(source, 'tools', 'node_modules');
const OpenAI = require(path.join(modules, 'openai'));

const [baseURL, baseModel, ftModel] = process.argv.slice(2);
const client = new OpenAI({ apiKey: 'anything', baseURL, maxRetries: 0, timeout: 60000 });
const FINISH = ['stop', 'length'];

function checkUsage(u, what) {
  assert.equal(typeof u, 'object', `${what}: usage`);
  for (const k of ['prompt_tokens', 'completion_tokens', 'total_tokens']) {
    assert.ok(Number.isInteger(u[k]) && u[k] >= 0, `${what}: usage.${k} = ${u[k]}`);
  }
  assert.ok(u.prompt_tokens > 0, `${what}: prompt_tokens 0`);
  assert.equal(u.total_tokens, u.prompt_tokens + u.completion_tokens, `${what}: total_tokens`);
}

function checkEnvelope(r, object, model, what) {
  assert.equal(typeof r.id, 'string', `${what}: id`);
  assert.ok(r.id.length > 0, `${what}: empty id`);
  assert.equal(r.object, object, `${what}: object`);
  assert.ok(Number.isInteger(r.created) && Math.abs(r.created - Date.now() / 1000) < 600, `${what}: created ${r.created}`);
  assert.equal(r.model, model, `${what}: model`);
}

// A streamed completion: the text of choice 0, its finish_reason, the usage chunk's usage, the ids.
async function collectCompletion(stream, model, what) {
  let text = '';
  let finish = null;
  let usage = null;
  const ids = new Set();
  let n = 0;
  for await (const chunk of stream) {
    n++;
    ids.add(chunk.id);
    assert.equal(chunk.object, 'text_completion', `${what}: chunk object`);
    assert.equal(chunk.model, model, `${what}: chunk model`);
    assert.equal(usage, null, `${what}: a chunk after the usage chunk`);
    if (chunk.usage) {
      assert.deepEqual(chunk.choices, [], `${what}: the usage chunk has choices`);
      usage = chunk.usage;
      continue;
    }
    assert.equal(chunk.choices.length, 1, `${what}: chunk choices ${JSON.stringify(chunk.choices)}`);
    const c = chunk.choices[0];
    assert.equal(c.index, 0);
    assert.equal(finish, null, `${what}: a chunk after the finish_reason`);
    text += c.text;
    if (c.finish_reason !== null && c.finish_reason !== undefined) finish = c.finish_reason;
  }
  assert.ok(n > 0, `${what}: empty stream`);
  assert.equal(ids.size, 1, `${what}: ${ids.size} ids in one stream`);
  assert.ok(FINISH.includes(finish), `${what}: finish_reason ${finish}`);
  return { text, finish, usage };
}

async function collectChat(stream, model, what) {
  let text = '';
  let finish = null;
  let usage = null;
  let first = true;
  const ids = new Set();
  for await (const chunk of stream) {
    ids.add(chunk.id);
    assert.equal(chunk.object, 'chat.completion.chunk', `${what}: chunk object`);
    assert.equal(chunk.model, model, `${what}: chunk model`);
    assert.equal(usage, null, `${what}: a chunk after the usage chunk`);
    if (chunk.usage) {
      assert.deepEqual(chunk.choices, [], `${what}: the usage chunk has choices`);
      usage = chunk.usage;
      continue;
    }
    assert.equal(chunk.choices.length, 1, `${what}: chunk choices ${JSON.stringify(chunk.choices)}`);
    const c = chunk.choices[0];
    assert.equal(c.index, 0);
    assert.equal(finish, null, `${what}: a chunk after the finish_reason`);
    if (first) {
      assert.equal(c.delta.role, 'assistant', `${what}: the first delta has no role: ${JSON.stringify(c.delta)}`);
      assert.equal(c.delta.content, '', `${what}: the role delta's content`);
      first = false;
    } else {
      assert.equal(c.delta.role, undefined, `${what}: a role in a later delta`);
    }
    if (typeof c.delta.content === 'string') text += c.delta.content;
    if (c.finish_reason !== null && c.finish_reason !== undefined) {
      finish = c.finish_reason;
      assert.deepEqual(c.delta, {}, `${what}: the finish chunk's delta`);
    }
  }
  assert.ok(!first, `${what}: empty stream`);
  assert.equal(ids.size, 1, `${what}: ${ids.size} ids in one stream`);
  assert.ok(FINISH.includes(finish), `${what}: finish_reason ${finish}`);
  return { text, finish, usage };
}

async function completions(model) {
  const req = { model, prompt: 'alpha bravo charlie', max_tokens: 16, temperature: 0 };
  const r = await client.completions.create(req);
  checkEnvelope(r, 'text_completion', model, `completions ${model}`);
  assert.equal(r.choices.length, 1);
  const c = r.choices[0];
  assert.equal(c.index, 0);
  assert.equal(typeof c.text, 'string');
  assert.ok(FINISH.includes(c.finish_reason), `finish_reason ${c.finish_reason}`);
  checkUsage(r.usage, `completions ${model}`);
  if (c.finish_reason === 'length') assert.equal(r.usage.completion_tokens, 16, 'length: completion_tokens == max_tokens');
  else assert.ok(r.usage.completion_tokens <= 16);

  const s = await collectCompletion(await client.completions.create({ ...req, stream: true }), model, `completions stream ${model}`);
  assert.equal(s.text, c.text, `completions ${model}: streamed text != non-streamed`);
  assert.equal(s.finish, c.finish_reason);
  assert.equal(s.usage, null, 'a usage chunk without include_usage');
  const u = await collectCompletion(await client.completions.create({ ...req, stream: true, stream_options: { include_usage: true } }),
    model, `completions stream+usage ${model}`);
  assert.equal(u.text, c.text, `completions ${model}: streamed text (include_usage) != non-streamed`);
  assert.ok(u.usage, 'no usage chunk with include_usage');
  assert.deepEqual(u.usage, r.usage, `completions ${model}: streamed usage`);

  // max_tokens 5: finish "length" means exactly 5 tokens.
  const short = await client.completions.create({ ...req, max_tokens: 5 });
  checkUsage(short.usage, 'max_tokens 5');
  if (short.choices[0].finish_reason === 'length') assert.equal(short.usage.completion_tokens, 5);
  assert.ok(c.text.startsWith(short.choices[0].text), `greedy with max_tokens 5 is not a prefix of max_tokens 16: ${JSON.stringify(short.choices[0].text)} vs ${JSON.stringify(c.text)}`);
  return c.text;
}

async function chat(model) {
  const req = { model, messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'alpha bravo' }],
                max_completion_tokens: 16, temperature: 0 };
  const r = await client.chat.completions.create(req);
  checkEnvelope(r, 'chat.completion', model, `chat ${model}`);
  assert.equal(r.choices.length, 1);
  const c = r.choices[0];
  assert.equal(c.index, 0);
  assert.equal(c.message.role, 'assistant');
  assert.equal(typeof c.message.content, 'string');
  assert.ok(FINISH.includes(c.finish_reason), `finish_reason ${c.finish_reason}`);
  checkUsage(r.usage, `chat ${model}`);
  if (c.finish_reason === 'length') assert.equal(r.usage.completion_tokens, 16, 'length: completion_tokens == max');

  const s = await collectChat(await client.chat.completions.create({ ...req, stream: true }), model, `chat stream ${model}`);
  assert.equal(s.text, c.message.content, `chat ${model}: streamed text != non-streamed`);
  assert.equal(s.finish, c.finish_reason);
  assert.equal(s.usage, null, 'a usage chunk without include_usage');
  const u = await collectChat(await client.chat.completions.create({ ...req, stream: true, stream_options: { include_usage: true } }),
    model, `chat stream+usage ${model}`);
  assert.equal(u.text, c.message.content);
  assert.deepEqual(u.usage, r.usage, `chat ${model}: streamed usage`);

  // The same seed at temperature 1: the same text.
  const seeded = { ...req, temperature: 1, seed: 7 };
  const a = await client.chat.completions.create(seeded);
  const b = await client.chat.completions.create(seeded);
  assert.equal(a.choices[0].message.content, b.choices[0].message.content, `chat ${model}: seed 7 twice`);
  return c.message.content;
}

async function main() {
  const models = [];
  for await (const m of client.models.list()) models.push(m);
  const byId = Object.fromEntries(models.map((m) => [m.id, m]));
  assert.ok(byId[baseModel], `models.list lacks ${baseModel}`);
  assert.ok(byId[ftModel], `models.list lacks ${ftModel}`);
  assert.equal(byId[ftModel].parent, baseModel, 'the fine-tuned model\'s parent');
  for (const m of [byId[baseModel], byId[ftModel]]) {
    assert.equal(m.object, 'model');
    assert.equal(typeof m.owned_by, 'string');
  }

  const out = {};
  for (const model of [baseModel, ftModel]) {
    out[model] = { completion: await completions(model), chat: await chat(model) };
    console.log(`${model}: completion ${JSON.stringify(out[model].completion)} chat ${JSON.stringify(out[model].chat)}`);
  }

  // Leaving a stream early (break out of for await aborts the request), then the next request works.
  const long = await client.completions.create({ model: baseModel, prompt: 'alpha', max_tokens: 500, temperature: 0, stream: true });
  let k = 0;
  for await (const chunk of long) { // eslint-disable-line no-unused-vars
    if (++k === 3) break;
  }
  const after = await client.completions.create({ model: ftModel, prompt: 'alpha bravo charlie', max_tokens: 16, temperature: 0 });
  assert.equal(after.choices[0].text, out[ftModel].completion, 'the answer after an abandoned stream');

  // Errors: the SDK's typed errors with lorad's param.
  try {
    await client.chat.completions.create({ model: ftModel, messages: [{ role: 'user', content: 'x' }], temperature: 5 });
    assert.fail('temperature 5 was accepted');
  } catch (e) {
    assert.ok(e instanceof OpenAI.BadRequestError, `want BadRequestError, got ${e && e.constructor.name}: ${e}`);
    assert.equal(e.status, 400);
    assert.equal(e.param, 'temperature');
  }
  try {
    await client.completions.create({ model: baseModel, prompt: 'x', temperature: 5, stream: true });
    assert.fail('temperature 5 was accepted (stream)');
  } catch (e) {
    assert.ok(e instanceof OpenAI.BadRequestError, `stream: want BadRequestError, got ${e && e.constructor.name}: ${e}`);
    assert.equal(e.param, 'temperature');
  }
  try {
    await client.chat.completions.create({ model: 'no-such-model', messages: [{ role: 'user', content: 'x' }] });
    assert.fail('an unknown model was accepted');
  } catch (e) {
    assert.ok(e instanceof OpenAI.NotFoundError, `want NotFoundError, got ${e && e.constructor.name}: ${e}`);
    assert.equal(e.param, 'model');
  }
  console.log('sdk inference ok');
}

main().catch((e) => {
  console.error('FAIL:', e && e.stack ? e.stack : e);
  process.exit(1);
});
