/**
 * The embedded job queue (the default): jobs in memory, first in first out, run by a pool of
 * generation threads of this process, one job at a time each. Nothing outlives the process.
 */
import { EventEmitter } from 'node:events';
import { randomUUID } from 'node:crypto';
import { GenerationThread } from './generation-thread.ts';
import type { ImageJob } from './job.ts';
import { FINISHED, KEEP_FINISHED_SECONDS, MAX_WAITING, keyReused, queueFull, type Idempotency, type JobEvent, type JobQueue, type JobRecord, type QueueStats } from './queue.ts';
import type { WorkerOptions } from './worker.ts';

interface PoolWorker {
  thread: GenerationThread;
  abort?: AbortController;
}

export class EmbeddedQueue extends EventEmitter implements JobQueue {
  private readonly records = new Map<string, JobRecord>();
  private readonly byKey = new Map<string, { id: string; body: string }>();
  private forgotten = Date.now();
  private readonly waiting: string[] = [];
  private readonly workers: PoolWorker[] = [];
  private readonly counts = { done: 0, failed: 0, cancelled: 0, stepSeconds: 0, steps: 0 };
  private readonly finishedImages: number[] = [];
  private closing = false;

  constructor(workers: number, options: WorkerOptions) {
    super();
    // One listener per open event stream.
    this.setMaxListeners(0);
    for (let i = 0; i < workers; i++) this.workers.push({ thread: new GenerationThread(options) });
  }

  async submit(job: ImageJob, idempotency?: Idempotency): Promise<{ record: JobRecord; created: boolean }> {
    this.forgetOld();
    const existing = idempotency && this.byKey.get(idempotency.key);
    if (existing) {
      if (existing.body !== idempotency.body) throw keyReused();
      return { record: this.records.get(existing.id)!, created: false };
    }
    if (this.waiting.length >= MAX_WAITING) throw queueFull();
    const record: JobRecord = { id: randomUUID(), state: 'queued', job, createdAt: Date.now(), progress: { step: 0, steps: 0 }, attempts: 0 };
    this.records.set(record.id, record);
    if (idempotency) this.byKey.set(idempotency.key, { id: record.id, body: idempotency.body });
    this.waiting.push(record.id);
    this.emitEvent(record, 'queued');
    this.pump();
    return { record, created: true };
  }

  async get(id: string): Promise<JobRecord | undefined> {
    return this.records.get(id);
  }

  /** Jobs finished longer ago than KEEP_FINISHED_SECONDS, and their keys, are forgotten (looked for once a minute), as Redis expires them. */
  private forgetOld(): void {
    const now = Date.now();
    if (now - this.forgotten < 60_000) return;
    this.forgotten = now;
    const before = now - KEEP_FINISHED_SECONDS * 1000;
    for (const [id, r] of this.records) if (r.finishedAt !== undefined && r.finishedAt < before) this.records.delete(id);
    for (const [key, { id }] of this.byKey) if (!this.records.has(id)) this.byKey.delete(key);
  }

  async position(id: string): Promise<number> {
    return this.waiting.indexOf(id) + 1;
  }

  async cancel(id: string): Promise<boolean> {
    return this.cancelNow(id);
  }

  private cancelNow(id: string): boolean {
    const record = this.records.get(id);
    if (!record || FINISHED.has(record.state)) return false;
    if (record.state === 'queued') {
      this.waiting.splice(this.waiting.indexOf(id), 1);
      this.finish(record, 'cancelled', {});
      return true;
    }
    this.workers.find((w) => w.thread.busy === id)?.abort?.abort();
    return true;
  }

  async stats(): Promise<QueueStats> {
    const cutoff = Date.now() - 60_000;
    while (this.finishedImages.length && this.finishedImages[0] < cutoff) this.finishedImages.shift();
    const running = this.workers.filter((w) => w.thread.busy).length;
    return { queued: this.waiting.length, running, ...this.counts, imagesLastMinute: this.finishedImages.length };
  }

  async close(drain: boolean): Promise<void> {
    this.closing = true;
    for (const id of [...this.waiting]) this.cancelNow(id);
    const running = this.workers.map((w) => w.thread.busy).filter((id): id is string => id !== undefined);
    if (!drain) for (const id of running) this.cancelNow(id);
    await Promise.all(running.map((id) => new Promise<void>((resolve) => {
      const check = (e: JobEvent) => {
        if (e.id === id && FINISHED.has(e.record.state)) {
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
      if (worker.thread.busy || this.waiting.length === 0) continue;
      this.start(worker, this.records.get(this.waiting.shift()!)!);
    }
  }

  private start(worker: PoolWorker, record: JobRecord): void {
    record.state = 'running';
    record.startedAt = Date.now();
    record.attempts++;
    this.emitEvent(record, 'started');
    let stepStart = performance.now();
    worker.abort = new AbortController();
    worker.thread.run(record.id, record.job, {
      onEstimate: (estimate) => (record.estimate = estimate),
      onStep: (step, steps) => {
        record.progress = { step, steps };
        this.counts.stepSeconds += (performance.now() - stepStart) / 1000;
        this.counts.steps++;
        stepStart = performance.now();
        this.emitEvent(record, 'step');
      },
    }, worker.abort.signal).then(
      (outcome) => this.finish(record, 'done', { outcome }),
      (err) => this.finish(record, err.cancelled ? 'cancelled' : 'failed', { error: err.message }),
    ).finally(() => this.pump());
  }

  private finish(record: JobRecord, state: 'done' | 'failed' | 'cancelled', detail: Pick<JobRecord, 'outcome' | 'error'>): void {
    record.state = state;
    record.finishedAt = Date.now();
    Object.assign(record, detail);
    this.counts[state]++;
    if (detail.outcome) for (const _ of detail.outcome.images) this.finishedImages.push(record.finishedAt);
    this.emitEvent(record, state);
  }

  private emitEvent(record: JobRecord, type: JobEvent['type']): void {
    this.emit('job', { id: record.id, type, record } satisfies JobEvent);
  }
}
