/**
 * The Redis job queue (`diffuse serve --redis URL`), on BullMQ: the server adds jobs and follows
 * their events; `diffuse worker --redis URL` processes (src/serve/redis-worker.ts), on any number
 * of machines. BullMQ gives each running job a lock its worker keeps renewing: a worker that dies
 * stops renewing, and the job goes back to the queue for another (stalled-job handling); a job
 * whose lock was lost cannot be completed by its old worker, so no job completes twice. Failures
 * other than bad input are retried with backoff.
 *
 * Beside BullMQ's own keys this keeps, under `{prefix}:images:x:`: idempotency keys, cancel marks,
 * the records of cancelled queued jobs, and the counters behind /metrics.
 */
import { EventEmitter } from 'node:events';
import { createHash, randomUUID } from 'node:crypto';
import { Job, Queue, QueueEvents, type JobsOptions } from 'bullmq';
import { Redis } from 'ioredis';
import { InputError } from '../errors.ts';
import type { ImageJob } from './job.ts';
import { FINISHED, KEEP_FINISHED_SECONDS, MAX_WAITING, keyReused, queueFull, type Idempotency, type JobEvent, type JobQueue, type JobRecord, type JobState, type QueueStats } from './queue.ts';
import type { JobOutcome, MacEstimate } from './worker.ts';

export const QUEUE_NAME = 'images';
/** A cancelled job fails with this reason, and is shown as cancelled. */
export const CANCELLED = 'cancelled';

export const JOB_OPTIONS: JobsOptions = {
  attempts: 3,
  backoff: { type: 'exponential', delay: 2000 },
  removeOnComplete: { age: KEEP_FINISHED_SECONDS },
  removeOnFail: { age: KEEP_FINISHED_SECONDS },
};

/** The keys this project keeps beside BullMQ's, for one queue prefix. */
export function extraKeys(prefix: string) {
  const base = `${prefix}:${QUEUE_NAME}:x`;
  return {
    idempotency: (key: string) => `${base}:idempotency:${createHash('sha256').update(key).digest('hex')}`,
    cancelMark: (id: string) => `${base}:cancel:${id}`,
    cancelledRecord: (id: string) => `${base}:cancelled:${id}`,
    /** Pub/sub channel: a job id to stop wherever it runs. */
    cancelChannel: `${base}:cancel`,
    /** Hash: done, failed, cancelled, stepSeconds, steps. */
    stats: `${base}:stats`,
    /** Sorted set of finished images, scored by when. */
    images: `${base}:images`,
  };
}

/** What a running job keeps in BullMQ's progress field. */
export interface JobProgress {
  step: number;
  steps: number;
  estimate?: MacEstimate;
}

/** `redis://` or `rediss://` URL, printable with its password hidden. */
export function checkRedisUrl(url: string): string {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new InputError('--redis', 'not a URL', 'redis://[user:password@]host[:port][/db]', JSON.stringify(url.slice(0, 100)));
  }
  if (parsed.protocol !== 'redis:' && parsed.protocol !== 'rediss:') {
    throw new InputError('--redis', 'not a Redis URL', 'redis://… or rediss://…', JSON.stringify(parsed.protocol));
  }
  if (parsed.password) parsed.password = '***';
  return parsed.toString();
}

/**
 * A connection for BullMQ (which needs commands to wait through reconnects: a Redis restart is
 * ridden out, not failed), after one quick probe so a wrong URL is one clear error at startup.
 */
export async function connectRedis(url: string): Promise<Redis> {
  const shown = checkRedisUrl(url);
  const probe = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, connectTimeout: 5000 });
  probe.on('error', () => {});
  try {
    await probe.connect();
    await probe.ping();
  } catch (err) {
    throw new InputError('--redis', `cannot reach ${shown} (${err instanceof Error ? err.message : String(err)})`, 'a running Redis server');
  } finally {
    probe.disconnect();
  }
  const client = new Redis(url, { maxRetriesPerRequest: null });
  client.on('error', () => {});
  return client;
}

