/**
 * Load figures for `diffuse serve` (docs/BENCHMARKS.md): the embedded queue and, given a Redis, the
 * Redis queue, in the same run, with the same number of generation threads in the server's process:
 * - idle: jobs one after another, end-to-end (POST to the `done` event) against the generation
 *   time the worker measured, so the difference is what the queue and HTTP cost per job;
 * - steady load: jobs posted at a fixed rate (open loop), latency percentiles and throughput;
 * - the API alone: autocannon against GET /v1/jobs/{id}.
 *
 *   npm run serve-load -- [--redis redis://127.0.0.1:6379] [--workers 2] [--jobs 60] [--rate 3] [--steps 4]
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import autocannon from 'autocannon';
import { startService, type Service } from '../src/serve/serve.ts';
import { connectRedis } from '../src/serve/redis-queue.ts';
import { orRefuse, toolFlags } from './flags.ts';

const args = toolFlags('serve-load', {
  redis: { kind: 'text' },
  workers: { kind: 'integer', min: 1, max: 64, default: 2 },
  jobs: { kind: 'integer', min: 1, max: 100_000, default: 60 },
  rate: { kind: 'number', min: 0.001, max: 1000, default: 3 },
  steps: { kind: 'integer', min: 1, max: 1000, default: 4 },
  idle: { kind: 'integer', min: 1, max: 100_000, default: 10 },
});
const { workers, steps } = args;

interface Timed { e2e: number; generation: number }

/** Posts one job and waits for its `done` event; seconds from POST to done, and the worker's generation time. */
async function runJob(base: string, seed: number): Promise<Timed> {
  const start = performance.now();
  const posted = await fetch(`${base}/v1/images`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'reference', prompt: `a red circle at the top left ${seed}`, steps, seed }),
  });
  const { id } = await posted.json() as { id: string };
  const events = await (await fetch(`${base}/v1/jobs/${id}/events`)).text();
  const e2e = (performance.now() - start) / 1000;
  const last = [...events.matchAll(/^event: (\w+)\ndata: (.*)$/gm)].at(-1)!;
  if (last[1] !== 'done') throw new Error(`job ${id}: ${last[1]} ${last[2]}`);
  const timings = JSON.parse(last[2]).timings as Record<string, number>;
  return { e2e, generation: (timings.textEncoding ?? 0) + (timings.denoising ?? 0) + (timings.decoding ?? 0) };
}

function percentile(xs: number[], p: number): number {
  const sorted = [...xs].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

async function measure(name: string, service: Service) {
  const base = `http://127.0.0.1:${service.port}`;
  // Every worker loads the model once.
  await Promise.all(Array.from({ length: workers }, (_, i) => runJob(base, 1000 + i)));

  const idle: Timed[] = [];
  for (let i = 0; i < args.idle; i++) idle.push(await runJob(base, 2000 + i));

  const jobs = args.jobs;
  const interval = 1000 / args.rate;
  const start = performance.now();
  const loaded = await Promise.all(Array.from({ length: jobs }, (_, i) => new Promise<Timed>((resolve, reject) => {
    setTimeout(() => runJob(base, 3000 + i).then(resolve, reject), i * interval);
  })));
  const wall = (performance.now() - start) / 1000;

  const { id } = await (await fetch(`${base}/v1/images`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'reference', prompt: 'x', steps: 1 }),
  })).json() as { id: string };
  const api = await autocannon({ url: `${base}/v1/jobs/${id}`, connections: 10, duration: 5 });

  const e2e = loaded.map((t) => t.e2e);
  return {
    name,
    idleE2e: mean(idle.map((t) => t.e2e)), idleGeneration: mean(idle.map((t) => t.generation)),
    p50: percentile(e2e, 50), p95: percentile(e2e, 95), p99: percentile(e2e, 99), throughput: (jobs / wall) * 60,
    apiRps: api.requests.average, apiP50: api.latency.p50, apiP99: api.latency.p99,
  };
}

// A Redis that cannot be reached is said before the embedded queue's minutes of load, not after.
if (args.redis) (await orRefuse('serve-load', connectRedis(args.redis))).disconnect();
const results = fs.mkdtempSync(path.join(os.tmpdir(), 'serve-load-'));
const rows = [];
const common = { host: '127.0.0.1', port: 0, results, workers, threads: 1, rate: 1_000_000 };
const embedded = await startService(common);
rows.push(await measure('embedded', embedded));
await embedded.close(false);
if (args.redis) {
  const redis = await startService({ ...common, redis: args.redis, queue: `serve-load-${process.pid}` });
  rows.push(await measure('redis', redis));
  await redis.close(false);
}
fs.rmSync(results, { recursive: true, force: true });

const f = (x: number, digits = 3) => x.toFixed(digits);
console.log(`${workers} worker threads, reference model, ${steps} steps at 64², ${args.jobs} jobs at ${args.rate}/s; ${os.cpus().length} CPUs (${os.cpus()[0].model})`);
console.log('| queue | idle: POST→done s | idle: generation s | queue + HTTP per job ms | load p50 s | p95 s | p99 s | jobs/min | GET /v1/jobs/{id} req/s | p50 ms | p99 ms |');
console.log('|---|---|---|---|---|---|---|---|---|---|---|');
for (const r of rows) {
  console.log(`| ${r.name} | ${f(r.idleE2e)} | ${f(r.idleGeneration)} | ${f((r.idleE2e - r.idleGeneration) * 1000, 0)} | ${f(r.p50, 2)} | ${f(r.p95, 2)} | ${f(r.p99, 2)} | ${f(r.throughput, 1)} | ${f(r.apiRps, 0)} | ${r.apiP50} | ${r.apiP99} |`);
}
