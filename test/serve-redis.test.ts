/**
 * `diffuse serve --redis` with `diffuse worker` processes, against a real redis-server this file
 * starts on a free loopback port (append-only file on, so a restart keeps the jobs): 200 jobs over
 * two workers with every result present exactly once, a worker killed with SIGKILL mid-job and its
 * job completed by the other, Redis restarted under load with no job lost, cancelling queued and
 * running jobs, idempotency, a worker that drains on SIGTERM, and clear errors for a bad --redis.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { createInterface } from 'node:readline';
import { startService, type Service } from '../src/serve/serve.ts';

const CLI = path.join(import.meta.dirname, '..', 'bin', 'diffuse.js');
const REDIS_SERVER = '/usr/bin/redis-server';
// In CI (.ci/run installs it) a missing redis-server fails the tests; elsewhere they are skipped, saying why.
const skip = fs.existsSync(REDIS_SERVER) || process.env.CI ? false : `${REDIS_SERVER} is missing (apt-get install redis-server)`;
const QUEUE = `test-${process.pid}`;

let dir: string;
let results: string;
let redisPort: number;
let redisUrl: string;
let redis: ChildProcess | undefined;
let service: Service;
let base: string;
const workers: Worker[] = [];

interface JobView { id: string; state: string; progress: { step: number; steps: number }; attempts: number; images?: string[]; error?: string; queue_position: number }

interface Worker { child: ChildProcess; lines: string[]; exited: Promise<number | null> }

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const server = net.createServer().listen(0, '127.0.0.1', () => {
      const port = (server.address() as net.AddressInfo).port;
      server.close(() => resolve(port));
    });
  });
}

async function startRedis(): Promise<void> {
  redis = spawn(REDIS_SERVER, ['--port', `${redisPort}`, '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--appendonly', 'yes', '--appendfsync', 'always'], { stdio: ['ignore', fs.openSync(path.join(dir, 'redis.log'), 'a'), 'inherit'] });
  for (let i = 0; i < 100; i++) {
    const up = await new Promise<boolean>((resolve) => {
      const socket = net.connect(redisPort, '127.0.0.1').on('connect', () => resolve(true)).on('error', () => resolve(false));
      socket.unref();
      setTimeout(() => socket.destroy(), 100);
    });
    if (up) return;
    await sleep(50);
  }
  throw new Error('redis-server did not start');
}

async function stopRedis(): Promise<void> {
  const r = redis;
  redis = undefined;
  if (!r || r.exitCode !== null) return;
  const exited = new Promise((resolve) => r.once('exit', resolve));
  r.kill('SIGTERM');
  await exited;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function startWorker(): Worker {
  const child = spawn(process.execPath, [CLI, 'worker', '--redis', redisUrl, '--queue', QUEUE, '--results', results, '--stall-seconds', '2'], { stdio: ['ignore', 'ignore', 'pipe'] });
  // (Killing bin/diffuse.js kills the worker it restarts itself as: bin/diffuse.js sees to that.)
  const lines: string[] = [];
  createInterface({ input: child.stderr! }).on('line', (line) => lines.push(line));
  const worker = { child, lines, exited: new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code))) };
  workers.push(worker);
  return worker;
}

async function until<T>(what: string, check: () => T | undefined | false | Promise<T | undefined | false>, seconds = 60): Promise<T> {
  const end = Date.now() + seconds * 1000;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

const ready = (w: Worker) => until('the worker to start', () => w.lines.some((l) => l.includes('taking jobs')) || (w.child.exitCode !== null && Promise.reject(new Error(w.lines.join('\n')))));

function post(body: unknown, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(`${base}/v1/images`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) });
}

async function job(id: string): Promise<JobView> {
  return await (await fetch(`${base}/v1/jobs/${id}`)).json() as JobView;
}

const finished = (id: string, seconds = 120) => until(`job ${id}`, async () => {
  const j = await job(id);
  return !['queued', 'running'].includes(j.state) && j;
}, seconds);

/**
 * The workers' logs once each of `ids` is in them (a worker logs a job done just after Redis
 * records it, so the server can say done a moment before the line arrives here).
 */
async function loggedDone(ids: string[], seconds?: number): Promise<Map<string, number>> {
  return until('the workers to log every job done', () => {
    const done = completions();
    return ids.every((id) => done.has(id)) && done;
  }, seconds);
}

