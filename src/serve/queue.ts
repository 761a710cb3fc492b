/**
 * What the HTTP API (src/serve/app.ts) needs from a job queue, whichever holds the jobs: the
 * embedded one (src/serve/embedded-queue.ts: in memory, worker threads of this process) or Redis
 * (src/serve/redis-queue.ts: BullMQ, workers on any machine). Every change of a job is a `job`
 * event, which the server streams to clients (Server-Sent Events).
 */
import { RequestError, type ImageJob } from './job.ts';
import type { JobOutcome, MacEstimate } from './worker.ts';

export type JobState = 'queued' | 'running' | 'done' | 'failed' | 'cancelled';

export interface JobRecord {
  id: string;
  state: JobState;
  job: ImageJob;
  createdAt: number;
  startedAt?: number;
  finishedAt?: number;
  progress: { step: number; steps: number };
  /** Runs started for this job (more than one after a retry or a worker that died). */
  attempts: number;
  estimate?: MacEstimate;
  outcome?: JobOutcome;
  error?: string;
}

export interface JobEvent {
  id: string;
  type: 'queued' | 'started' | 'step' | 'done' | 'failed' | 'cancelled';
  record: JobRecord;
}

export interface QueueStats {
  queued: number;
  running: number;
  done: number;
  failed: number;
  cancelled: number;
  /** Seconds spent in denoising steps and their count (for a rate). */
  stepSeconds: number;
  steps: number;
  imagesLastMinute: number;
}

export type JobListener = (e: JobEvent) => void;

/** A request's Idempotency-Key and a digest of its body: the same key with another body is refused, not answered with the first job. */
export interface Idempotency {
  key: string;
  body: string;
}

export interface JobQueue {
  /**
   * Queues a job; with an idempotency key already seen for the same body, returns that job instead.
   * Throws RequestError: the key used for another body (422), or MAX_WAITING jobs waiting (503).
   */
  submit(job: ImageJob, idempotency?: Idempotency): Promise<{ record: JobRecord; created: boolean }>;
  get(id: string): Promise<JobRecord | undefined>;
  /** 1-based place among the waiting jobs; 0 once it runs. */
  position(id: string): Promise<number>;
  /** Cancels a queued job at once, a running one before its next segment; false for a finished job. */
  cancel(id: string): Promise<boolean>;
  stats(): Promise<QueueStats>;
  /** Stops taking jobs; `drain`: lets running jobs finish (else cancels them). */
  close(drain: boolean): Promise<void>;
  on(event: 'job', listener: JobListener): unknown;
  off(event: 'job', listener: JobListener): unknown;
}

export const FINISHED: ReadonlySet<JobState> = new Set(['done', 'failed', 'cancelled']);

/** A finished job (and its idempotency key) is kept this long, then forgotten, in both queues. */
export const KEEP_FINISHED_SECONDS = 86_400;

/** Jobs that may wait at once: beyond, a request is refused (503) until some start, instead of memory growing without bound. */
export const MAX_WAITING = 1000;

export function queueFull(): RequestError {
  return new RequestError(503, 'queue', `full (${MAX_WAITING} jobs waiting)`, 'a retry once some have started');
}

export function keyReused(): RequestError {
  return new RequestError(422, 'Idempotency-Key', 'already used for a different request', 'a new key for a new request');
}

/** Redis mode: the default key prefix, and seconds without a lock renewal before a job goes to another worker. */
export const DEFAULT_QUEUE = 'diffuse';
export const DEFAULT_STALL_SECONDS = 30;
