/**
 * `diffuse serve` on loopback with the embedded queue: jobs on the reference model from POST to
 * PNG, idempotency, Server-Sent Events, cancelling a running job, a bearer token, a rate limit,
 * 200+ malformed or hostile requests answered 4xx with the field named while the service keeps
 * serving, and a shutdown that lets the running job finish.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { readImage } from '../src/image/read.ts';
import { loadPipeline } from '../src/pipelines/stable-diffusion.ts';
import { REFERENCE_MODEL } from '../src/pipelines/reference-model.ts';
import { Rng } from '../src/util/rng.ts';
import { startService, type Service } from '../src/serve/serve.ts';
import { checkJobRequest, describeModels, listModels, RequestError } from '../src/serve/job.ts';
import { EmbeddedQueue } from '../src/serve/embedded-queue.ts';
import { heldPipeline, runJob } from '../src/serve/worker.ts';
import { tempDir } from './helpers/files.ts';
import { MAX_WAITING } from '../src/serve/queue.ts';
import { INTERNAL_FAILURE, jobFailure } from '../src/serve/generation-thread.ts';

const TOKEN = 'a-test-token-of-32-characters-xx';
const CLI = path.join(import.meta.dirname, '..', 'bin', 'diffuse.js');
let service: Service;
let base: string;
let results: string;
let models: string;

interface JobView {
  id: string; state: string; progress: { step: number; steps: number }; images?: string[]; error?: string; seed: number; queue_position: number;
  macs?: number; estimate?: { macs: number; baseline_macs: number; speedup: number }; warnings?: string[];
}

before(async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'serve-'));
  results = path.join(dir, 'results');
  models = path.join(dir, 'models');
  fs.mkdirSync(models);
  fs.symlinkSync(REFERENCE_MODEL, path.join(models, 'my-model'));
  // Folders an operator may drop in that no pipeline here runs: listed as not served, refused by name.
  for (const [name, index] of [['inpaint', '{"_class_name": "StableDiffusionInpaintPipeline"}'], ['broken', '{"_class_name": ']]) {
    fs.mkdirSync(path.join(models, name));
    fs.writeFileSync(path.join(models, name, 'model_index.json'), index);
  }
  service = await startService({ host: '127.0.0.1', port: 0, results, modelDir: models, workers: 1, threads: 1, rate: 10_000 });
  base = `http://127.0.0.1:${service.port}`;
});

after(async () => {
  await service?.close(false);
});

function post(body: unknown, headers: Record<string, string> = {}, at = base): Promise<Response> {
  return fetch(`${at}/v1/images`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: typeof body === 'string' ? body : JSON.stringify(body) });
}

async function finished(id: string, at = base, headers: Record<string, string> = {}): Promise<JobView> {
  for (;;) {
    const job = await (await fetch(`${at}/v1/jobs/${id}`, { headers })).json() as JobView;
    if (!['queued', 'running'].includes(job.state)) return job;
    await new Promise((r) => setTimeout(r, 50));
  }
}

test('a job runs from POST to a PNG equal to the library\'s image, with its parameters; an Idempotency-Key returns the same job', async () => {
  const request = { model: 'my-model', prompt: 'a blue square on the right', steps: 4, seed: 5, guidance: 7.5 };
  const response = await post(request, { 'Idempotency-Key': 'job-1' });
  assert.equal(response.status, 202);
  const queued = await response.json() as JobView;
  assert.equal(response.headers.get('location'), `/v1/jobs/${queued.id}`);
  const again = await (await post(request, { 'Idempotency-Key': 'job-1' })).json() as JobView;
  assert.equal(again.id, queued.id, 'same key, same job');
  const reordered = await (await post(Object.fromEntries(Object.entries(request).reverse()), { 'Idempotency-Key': 'job-1' })).json() as JobView;
  assert.equal(reordered.id, queued.id, 'the same request with its fields in another order is the same request');
  const other = await post({ ...request, seed: 6 }, { 'Idempotency-Key': 'job-1' });
  assert.equal(other.status, 422, 'the same key for another request is refused, not answered with the first job');
  assert.equal((await other.json() as { error: { field: string } }).error.field, 'Idempotency-Key');

  const done = await finished(queued.id);
  assert.equal(done.state, 'done', done.error);
  assert.deepEqual(done.progress, { step: 4, steps: 4 });
  assert.equal(done.images!.length, 1);
  const png = await fetch(`${base}${done.images![0]}`);
  assert.equal(png.headers.get('content-type'), 'image/png');
  const bytes = Buffer.from(await png.arrayBuffer());
  assert.match(bytes.toString('latin1'), /parameters\0+a blue square on the right\nNegative prompt: \nSteps: 4, Sampler: dpm\+\+2m, CFG scale: 7\.5, Seed: 5/);
  assert.equal(done.images![0], `/v1/images/${queued.id}.png`);
  const file = path.join(results, `${queued.id}-0.png`);
  const served = readImage(file);
  const pipeline = await loadPipeline(REFERENCE_MODEL);
  try {
    const expected = (await pipeline.generate({ prompt: request.prompt, steps: 4, seed: 5, guidanceScale: 7.5 })).images[0];
    const worst = served.data.reduce((m, v, i) => Math.max(m, Math.abs(v - Math.round(Math.min(1, Math.max(0, expected.data[i])) * 255) / 255)), 0);
    assert.ok(worst < 1e-6, `served image = library image rounded to 8 bits (max diff ${worst})`);
  } finally {
    await pipeline.release();
  }
});

test('a service started with precision int8 runs its jobs at int8: the served image equals the library\'s int8 image', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'serve-int8-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const int8 = await startService({ host: '127.0.0.1', port: 0, results: dir, workers: 1, threads: 1, rate: 10_000, precision: 'int8' });
  try {
    const at = `http://127.0.0.1:${int8.port}`;
    const { id } = await (await post({ model: 'reference', prompt: 'a red circle on the left', steps: 4, seed: 3 }, {}, at)).json() as JobView;
    const done = await finished(id, at);
    assert.equal(done.state, 'done', done.error);
    const served = readImage(path.join(dir, `${id}-0.png`));
    for (const precision of ['int8', 'fp32'] as const) {
      const pipeline = await loadPipeline(REFERENCE_MODEL, { precision });
      try {
        const expected = (await pipeline.generate({ prompt: 'a red circle on the left', steps: 4, seed: 3 })).images[0];
        const worst = served.data.reduce((m, v, i) => Math.max(m, Math.abs(v - Math.round(Math.min(1, Math.max(0, expected.data[i])) * 255) / 255)), 0);
        if (precision === 'int8') assert.ok(worst < 1e-6, `served image = library int8 image rounded to 8 bits (max diff ${worst})`);
        else assert.ok(worst > 0, 'and not the fp32 image');
      } finally {
        await pipeline.release();
      }
    }
  } finally {
    await int8.close(false);
  }
});

test('events stream queued, started, every step and done; a running job is cancelled at its next step', async () => {
  const { id } = await (await post({ model: 'reference', prompt: 'a red circle', steps: 6, seed: 1, accel: 'deepcache:cache_interval=3' })).json() as JobView;
  const text = await (await fetch(`${base}/v1/jobs/${id}/events`)).text();
  const events = [...text.matchAll(/^event: (\w+)$/gm)].map((m) => m[1]);
  assert.equal(events.at(-1), 'done', text);
  assert.equal(events.filter((e) => e === 'step').length, 6, text);
  assert.ok(['queued', 'started'].includes(events[0]));
  // The MACs counted before the run for the chosen method, against what the run spent.
  const done = await finished(id);
  assert.ok(done.estimate && done.estimate.speedup > 1.5, JSON.stringify(done.estimate));
  assert.ok(Math.abs(done.macs! / done.estimate.macs - 1) < 0.05, `spent ${done.macs} vs estimated ${done.estimate.macs}`);

  const long = await (await post({ model: 'reference', prompt: 'a red circle', steps: 200, seed: 2 })).json() as JobView;
  for (;;) {
    const job = await (await fetch(`${base}/v1/jobs/${long.id}`)).json() as JobView;
    if (job.progress.step >= 1) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  const cancel = await fetch(`${base}/v1/jobs/${long.id}`, { method: 'DELETE' });
  assert.equal(cancel.status, 202);
  const job = await finished(long.id);
  assert.equal(job.state, 'cancelled');
  assert.ok(job.progress.step < 200, `stopped at step ${job.progress.step}`);
  assert.equal(job.images, undefined);
  assert.equal((await fetch(`${base}/v1/jobs/${long.id}`, { method: 'DELETE' })).status, 409, 'a finished job cannot be cancelled');
});

/** Requests a hostile or careless client might send, each with the field its refusal must name. */
function hostileRequests(count: number): { body: string; headers?: Record<string, string>; field: RegExp }[] {
  const rng = new Rng(11);
  const pick = <T>(xs: T[]): T => xs[Math.floor(rng.uniform() * xs.length)];
  // Per field, values that are wrong for it: wrong types, out of range, too long.
  const wrong: Record<string, unknown[]> = {
    prompt: [7, true, [], {}, 'x'.repeat(5000)],
    negative_prompt: [7, false, ['a'], 'y'.repeat(2001)],
    steps: [0, -1, 1.5, 1e308, '12', true, [], {}, 201, 2 ** 53],
    width: [0, 7, 65, 1e308, -8, '64', 4096, [64]],
    height: [0, 12, 1.5, 'NaN', 2056, {}],
    seed: [-1, 1.5, 2 ** 40, '5', {}, []],
    batch: [0, 5, 1.5, '1', true],
    guidance: [-1, 51, 1e308, 'NaN', [], true, -1e308],
    scheduler: ['nope', 7, '', [], 'euler; rm -rf /'],
    // '@file' (a plan) and a schedule file are the command line's: a request cannot name a file on the server.
    accel: [7, 'x'.repeat(600), 'tgate:gate_step=0', 'nosuchmethod', 'deepcache:cache_interval=-1', 'tgate:nope=1', { $gt: 1 }, '@/etc/passwd', '@plan.json',
      'attn-reuse:schedule=/etc/passwd', 'attn-reuse:schedule=package.json', 'tgate + tgate', 'deepcache + skip-cache'],
    class: [[], [-1], [1.5], 'x'.repeat(300), [1, 2, 3, 4, 5], {}, true, [null]],
  };
  const out: { body: string; headers?: Record<string, string>; field: RegExp }[] = [
    { body: '{"model": "reference", ', field: /body/ },
    { body: 'not json at all', field: /body/ },
    { body: '[1, 2, 3]', field: /body/ },
    { body: '"a string"', field: /body/ },
    { body: JSON.stringify({ model: 'reference', prompt: 'x'.repeat(70_000) }), field: /body/ },
    { body: JSON.stringify({ model: 'reference' }), headers: { 'content-type': 'text/plain' }, field: /Content-Type/ },
    { body: JSON.stringify({ model: 'reference' }), headers: { 'Idempotency-Key': 'k'.repeat(300) }, field: /Idempotency-Key/ },
    { body: JSON.stringify({ prompt: 'no model' }), field: /model/ },
    { body: JSON.stringify({ model: 'reference', extra: 1 }), field: /extra/ },
  ];
  for (const name of ['../reference-model', '/etc', 'a/b', '..', '%2e%2e', 'my-model/../../x', '.hidden', 'C:\\x', 'my-model\u0000', 'nonexistent']) {
    out.push({ body: JSON.stringify({ model: name, prompt: 'x' }), field: /model/ });
  }
  out.push({ body: JSON.stringify({ model: 'reference', prompt: 'x', accel: 'tgate:gate_step=0' }), field: /accel/ });
  out.push({ body: JSON.stringify({ model: 'reference', prompt: 'x', accel: 'nosuchmethod' }), field: /accel/ });
  out.push({ body: JSON.stringify({ model: 'reference', prompt: 'x', width: 65 }), field: /width/ });
  while (out.length < count) {
    const name = pick(Object.keys(wrong));
    out.push({ body: JSON.stringify({ model: 'reference', prompt: 'x', [name]: pick(wrong[name]) }), field: new RegExp(`^${name}$`) });
  }
  return out;
}

