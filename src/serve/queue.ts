/**
 * The embedded job queue: jobs in memory, first in first out, run by a pool of worker threads
 * (src/serve/worker.ts), one job at a time per worker. Every change of a job is an event, which
 * the server streams to clients (Server-Sent Events) and counts for /metrics.
 */
import { EventEmitter } from 'node:events';
import { randomUUID } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import type { ImageJob } from './job.ts';
import type { FromWorker, JobOutcome, MacEstimate, ToWorker, WorkerOptions } from './worker.ts';

export type JobState = 'queued' | 'running' | 'done' | 'failed' | 'cancelled';

export interface JobRecord {
  id: string;
  state: JobState;
  job: ImageJob;
  createdAt: number;
  startedAt?: number;
  finishedAt?: number;
  progress: { step: number; steps: number };
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
  /** Seconds per denoising step, summed over finished jobs, with their count (for a rate). */
  stepSeconds: number;
  steps: number;
  /** When each of the last images finished (for images per minute). */
  finishedImages: number[];
}

interface PoolWorker {
  thread: Worker;
  busy?: string;
  stepStart?: number;
}

export class EmbeddedQueue extends EventEmitter {
  private readonly records = new Map<string, JobRecord>();
  private readonly byKey = new Map<string, string>();
  private readonly waiting: string[] = [];
  private readonly workers: PoolWorker[] = [];
  private readonly counts = { done: 0, failed: 0, cancelled: 0, stepSeconds: 0, steps: 0 };
  private readonly finishedImages: number[] = [];
  private closing = false;

  constructor(workers: number, options: WorkerOptions) {
    super();
    for (let i = 0; i < workers; i++) this.workers.push(this.startWorker(options));
  }

  private startWorker(options: WorkerOptions): PoolWorker {
    const thread = new Worker(new URL('./worker-entry.js', import.meta.url), { workerData: { diffusionWorker: true, options } });
    const worker: PoolWorker = { thread };
    thread.on('message', (m: FromWorker) => this.onMessage(worker, m));
    // A worker that dies fails its job, saying why, and is replaced ('exit' follows every 'error').
    let reason = 'it exited';
    thread.on('error', (err) => (reason = err.message));
    thread.on('exit', () => {
      if (worker.busy) this.finish(worker, worker.busy, 'failed', { error: `the worker stopped: ${reason}` });
      if (this.closing) return;
      const i = this.workers.indexOf(worker);
      if (i >= 0) this.workers[i] = this.startWorker(options);
      this.pump();
    });
    return worker;
  }

  /** Queues a job; with an idempotency key already seen, returns that job instead. */
  submit(job: ImageJob, idempotencyKey?: string): { record: JobRecord; created: boolean } {
    const existing = idempotencyKey && this.byKey.get(idempotencyKey);
    if (existing) return { record: this.records.get(existing)!, created: false };
    const record: JobRecord = { id: randomUUID(), state: 'queued', job, createdAt: Date.now(), progress: { step: 0, steps: 0 } };
    this.records.set(record.id, record);
    if (idempotencyKey) this.byKey.set(idempotencyKey, record.id);
    this.waiting.push(record.id);
    this.emitEvent(record, 'queued');
    this.pump();
    return { record, created: true };
  }

  get(id: string): JobRecord | undefined {
    return this.records.get(id);
  }

  /** 1-based place among the waiting jobs; 0 once it runs. */
  position(id: string): number {
    return this.waiting.indexOf(id) + 1;
  }

  /** Cancels a queued job at once, a running one at its next step; false for a finished job. */
  cancel(id: string): boolean {
    const record = this.records.get(id);
    if (!record || (record.state !== 'queued' && record.state !== 'running')) return false;
    if (record.state === 'queued') {
      this.waiting.splice(this.waiting.indexOf(id), 1);
      record.state = 'cancelled';
      record.finishedAt = Date.now();
      this.counts.cancelled++;
      this.emitEvent(record, 'cancelled');
      return true;
    }
    this.workers.find((w) => w.busy === id)?.thread.postMessage({ type: 'cancel', id } satisfies ToWorker);
    return true;
  }

  stats(): QueueStats {
    const cutoff = Date.now() - 60_000;
    while (this.finishedImages.length && this.finishedImages[0] < cutoff) this.finishedImages.shift();
    return { queued: this.waiting.length, running: this.workers.filter((w) => w.busy).length, ...this.counts, finishedImages: [...this.finishedImages] };
  }

  /** Stops taking jobs; waits for the running ones (`drain`) or cancels them, then ends the workers. */
  async close(drain = true): Promise<void> {
    this.closing = true;
    for (const id of [...this.waiting]) this.cancel(id);
    const running = this.workers.filter((w) => w.busy).map((w) => w.busy!);
    if (!drain) for (const id of running) this.cancel(id);
    await Promise.all(running.map((id) => new Promise<void>((resolve) => {
      const check = (e: JobEvent) => {
        if (e.id === id && e.type !== 'step' && e.type !== 'started') {
          this.off('job', check);
          resolve();
        }
      };
      this.on('job', check);
    })));
    await Promise.all(this.workers.map((w) => w.thread.terminate()));
  }

  private pump(): void {
    if (this.closing) return;
    for (const worker of this.workers) {
      if (worker.busy || this.waiting.length === 0) continue;
      const id = this.waiting.shift()!;
      const record = this.records.get(id)!;
      worker.busy = id;
      worker.stepStart = performance.now();
      record.state = 'running';
      record.startedAt = Date.now();
      this.emitEvent(record, 'started');
      worker.thread.postMessage({ type: 'run', id, job: record.job } satisfies ToWorker);
    }
  }

  private onMessage(worker: PoolWorker, m: FromWorker): void {
    const record = this.records.get(m.id);
    if (!record) return;
    if (m.type === 'estimate') {
      record.estimate = m.estimate;
      return;
    }
    if (m.type === 'step') {
      record.progress = { step: m.step, steps: m.steps };
      this.counts.stepSeconds += (performance.now() - worker.stepStart!) / 1000;
      this.counts.steps++;
      worker.stepStart = performance.now();
      this.emitEvent(record, 'step');
      return;
    }
    if (m.type === 'done') this.finish(worker, m.id, 'done', { outcome: m.outcome });
    // A model's own paths stay on the server: messages name the model as the request did.
    else this.finish(worker, m.id, m.cancelled ? 'cancelled' : 'failed', { error: m.error.replaceAll(record.job.folder, record.job.model) });
  }

  private finish(worker: PoolWorker, id: string, state: 'done' | 'failed' | 'cancelled', detail: { outcome?: JobOutcome; error?: string }): void {
    const record = this.records.get(id)!;
    worker.busy = undefined;
    record.state = state;
    record.finishedAt = Date.now();
    Object.assign(record, detail);
    this.counts[state]++;
    if (detail.outcome) for (const _ of detail.outcome.images) this.finishedImages.push(record.finishedAt);
    this.emitEvent(record, state);
    this.pump();
  }

  private emitEvent(record: JobRecord, type: JobEvent['type']): void {
    this.emit('job', { id: record.id, type, record } satisfies JobEvent);
  }
}