/** Job ids each worker reported done, over all workers. */
function completions(): Map<string, number> {
  const counts = new Map<string, number>();
  for (const w of workers) for (const line of w.lines) {
    const m = /^diffuse worker: done (\S+)$/.exec(line);
    if (m) counts.set(m[1], (counts.get(m[1]) ?? 0) + 1);
  }
  return counts;
}

before(async () => {
  if (skip) return;
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'serve-redis-'));
  results = path.join(dir, 'results');
  redisPort = await freePort();
  redisUrl = `redis://127.0.0.1:${redisPort}`;
  await startRedis();
  service = await startService({ host: '127.0.0.1', port: 0, results, redis: redisUrl, queue: QUEUE, workers: 0, threads: 1, rate: 100_000 });
  base = `http://127.0.0.1:${service.port}`;
});

after(async () => {
  for (const w of workers) w.child.kill('SIGKILL');
  await service?.close(false);
  await stopRedis();
});

test('200 jobs over two worker processes: every image present, each job completed exactly once', { skip }, async () => {
  const [a, b] = [startWorker(), startWorker()];
  await Promise.all([ready(a), ready(b)]);
  const ids: string[] = [];
  for (let i = 0; i < 200; i++) {
    const response = await post({ model: 'reference', prompt: `a red circle number ${i}`, steps: 2, seed: i });
    assert.equal(response.status, 202);
    ids.push(((await response.json()) as JobView).id);
  }
  assert.equal(new Set(ids).size, 200);
  for (const id of ids) assert.equal((await finished(id, 300)).state, 'done');
  const files = fs.readdirSync(results);
  for (const id of ids) assert.ok(files.includes(`${id}-0.png`), `image of ${id}`);
  assert.equal(files.filter((f) => !f.endsWith('.png')).length, 0, 'no half-written files');
  const done = await loggedDone(ids);
  for (const id of ids) assert.equal(done.get(id), 1, `${id} completed once`);
  for (const w of [a, b]) assert.ok(w.lines.filter((l) => l.includes(' done ')).length >= 20, 'both workers took a share');
  const metrics = await (await fetch(`${base}/metrics`)).text();
  assert.match(metrics, /^diffusion_jobs_done_total 200$/m);
  assert.match(metrics, /^diffusion_queue_depth 0$/m);
});

test('a worker killed with SIGKILL mid-job: the job goes to the other worker and completes once', { skip }, async () => {
  const { id } = await (await post({ model: 'reference', prompt: 'a blue square', steps: 100, width: 128, height: 128, seed: 3 })).json() as JobView;
  await until('the job to run', async () => (await job(id)).progress.step >= 1);
  const victim = await until('a worker to log taking it', () => workers.find((w) => w.lines.includes(`diffuse worker: took ${id} (attempt 1)`)));
  const other = workers.find((w) => w !== victim)!;
  victim.child.kill('SIGKILL');
  const j = await finished(id);
  assert.equal(j.state, 'done', j.error);
  assert.equal(j.attempts, 2, 'taken over after its worker died');
  assert.equal((await loggedDone([id])).get(id), 1);
  assert.ok(other.lines.includes(`diffuse worker: done ${id}`));
  assert.ok(fs.existsSync(path.join(results, `${id}-0.png`)));
});

test('cancelling: a queued job at once, a running one at its next step; idempotency keys return the same job', { skip }, async () => {
  const first = await (await post({ model: 'reference', prompt: 'long', steps: 200, width: 128, height: 128, seed: 1 }, { 'Idempotency-Key': `k-${QUEUE}` })).json() as JobView;
  const again = await (await post({ model: 'reference', prompt: 'long', steps: 200, width: 128, height: 128, seed: 1 }, { 'Idempotency-Key': `k-${QUEUE}` })).json() as JobView;
  assert.equal(again.id, first.id);
  assert.equal((await post({ model: 'reference', prompt: 'other', seed: 1 }, { 'Idempotency-Key': `k-${QUEUE}` })).status, 422);
  const second = await (await post({ model: 'reference', prompt: 'waiting', steps: 2, seed: 2 })).json() as JobView;
  await until('the first job to run', async () => (await job(first.id)).progress.step >= 1);
  assert.equal((await job(second.id)).queue_position, 1);

  const events = fetch(`${base}/v1/jobs/${second.id}/events`).then((r) => r.text());
  assert.equal((await fetch(`${base}/v1/jobs/${second.id}`, { method: 'DELETE' })).status, 202);
  assert.equal((await job(second.id)).state, 'cancelled');
  assert.match(await events, /event: cancelled/);
  assert.equal((await fetch(`${base}/v1/jobs/${first.id}`, { method: 'DELETE' })).status, 202);
  const j = await finished(first.id);
  assert.equal(j.state, 'cancelled');
  assert.ok(j.progress.step < 200);
  assert.equal((await fetch(`${base}/v1/jobs/${first.id}`, { method: 'DELETE' })).status, 409);
  assert.match(await (await fetch(`${base}/metrics`)).text(), /^diffusion_jobs_cancelled_total 2$/m);
});