test('200+ malformed or hostile requests are each one 4xx naming the field, and the service keeps serving', async () => {
  const requests = hostileRequests(220);
  for (const r of requests) {
    const response = await post(r.body, r.headers);
    const text = await response.text();
    assert.ok(response.status >= 400 && response.status < 500, `${r.body.slice(0, 80)} → ${response.status} ${text.slice(0, 200)}`);
    const body = JSON.parse(text) as { error: { field: string; message: string } };
    assert.match(body.error.field, r.field, `${r.body.slice(0, 80)} → ${text.slice(0, 200)}`);
    assert.doesNotMatch(body.error.message, /^([\w-]+): \1\b/, `the field named once: ${body.error.message}`);
    assert.doesNotMatch(text, /root:|"name": "diffusion/, 'no server file read');
    assert.doesNotMatch(text, /\n\s+at |\.ts:\d+|node:internal/, 'no stack trace');
  }
  for (const p of ['/v1/images/../../etc/passwd', '/v1/images/%2e%2e%2fpackage.json', '/v1/images/x.png', '/v1/jobs/nope', '/nowhere']) {
    const response = await fetch(`${base}${p}`);
    assert.equal(response.status, 404, p);
  }
  const health = await (await fetch(`${base}/healthz`)).json() as { ok: boolean; failed: number };
  assert.equal(health.ok, true);
  const job = await (await post({ model: 'reference', prompt: 'still serving', steps: 2, seed: 3 })).json() as JobView;
  assert.equal((await finished(job.id)).state, 'done');
  const metrics = await (await fetch(`${base}/metrics`)).text();
  assert.match(metrics, /^diffusion_queue_depth 0$/m);
  assert.match(metrics, /^diffusion_jobs_done_total \d+$/m);
  const openapi = await (await fetch(`${base}/openapi.json`)).json() as { paths: Record<string, unknown> };
  assert.ok(openapi.paths['/v1/images'] && openapi.paths['/v1/jobs/{id}/events']);
});

test('a field the model does not read is refused by name, as is a missing prompt or class; the pipeline\'s warnings reach the job', async () => {
  for (const [body, field, words] of [
    [{ model: 'reference-dit', class: 1, prompt: 'a cat' }, 'prompt', 'not read by reference-dit (a DiTPipeline)'],
    [{ model: 'reference-dit', class: 1, width: 512 }, 'width', 'not read by reference-dit'],
    [{ model: 'reference', prompt: 'x', class: [1, 2] }, 'class', 'not read by reference (a StableDiffusionPipeline)'],
    [{ model: 'my-model' }, 'prompt', 'missing'],
    [{ model: 'reference-dit', seed: 1 }, 'class', 'missing'],
  ] as const) {
    const response = await post(body);
    const text = await response.text();
    assert.equal(response.status, 422, text);
    const { error } = JSON.parse(text) as { error: { field: string; message: string } };
    assert.equal(error.field, field, text);
    assert.ok(error.message.includes(words), error.message);
  }
  // Guidance 1 turns CFG off, so the negative prompt does nothing: the job says so, as `generate` does, in the body's field names.
  const job = await (await post({ model: 'reference', prompt: 'x', negative_prompt: 'y', guidance: 1, steps: 2, seed: 1 })).json() as JobView;
  const done = await finished(job.id);
  assert.equal(done.state, 'done', done.error);
  assert.ok(done.warnings?.some((w) => w.startsWith('negative_prompt has no effect: guidance 1 ≤ 1')), JSON.stringify(done.warnings));
});

test('a model folder no pipeline here runs is refused at once by name with why, and listed as not served', async () => {
  for (const [model, why] of [['inpaint', 'StableDiffusionInpaintPipeline: no pipeline here runs it'], ['broken', 'model_index.json is not valid JSON']]) {
    const response = await post({ model, prompt: 'x', steps: 2 });
    const text = await response.text();
    assert.equal(response.status, 422, text);
    const { error } = JSON.parse(text) as { error: { field: string; message: string } };
    assert.equal(error.field, 'model');
    assert.ok(error.message.includes(`not a model this service runs (${why}`) && error.message.includes('StableDiffusionPipeline, '), error.message);
  }
  assert.deepEqual(listModels(models), ['my-model']);
  assert.match(describeModels(models), /^models: reference, .*my-model; not served: broken \(model_index\.json is not valid JSON\), inpaint \(StableDiffusionInpaintPipeline: no pipeline here runs it\)$/);
  const openapi = await (await fetch(`${base}/openapi.json`)).json() as { info: { description: string } };
  assert.doesNotMatch(openapi.info.description, /inpaint|broken/);
});

test('a token guards /v1 and /metrics, a rate limit answers 429, and beyond loopback a token is required', async () => {
  const guarded = await startService({ host: '127.0.0.1', port: 0, results, workers: 1, threads: 1, rate: 2, token: TOKEN });
  try {
    const at = `http://127.0.0.1:${guarded.port}`;
    const request = { model: 'reference', prompt: 'x', steps: 1 };
    assert.equal((await post(request, {}, at)).status, 401);
    assert.equal((await post(request, { authorization: 'Bearer wrong' }, at)).status, 401);
    assert.equal((await fetch(`${at}/metrics`)).status, 401);
    assert.equal((await fetch(`${at}/openapi.json`)).status, 401, 'it lists the model folders');
    assert.equal((await fetch(`${at}/healthz`)).status, 200);
    const auth = { authorization: `Bearer ${TOKEN}` };
    assert.equal((await post(request, auth, at)).status, 202);
    assert.equal((await post(request, auth, at)).status, 202);
    const limited = await post(request, auth, at);
    assert.equal(limited.status, 429);
    assert.ok(Number(limited.headers.get('retry-after')) > 0);
  } finally {
    await guarded.close(false);
  }
  // Without a token the limit counts per connection address: a client cannot be many by writing X-Forwarded-For.
  const byAddress = await startService({ host: '127.0.0.1', port: 0, results, workers: 1, threads: 1, rate: 2 });
  try {
    const at = `http://127.0.0.1:${byAddress.port}`;
    const request = { model: 'reference', prompt: 'x', steps: 1 };
    assert.equal((await post(request, { 'x-forwarded-for': '10.0.0.1' }, at)).status, 202);
    assert.equal((await post(request, { 'x-forwarded-for': '10.0.0.2' }, at)).status, 202);
    assert.equal((await post(request, { 'x-forwarded-for': '10.0.0.3' }, at)).status, 429);
  } finally {
    await byAddress.close(false);
  }
  const open = spawnSync(process.execPath, [CLI, 'serve', '--host', '0.0.0.0', '--port', '0'], { encoding: 'utf8', env: { ...process.env, DIFFUSE_TOKEN: '' }, timeout: 60_000 });
  assert.equal(open.status, 2, open.stderr);
  assert.match(open.stderr, /^diffuse: --token: required when listening beyond loopback/m);
  // Every serve flag refuses a bad value in one line, exit 2, before anything starts.
  const refusals: [string[], RegExp][] = [
    [['--port', '70000'], /^diffuse: .*--port expects a port number from 0 to 65535, got "70000"$/m],
    [['--model-dir', '/no/such/folder'], /^diffuse: --model-dir: not a folder; expected a folder of diffusers model folders, found \/no\/such\/folder$/m],
    [['--token', 'short'], /^diffuse: --token: too short; expected at least 16 characters, found 5$/m],
    [['--workers', '65'], /^diffuse: .*--workers expects an integer from 0 to 64, got "65"$/m],
    [['--workers', '0'], /^diffuse: --workers: no worker would run the jobs; expected at least 1 without --redis, found 0$/m],
    [['--threads', `${os.availableParallelism() + 1}`], /^diffuse: --threads: more threads per session than this machine's \d+ cores \(each of a model's sessions keeps its own pool\); expected at most \d+, found \d+$/m],
  ];
  // A port already taken is refused after the service has started its workers: it leaves no results folder either.
  const taken = net.createServer().listen(0, '127.0.0.1');
  await new Promise((resolve) => taken.once('listening', resolve));
  refusals.push([['--port', `${(taken.address() as net.AddressInfo).port}`], /^diffuse: --port: cannot listen on 127\.0\.0\.1:\d+ \(EADDRINUSE\); expected a free port$/m]);
  const cwd = fs.mkdtempSync(path.join(os.tmpdir(), 'serve-refused-'));
  for (const [flags, message] of refusals) {
    const run = spawnSync(process.execPath, [CLI, 'serve', ...(flags.includes('--port') ? [] : ['--port', '0']), ...flags], { cwd, encoding: 'utf8', timeout: 60_000 });
    assert.equal(run.status, 2, `${flags.join(' ')}: ${run.stderr}`);
    assert.match(run.stderr, message);
    assert.doesNotMatch(run.stderr, /\n\s+at /);
    assert.deepEqual(fs.readdirSync(cwd), [], `${flags.join(' ')} left nothing behind`);
  }
  taken.close();
});

