/**
 * One generation worker thread (src/serve/worker.ts) seen as a function: `run` sends it a job and
 * resolves with the outcome. ORT's `run` blocks whatever thread it is on, so inference lives here
 * and the caller's event loop (HTTP, Redis lock renewal) stays free. A thread that dies fails its
 * job, saying why, and a fresh one takes the next job.
 */
import { Worker } from 'node:worker_threads';
import type { ImageJob } from './job.ts';
import type { FromWorker, JobOutcome, MacEstimate, ToWorker, WorkerOptions } from './worker.ts';

/** From the sources (through tsx) a worker thread first registers tsx; the built package runs worker.js itself. */
const WORKER_ENTRY = import.meta.url.endsWith('.ts') ? './worker-entry.js' : './worker.js';

export interface RunHooks {
  onEstimate?(estimate: MacEstimate): void;
  onStep?(step: number, steps: number): void;
}

/** Why a job did not finish: cancelled, refused by the model (input), or the thread died (neither). */
export class JobFailure extends Error {
  constructor(message: string, readonly cancelled: boolean, readonly input: boolean) {
    super(message);
  }
}

/**
 * What a client is told of a failed run: what its own request caused (the model refused it) or a
 * cancel as it is, with the model's folder named as the request named it; anything else only as an
 * internal error, its message (which may name the server's files) written to the server's log.
 */
export function jobFailure(error: string, cancelled: boolean, input: boolean, job: Pick<ImageJob, 'folder' | 'model'>, id: string): JobFailure {
  if (input || cancelled) return new JobFailure(error.replaceAll(job.folder, job.model), cancelled, input);
  process.stderr.write(`diffuse: job ${id} failed: ${error}\n`);
  return new JobFailure(INTERNAL_FAILURE, false, false);
}

export const INTERNAL_FAILURE = 'an internal error stopped the job (the server\'s log says which)';

export class GenerationThread {
  private thread?: Worker;
  private current?: { id: string; job: ImageJob; hooks: RunHooks; resolve(o: JobOutcome): void; reject(e: JobFailure): void };

  constructor(private readonly options: WorkerOptions) {
    this.start();
  }

  get busy(): string | undefined {
    return this.current?.id;
  }

  private start(): void {
    const thread = new Worker(new URL(WORKER_ENTRY, import.meta.url), { workerData: { diffusionWorker: true, options: this.options } });
    this.thread = thread;
    thread.on('message', (m: FromWorker) => this.onMessage(m));
    let reason = 'it exited';
    thread.on('error', (err) => (reason = err.message));
    // 'exit' follows every 'error'; a terminated thread is not replaced.
    thread.on('exit', () => {
      if (this.thread !== thread) return;
      this.thread = undefined;
      const current = this.settle();
      current?.reject(jobFailure(`the worker stopped: ${reason}`, false, false, current.job, current.id));
    });
  }

  /** Runs one job (one at a time); rejects with JobFailure. Aborting `signal` stops it before its next segment. */
  run(id: string, job: ImageJob, hooks: RunHooks = {}, signal?: AbortSignal): Promise<JobOutcome> {
    if (this.current) throw new Error(`a generation thread runs one job at a time (busy with ${this.current.id})`);
    if (signal?.aborted) return Promise.reject(new JobFailure('cancelled', true, false));
    if (!this.thread) this.start();
    return new Promise<JobOutcome>((resolve, reject) => {
      this.current = { id, job, hooks, resolve, reject };
      signal?.addEventListener('abort', () => this.thread?.postMessage({ type: 'cancel', id } satisfies ToWorker), { once: true });
      this.thread!.postMessage({ type: 'run', id, job } satisfies ToWorker);
    });
  }

  async terminate(): Promise<void> {
    const thread = this.thread;
    this.thread = undefined;
    this.settle()?.reject(new JobFailure('the worker was stopped', true, false));
    await thread?.terminate();
  }

  private settle() {
    const current = this.current;
    this.current = undefined;
    return current;
  }

  private onMessage(m: FromWorker): void {
    const current = this.current;
    if (!current || current.id !== m.id) return;
    if (m.type === 'estimate') current.hooks.onEstimate?.(m.estimate);
    else if (m.type === 'step') current.hooks.onStep?.(m.step, m.steps);
    else if (m.type === 'done') this.settle()!.resolve(m.outcome);
    else this.settle()!.reject(jobFailure(m.error, m.cancelled, m.input, current.job, current.id));
  }
}