test('Redis restarted under load: every job still completes exactly once', { skip }, async () => {
  const c = startWorker();
  await ready(c);
  const ids: string[] = [];
  for (let i = 0; i < 40; i++) ids.push(((await (await post({ model: 'reference', prompt: `restart ${i}`, steps: 4, seed: i })).json()) as JobView).id);
  await until('some jobs to finish', () => completions().size >= 210);
  await stopRedis();
  await sleep(500);
  await startRedis();
  for (const id of ids) assert.equal((await finished(id, 300)).state, 'done');
  // A worker logs "done" when Redis answers its completion; if Redis went down after recording one
  // but before answering, the job is done (the server says so) and that worker never logs it. So
  // here every job must be done with its image and logged done at most once, never twice.
  const done = await loggedDone(ids, 20).catch(() => completions());
  const unlogged = ids.filter((id) => !done.has(id));
  assert.ok(unlogged.length <= 2, `${unlogged.length} jobs never logged done: ${unlogged.join(', ')}`);
  for (const id of ids) assert.ok((done.get(id) ?? 0) <= 1, `${id} completed ${done.get(id)} times`);
  for (const id of ids) assert.ok(fs.existsSync(path.join(results, `${id}-0.png`)));
});

test('a worker drains on SIGTERM: its running job finishes before it exits', { skip }, async () => {
  const live = workers.filter((w) => w.child.exitCode === null && w.child.signalCode === null);
  const { id } = await (await post({ model: 'reference', prompt: 'drain', steps: 30, width: 128, height: 128, seed: 9 })).json() as JobView;
  await until('the job to run', async () => (await job(id)).progress.step >= 1);
  const runner = await until('a worker to log taking it', () => live.find((w) => w.lines.some((l) => l.includes(`took ${id}`))));
  runner.child.kill('SIGTERM');
  assert.equal(await runner.exited, 0);
  assert.ok(runner.lines.includes(`diffuse worker: done ${id}`), runner.lines.join('\n'));
  assert.equal((await job(id)).state, 'done');
});

test('a bad or unreachable --redis is one clear error, exit 2, before anything starts', { skip }, async () => {
  const closed = await freePort();
  for (const [args, message] of [
    [['worker', '--redis', 'localhost:6379'], /--redis: not a Redis URL; expected redis:\/\/… or rediss:\/\/…/],
    [['worker', '--redis', 'not a url'], /--redis: not a URL/],
    [['worker', '--redis', `redis://127.0.0.1:${closed}`], /--redis: cannot reach redis:\/\/127\.0\.0\.1:\d+ \(.*\); expected a running Redis server/],
    [['serve', '--port', '0', '--redis', `redis://127.0.0.1:${closed}`], /--redis: cannot reach/],
    [['serve', '--port', '0', '--workers', '0'], /--workers: no worker would run the jobs; expected at least 1 without --redis/],
    [['worker', '--redis', redisUrl, '--queue', 'a:b'], /--queue expects a name of letters/],
    [['worker'], /--redis <url>' not specified/],
  ] as const) {
    const cwd = fs.mkdtempSync(path.join(dir, 'refused-'));
    const run = spawnSync(process.execPath, [CLI, ...args], { cwd, encoding: 'utf8', timeout: 60_000 });
    assert.equal(run.status, 2, `${args.join(' ')}: ${run.stderr}`);
    assert.match(run.stderr, message);
    assert.doesNotMatch(run.stderr, /\n\s+at /);
    assert.equal(run.stderr.trim().split('\n').length, 1, run.stderr);
    assert.deepEqual(fs.readdirSync(cwd), [], `${args.join(' ')} left nothing behind`);
  }
});