test('images outlive their jobs by at most a day: older job images go when a service starts (and hourly), other files stay', async (t) => {
  const dir = tempDir(t);
  const id = '0123abcd-0000-4000-8000-0000000000ab';
  const files = { old: `${id}-0.png`, oldPartial: `${id}-1.png.partial-123`, fresh: `${id}-2.png`, mine: 'notes.png' };
  for (const name of Object.values(files)) fs.writeFileSync(path.join(dir, name), 'x');
  const twoDaysAgo = new Date(Date.now() - 2 * 86_400_000);
  for (const name of [files.old, files.oldPartial, files.mine]) fs.utimesSync(path.join(dir, name), twoDaysAgo, twoDaysAgo);
  const own = await startService({ host: '127.0.0.1', port: 0, results: dir, workers: 1, threads: 1, rate: 100 });
  await own.close(false);
  assert.deepEqual(fs.readdirSync(dir).sort(), [files.fresh, files.mine].sort());
});

test('closing the service lets the running job finish', async () => {
  const own = await startService({ host: '127.0.0.1', port: 0, results, workers: 1, threads: 1, rate: 100 });
  const at = `http://127.0.0.1:${own.port}`;
  const { id } = await (await post({ model: 'reference', prompt: 'drain me', steps: 6, seed: 4 }, {}, at)).json() as JobView;
  while ((await own.queue.get(id))!.state === 'queued') await new Promise((r) => setTimeout(r, 10));
  await own.close(true);
  assert.equal((await own.queue.get(id))!.state, 'done');
});

