/**
 * `diffuse worker --redis URL`: takes jobs from the Redis queue (src/serve/redis-queue.ts) and
 * generates them in generation threads of this process, one job at a time each, writing images
 * into the result folder the server reads (a shared folder when they run on different machines).
 * Models are named by the job and resolved in this machine's own --model-dir.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { UnrecoverableError, Worker, type Job } from 'bullmq';
import { InputError } from '../errors.ts';
import { commandSessionCache } from '../runtime/session-cache.ts';
import { GenerationThread, JobFailure } from './generation-thread.ts';
import { describeModels, resolveModel, RequestError, type ImageJob } from './job.ts';
import { CANCELLED, QUEUE_NAME, checkRedisUrl, connectRedis, duplicateConnection, extraKeys, onceEach, type JobProgress } from './redis-queue.ts';
import { runUntilSignalled } from './shutdown.ts';
import { checkThreadBudget } from './threads.ts';
import type { Precision } from '../graph/quantize.ts';
import type { JobOutcome, MacEstimate } from './worker.ts';
import { makeFolder } from '../util/files.ts';
import { expireResults } from './results.ts';

export interface RedisWorkerOptions {
  redis: string;
  /** BullMQ key prefix: one Redis can hold several services' queues. */
  queue: string;
  modelDir?: string;
  results: string;
  workers: number;
  threads: number;
  precision?: Precision;
  /** A job whose worker has not renewed its lock for this long goes to another worker. */
  stallSeconds: number;
  log(line: string): void;
}

export interface RedisWorkers {
  /** Stops taking jobs; `drain`: lets running jobs finish (else cancels them). */
  close(drain: boolean): Promise<void>;
}

export async function startRedisWorkers(o: RedisWorkerOptions): Promise<RedisWorkers> {
  if (o.modelDir !== undefined && !fs.statSync(o.modelDir, { throwIfNoEntry: false })?.isDirectory()) {
    throw new InputError('--model-dir', 'not a folder', 'a folder of diffusers model folders', o.modelDir);
  }
  checkThreadBudget(o.workers, o.threads, o.log);
  commandSessionCache(); // the workers' cache: a bad DIFFUSE_CACHE_MAX_GB is refused here, not by every job
  const modelDir = o.modelDir && path.resolve(o.modelDir);
  const client = await connectRedis(o.redis);
  // Made once Redis answers: a refused start leaves nothing behind.
  const resultsDir = path.resolve(o.results);
  try {
    makeFolder(resultsDir);
  } catch (err) {
    client.disconnect();
    throw err;
  }
  const stopExpiry = await expireResults(resultsDir);
  const report = onceEach((m) => o.log(`redis: ${m}`));
  client.on('error', report);
  const keys = extraKeys(o.queue);

  const workers: Worker<ImageJob, JobOutcome>[] = [];
  const threads: GenerationThread[] = [];
  const connections = [client];
  for (let i = 0; i < o.workers; i++) {
    const thread = new GenerationThread({ resultsDir, threads: o.threads, precision: o.precision, memoryShare: 1 / o.workers });
    threads.push(thread);
    // BullMQ leaves a connection it was given open when it closes: closed below.
    const connection = duplicateConnection(client);
    connections.push(connection);
    const worker = new Worker<ImageJob, JobOutcome>(QUEUE_NAME, (job, _token, signal) => processJob(job, thread, signal), {
      connection, prefix: o.queue, concurrency: 1,
      lockDuration: o.stallSeconds * 1000, stalledInterval: o.stallSeconds * 1000, maxStalledCount: 2,
    });
    worker.on('error', report);
    worker.on('active', (job) => o.log(`took ${job.id} (attempt ${job.attemptsStarted})`));
    worker.on('completed', (job) => {
      o.log(`done ${job.id}`);
      void client.hincrby(keys.stats, 'done', 1);
    });
    worker.on('failed', (job, err) => {
      // Counted once, when it will not run again.
      if (!job?.finishedOn) return o.log(`attempt failed ${job?.id}: ${err.message} (will retry)`);
      o.log(`${err.message === CANCELLED ? 'cancelled' : 'failed'} ${job.id}${err.message === CANCELLED ? '' : `: ${err.message}`}`);
      void client.hincrby(keys.stats, err.message === CANCELLED ? 'cancelled' : 'failed', 1);
    });
    workers.push(worker);
  }

  // A cancel reaches every worker process; the one running the job stops it before its next segment.
  const subscriber = duplicateConnection(client);
  connections.push(subscriber);
  await subscriber.subscribe(keys.cancelChannel);
  subscriber.on('message', (_channel, id: string) => {
    for (const worker of workers) worker.cancelJob(id, CANCELLED);
  });
  await Promise.all(workers.map((w) => w.waitUntilReady()));

  async function processJob(job: Job<ImageJob, JobOutcome>, thread: GenerationThread, signal?: AbortSignal): Promise<JobOutcome> {
    if (await client.exists(keys.cancelMark(job.id!))) throw new UnrecoverableError(CANCELLED);
    let folder: string;
    try {
      folder = resolveModel(job.data.model, modelDir);
    } catch (err) {
      if (err instanceof RequestError) throw new UnrecoverableError(`this worker cannot run it: ${err.message}`);
      throw err;
    }
    let estimate: MacEstimate | undefined;
    let stepStart = performance.now();
    let stepSeconds = 0;
    let steps = 0;
    const progress = (p: JobProgress) => job.updateProgress(p).catch(() => {});
    try {
      const outcome = await thread.run(job.id!, { ...job.data, folder }, {
        onEstimate: (e) => {
          estimate = e;
          void progress({ step: 0, steps: 0, estimate });
        },
        onStep: (step, total) => {
          stepSeconds += (performance.now() - stepStart) / 1000;
          steps++;
          stepStart = performance.now();
          void progress({ step, steps: total, estimate });
        },
      }, signal);
      const now = Date.now();
      await client.multi()
        .hincrbyfloat(keys.stats, 'stepSeconds', stepSeconds).hincrby(keys.stats, 'steps', steps)
        .zadd(keys.images, ...outcome.images.flatMap((name) => [now, name]))
        .exec();
      return outcome;
    } catch (err) {
      // Cancels and what the model refuses are final; anything else (a thread that died) is retried.
      if (err instanceof JobFailure && (err.cancelled || err.input)) throw new UnrecoverableError(err.cancelled ? CANCELLED : err.message);
      throw err;
    }
  }

  return {
    close: async (drain) => {
      stopExpiry();
      if (!drain) for (const worker of workers) worker.cancelAllJobs(CANCELLED);
      await Promise.all(workers.map((w) => w.close()));
      await Promise.all(threads.map((t) => t.terminate()));
      for (const connection of connections) connection.disconnect();
    },
  };
}

/** `diffuse worker`: works until a signal; resolves once it has stopped. */
export async function work(o: Omit<RedisWorkerOptions, 'log'>): Promise<void> {
  const log = (line: string) => process.stderr.write(`diffuse worker: ${line}\n`);
  const workers = await startRedisWorkers({ ...o, log });
  log(`taking jobs from queue "${o.queue}" at ${checkRedisUrl(o.redis)} (${o.workers} worker${o.workers === 1 ? '' : 's'}; ${describeModels(o.modelDir)}; images in ${path.resolve(o.results)})`);
  await runUntilSignalled('diffuse worker', workers.close);
}
