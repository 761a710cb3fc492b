/**
 * `diffuse serve`: the HTTP API (src/serve/app.ts) over a job queue: the embedded one
 * (src/serve/embedded-queue.ts) on one machine, or with `--redis` the Redis one
 * (src/serve/redis-queue.ts), whose jobs `diffuse worker` processes take on any machine (and this
 * process too, with `--workers`). Ctrl-C (or SIGTERM) stops taking jobs, lets the running ones
 * finish and exits; a second one cancels them.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { isIP } from 'node:net';
import { serve as listen } from '@hono/node-server';
import { InputError } from '../errors.ts';
import { commandSessionCache } from '../runtime/session-cache.ts';
import { createApp } from './app.ts';
import { describeModels } from './job.ts';
import { EmbeddedQueue } from './embedded-queue.ts';
import { DEFAULT_QUEUE, DEFAULT_STALL_SECONDS, type JobQueue } from './queue.ts';
import { checkRedisUrl, RedisQueue } from './redis-queue.ts';
import { startRedisWorkers, type RedisWorkers } from './redis-worker.ts';
import { runUntilSignalled } from './shutdown.ts';
import { checkThreadBudget } from './threads.ts';
import type { Precision } from '../graph/quantize.ts';
import { makeFolder } from '../util/files.ts';
import { expireResults } from './results.ts';

export interface ServeOptions {
  host: string;
  port: number;
  modelDir?: string;
  results: string;
  /** Generation threads in this process (default: 1 embedded, 0 with --redis). */
  workers?: number;
  threads: number;
  /** The denoisers' arithmetic in this process's workers (requests cannot set it). */
  precision?: Precision;
  /** Redis URL: jobs go to a BullMQ queue that `diffuse worker` processes take. */
  redis?: string;
  /** The queue's key prefix in Redis (default "diffuse"). */
  queue?: string;
  /** Seconds without a lock renewal before a job goes to another worker (default 30). */
  stallSeconds?: number;
  token?: string;
  rate: number;
}

const MAX_BODY_BYTES = 64 * 1024;

/** Generation threads in this process: 1 by default with the embedded queue, 0 with Redis (workers elsewhere). */
function workersOf(o: ServeOptions): number {
  return o.workers ?? (o.redis === undefined ? 1 : 0);
}

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || (isIP(host) === 4 && host.startsWith('127.'));
}

export interface Service {
  port: number;
  queue: JobQueue;
  /** Stops taking requests; `drain`: lets running jobs finish (else cancels them). */
  close(drain: boolean): Promise<void>;
}

/** Checks the options and starts the service; throws InputError naming the flag for bad ones. */
export async function startService(o: ServeOptions): Promise<Service> {
  const token = o.token ?? (process.env.DIFFUSE_TOKEN || undefined);
  if (token !== undefined && token.length < 16) throw new InputError('--token', 'too short', 'at least 16 characters', `${token.length}`);
  if (!isLoopback(o.host) && token === undefined) {
    throw new InputError('--token', `required when listening beyond loopback (--host ${o.host})`, 'a bearer token (--token or DIFFUSE_TOKEN)');
  }
  if (o.redis === undefined && o.workers === 0) throw new InputError('--workers', 'no worker would run the jobs', 'at least 1 without --redis', '0');
  const log = (line: string) => process.stderr.write(`diffuse serve: ${line}\n`);
  const workers = workersOf(o);
  const queueName = o.queue ?? DEFAULT_QUEUE;
  checkThreadBudget(workers, o.threads, log);
  commandSessionCache(); // the workers' cache: a bad DIFFUSE_CACHE_MAX_GB is refused here, not by every job
  if (o.modelDir !== undefined) {
    if (!fs.statSync(o.modelDir, { throwIfNoEntry: false })?.isDirectory()) throw new InputError('--model-dir', 'not a folder', 'a folder of diffusers model folders', o.modelDir);
  }
  const resultsDir = path.resolve(o.results);

  let queue: JobQueue;
  let local: RedisWorkers | undefined;
  if (o.redis === undefined) {
    queue = new EmbeddedQueue(workers, { resultsDir, threads: o.threads, precision: o.precision, memoryShare: 1 / workers });
  } else {
    queue = await RedisQueue.open(o.redis, queueName, log);
    if (workers) {
      local = await startRedisWorkers({
        redis: o.redis, queue: queueName, modelDir: o.modelDir, results: resultsDir, workers, threads: o.threads, precision: o.precision,
        stallSeconds: o.stallSeconds ?? DEFAULT_STALL_SECONDS,
        log: () => {},
      }).catch(async (err) => {
        await queue.close(false);
        throw err;
      });
    }
  }
  const closeQueue = async (drain: boolean) => {
    await local?.close(drain);
    await queue.close(drain);
  };
  // The results folder is made once everything else has started: a refused start leaves nothing behind.
  const made = !fs.existsSync(resultsDir);
  const app = createApp({ queue, resultsDir, modelDir: o.modelDir && path.resolve(o.modelDir), token, ratePerMinute: o.rate, maxBodyBytes: MAX_BODY_BYTES });
  const server = listen({ fetch: app.fetch, hostname: o.host, port: o.port });
  await new Promise<void>((resolve, reject) => {
    server.once('listening', resolve);
    server.once('error', (err: NodeJS.ErrnoException) => reject(new InputError('--port', `cannot listen on ${o.host}:${o.port} (${err.code ?? err.message})`, 'a free port')));
  }).then(() => makeFolder(resultsDir)).catch(async (err) => {
    server.close();
    await closeQueue(false);
    if (made) fs.rmSync(resultsDir, { recursive: true, force: true });
    throw err;
  });
  // The embedded queue's workers write images here (Redis workers expire their own).
  const stopExpiry = o.redis === undefined ? await expireResults(resultsDir) : undefined;
  const address = server.address();
  return {
    port: typeof address === 'object' && address ? address.port : o.port,
    queue,
    close: async (drain) => {
      server.close();
      stopExpiry?.();
      await closeQueue(drain);
    },
  };
}

/** `diffuse serve`: starts the service and serves until a signal; resolves once it has stopped. */
export async function serve(o: ServeOptions): Promise<void> {
  const service = await startService(o);
  const workers = workersOf(o);
  const queue = o.redis === undefined ? 'embedded queue' : `queue "${o.queue ?? DEFAULT_QUEUE}" at ${checkRedisUrl(o.redis)}`;
  process.stderr.write(`diffuse serve: http://${o.host.includes(':') ? `[${o.host}]` : o.host}:${service.port}/ ` +
    `(${queue}; ${workers} worker${workers === 1 ? '' : 's'} here; ${describeModels(o.modelDir)}; images in ${path.resolve(o.results)}; API at /openapi.json)\n`);
  await runUntilSignalled('diffuse serve', service.close);
}