test('a failed job tells the client what its request caused, in the model\'s name; an internal error only as such, its message in the server\'s log', () => {
  const job = { folder: '/srv/models/secret-name', model: 'my-model' };
  const refused = jobFailure('/srv/models/secret-name/scheduler/scheduler_config.json: variance_type: learned_range', false, true, job, 'j1');
  assert.equal(refused.message, 'my-model/scheduler/scheduler_config.json: variance_type: learned_range');
  const logged: string[] = [];
  const write = process.stderr.write;
  process.stderr.write = ((line: string) => logged.push(line) > 0) as typeof process.stderr.write;
  try {
    const internal = jobFailure('ENOSPC: no space left on device, open \'/root/.cache/diffusion.ts/sessions/x\'', false, false, job, 'j2');
    assert.equal(internal.message, INTERNAL_FAILURE);
    assert.ok(!internal.input && !internal.cancelled);
  } finally {
    process.stderr.write = write;
  }
  assert.deepEqual(logged, ['diffuse: job j2 failed: ENOSPC: no space left on device, open \'/root/.cache/diffusion.ts/sessions/x\'\n']);
});

test('the embedded queue holds at most MAX_WAITING waiting jobs: one more is refused with 503, not kept', async () => {
  const queue = new EmbeddedQueue(0, { resultsDir: results, threads: 1, memoryShare: 1 });
  try {
    const job = checkJobRequest({ model: 'reference', prompt: 'x', steps: 1 }, undefined, () => 1);
    for (let i = 0; i < MAX_WAITING; i++) await queue.submit(job);
    await assert.rejects(queue.submit(job), (e: unknown) => e instanceof RequestError && e.status === 503 && e.field === 'queue');
    assert.equal((await queue.stats()).queued, MAX_WAITING);
  } finally {
    await queue.close(false);
  }
});

test('a worker holds one pipeline: a job for another model or size releases the one it held', async (t) => {
  const options = { resultsDir: tempDir(t), threads: 1, memoryShare: 1 };
  const run = async (body: Record<string, unknown>) => {
    const job = checkJobRequest({ steps: 1, ...body }, models, () => 1);
    await runJob(`held-${job.model}-${job.width}`, job, options, () => {}, new AbortController().signal);
    return job.folder;
  };
  const reference = await run({ model: 'reference', prompt: 'x' });
  assert.equal(heldPipeline(), `${reference}|x`);
  await run({ model: 'reference', prompt: 'x', width: 32, height: 32 });
  assert.equal(heldPipeline(), `${reference}|32x32`);
  const dit = await run({ model: 'reference-dit', class: 1 });
  assert.equal(heldPipeline(), `${dit}|x`);
});