/** Another connection like `client`, its errors left to `client`'s reporting (ioredis would print each one). */
export function duplicateConnection(client: Redis): Redis {
  const copy = client.duplicate();
  copy.on('error', () => {});
  return copy;
}

/** Reports each distinct connection problem once, not once per reconnect attempt. */
export function onceEach(write: (line: string) => void): (err: Error) => void {
  let last = '';
  return (err) => {
    if (err.message === last) return;
    last = err.message;
    write(err.message);
  };
}

function stateOf(bullState: string, failedReason: string | undefined): JobState {
  if (bullState === 'active') return 'running';
  if (bullState === 'completed') return 'done';
  if (bullState === 'failed') return failedReason === CANCELLED ? 'cancelled' : 'failed';
  return 'queued';
}

function recordOf(job: Job<ImageJob, JobOutcome>, bullState: string): JobRecord {
  const state = stateOf(bullState, job.failedReason);
  const progress = (typeof job.progress === 'object' ? job.progress : {}) as Partial<JobProgress>;
  return {
    id: job.id!,
    state,
    job: job.data,
    createdAt: job.timestamp,
    startedAt: job.processedOn ?? undefined,
    finishedAt: FINISHED.has(state) ? job.finishedOn ?? undefined : undefined,
    progress: { step: progress.step ?? 0, steps: progress.steps ?? 0 },
    attempts: job.attemptsStarted ?? 0,
    estimate: progress.estimate,
    outcome: state === 'done' ? job.returnvalue : undefined,
    error: state === 'failed' || state === 'cancelled' ? job.failedReason : undefined,
  };
}

export class RedisQueue extends EventEmitter implements JobQueue {
  private readonly keys: ReturnType<typeof extraKeys>;
  /** Per job, the event being read, so a job's events go out in order. */
  private readonly pending = new Map<string, Promise<void>>();

  private readonly client: Redis;

  /** `connections[0]` is for commands; BullMQ leaves those it was given open when it closes: closed in close(). */
  private constructor(private readonly connections: Redis[], private readonly queue: Queue<ImageJob, JobOutcome>, private readonly events: QueueEvents, prefix: string) {
    super();
    // One listener per open event stream.
    this.setMaxListeners(0);
    this.client = connections[0];
    this.keys = extraKeys(prefix);
    const follow = (type: JobEvent['type']) => ({ jobId }: { jobId: string }) => this.relay(jobId, type);
    events.on('active', follow('started'));
    events.on('progress', follow('step'));
    events.on('completed', follow('done'));
    events.on('failed', follow('failed'));
    // Back in the queue after a retry's backoff or a worker that died.
    events.on('waiting', ({ jobId, prev }) => prev && this.relay(jobId, 'queued'));
    events.on('stalled', follow('queued'));
  }

  static async open(url: string, prefix: string, log: (line: string) => void): Promise<RedisQueue> {
    const client = await connectRedis(url);
    client.on('error', onceEach((m) => log(`redis: ${m}`)));
    const queue = new Queue<ImageJob, JobOutcome>(QUEUE_NAME, { connection: client, prefix });
    const eventsConnection = duplicateConnection(client);
    const events = new QueueEvents(QUEUE_NAME, { connection: eventsConnection, prefix });
    queue.on('error', () => {});
    events.on('error', () => {});
    await events.waitUntilReady();
    return new RedisQueue([client, eventsConnection], queue, events, prefix);
  }

  private relay(id: string, type: JobEvent['type']): void {
    const previous = this.pending.get(id) ?? Promise.resolve();
    const next = previous.then(async () => {
      const record = await this.get(id);
      // Read after the job moved on (a step read once it is done): the later event will say so.
      if (!record || (FINISHED.has(record.state) && type !== 'failed' && type !== 'done')) return;
      // A failure's record says whether it was a cancel.
      this.emit('job', { id, type: type === 'failed' ? record.state as JobEvent['type'] : type, record } satisfies JobEvent);
    }).catch(() => {});
    this.pending.set(id, next);
    void next.then(() => this.pending.get(id) === next && this.pending.delete(id));
  }

  async submit(job: ImageJob, idempotency?: Idempotency): Promise<{ record: JobRecord; created: boolean }> {
    const id = randomUUID();
    if (idempotency !== undefined) {
      const key = this.keys.idempotency(idempotency.key);
      // The job's id, then the body's digest (keys written before digests were kept hold the id alone).
      if (await this.client.set(key, `${id} ${idempotency.body}`, 'EX', KEEP_FINISHED_SECONDS, 'NX') === null) {
        const [existingId, body] = ((await this.client.get(key)) ?? '').split(' ');
        const existing = await this.get(existingId);
        if (existing) {
          if (body !== undefined && body !== idempotency.body) throw keyReused();
          return { record: existing, created: false };
        }
        await this.client.set(key, `${id} ${idempotency.body}`, 'EX', KEEP_FINISHED_SECONDS);
      }
    }
    if (await this.queue.getWaitingCount() >= MAX_WAITING) throw queueFull();
    const added = await this.queue.add('image', job, { ...JOB_OPTIONS, jobId: id });
    const record = recordOf(added, 'waiting');
    this.emit('job', { id, type: 'queued', record } satisfies JobEvent);
    return { record, created: true };
  }

  async get(id: string): Promise<JobRecord | undefined> {
    if (!/^[0-9a-f-]{36}$/.test(id)) return undefined;
    const job = await Job.fromId<ImageJob, JobOutcome>(this.queue, id);
    if (!job) {
      const cancelled = await this.client.get(this.keys.cancelledRecord(id));
      return cancelled ? JSON.parse(cancelled) as JobRecord : undefined;
    }
    return recordOf(job, await job.getState());
  }

  async position(id: string): Promise<number> {
    // BullMQ pushes new jobs on the left of its wait list and workers take from the right.
    const [[, index], [, length]] = await this.client.multi().lpos(this.queue.keys.wait, id).llen(this.queue.keys.wait).exec() as [[null, number | null], [null, number]];
    return index === null ? 0 : length - index;
  }

  async cancel(id: string): Promise<boolean> {
    const job = await Job.fromId<ImageJob, JobOutcome>(this.queue, id);
    if (!job) return false;
    const state = await job.getState();
    if (state === 'completed' || state === 'failed') return false;
    // A worker that takes the job from here on refuses it.
    await this.client.set(this.keys.cancelMark(id), '1', 'EX', KEEP_FINISHED_SECONDS);
    if (state !== 'active') {
      try {
        await job.remove();
        const record: JobRecord = { ...recordOf(job, 'failed'), state: 'cancelled', finishedAt: Date.now(), error: CANCELLED };
        await this.client.multi().set(this.keys.cancelledRecord(id), JSON.stringify(record), 'EX', KEEP_FINISHED_SECONDS).hincrby(this.keys.stats, 'cancelled', 1).exec();
        this.emit('job', { id, type: 'cancelled', record } satisfies JobEvent);
        return true;
      } catch {
        // A worker took it meanwhile (a running job cannot be removed): stop it there.
      }
    }
    await this.client.publish(this.keys.cancelChannel, id);
    return true;
  }

  async stats(): Promise<QueueStats> {
    const counts = await this.queue.getJobCounts('waiting', 'prioritized', 'delayed', 'active');
    const now = Date.now();
    const [[, saved], [, recent]] = await this.client.multi()
      .hgetall(this.keys.stats)
      .zcount(this.keys.images, now - 60_000, '+inf')
      .zremrangebyscore(this.keys.images, '-inf', now - 3_600_000)
      .exec() as [[null, Record<string, string>], [null, number]];
    const n = (name: string) => Number(saved[name] ?? 0);
    return {
      queued: counts.waiting + counts.prioritized + counts.delayed, running: counts.active,
      done: n('done'), failed: n('failed'), cancelled: n('cancelled'), stepSeconds: n('stepSeconds'), steps: n('steps'), imagesLastMinute: recent,
    };
  }

  /** Stops following events; the jobs stay in Redis for the workers. */
  async close(): Promise<void> {
    await this.events.close();
    await this.queue.close();
    for (const connection of this.connections) connection.disconnect();
  }
}
