/**
 * A generation worker: runs in a worker thread (ORT's `run` blocks whatever thread it is on, so the
 * server's event loop stays free), keeps each model it has loaded, takes one job at a time, and
 * writes each image atomically into the result directory with the PNG parameters `generate` writes.
 */
import * as path from 'node:path';
import { parentPort, workerData } from 'node:worker_threads';
import { requestAccelSpecs } from '../accel/index.ts';
import { InputError } from '../errors.ts';
import { fullMacs } from '../graph/builder.ts';
import { formatParameters } from '../image/parameters.ts';
import { encodePng } from '../image/png.ts';
import { macCounter } from '../bench/mac-counter.ts';
import type { GenerationResult, StepInfo } from '../pipelines/common.ts';
import { folderFamily, pipelineDefaults, pipelineFamily } from '../pipelines/families.ts';
import { loadDiTPipeline } from '../pipelines/dit.ts';
import { loadPixArtPipeline } from '../pipelines/pixart.ts';
import { loadPipeline } from '../pipelines/stable-diffusion.ts';
import { commandSessionCache } from '../runtime/session-cache.ts';
import { writeFileAtomically } from '../util/files.ts';
import { totalMemory } from '../io/files.ts';
import { withOptionNames } from '../util/option-names.ts';
import { readPipelineFolder } from '../weights/diffusers-folder.ts';
import { FIELD_OF_OPTION, type ImageJob } from './job.ts';
import type { Precision } from '../graph/quantize.ts';

export interface WorkerOptions {
  resultsDir: string;
  /** Intra-op threads of each ORT session this worker creates. */
  threads: number;
  /** The denoisers' arithmetic (every model this worker runs). */
  precision?: Precision;
  /** The share of this machine's memory a job may plan for: 1 / the generation threads of this process. */
  memoryShare: number;
}

/** Messages from the queue to a worker. */
export type ToWorker = { type: 'run'; id: string; job: ImageJob } | { type: 'cancel'; id: string };

/** What a finished job reports. */
export interface JobOutcome {
  images: string[];
  seed: number;
  steps: number;
  guidanceScale: number;
  scheduler: string;
  macs: number;
  timings: Record<string, number>;
  accel?: string[];
  /** What the pipeline said of the request (a truncated prompt, a setting with no effect), named by the request's fields. */
  warnings: string[];
}

/** The chosen methods' whole-run MACs against the plain run's, counted from the configs before the job runs. */
export interface MacEstimate {
  macs: number;
  baselineMacs: number;
}

/**
 * Counts a job's MACs on shapes alone (what `bench --dry-run` counts). Methods that decide from
 * tensor values (fbcache, teacache) count as the plain run: only the run itself knows what they skip.
 */
export async function estimateMacs(job: ImageJob): Promise<MacEstimate> {
  const folder = readPipelineFolder(job.folder);
  const defaults = pipelineDefaults(folder.className);
  const dit = pipelineFamily(folder.className) === 'dit';
  const options = {
    model: job.folder, scheduler: job.scheduler, guidance: job.guidanceScale ?? defaults.guidanceScale,
    batch: dit ? job.classLabels?.length ?? 1 : job.batch,
  };
  let counter = macCounter(options);
  if (!dit && (job.width !== undefined || job.height !== undefined)) {
    counter = macCounter({ ...options, size: [job.width ?? counter.width, job.height ?? counter.height] });
  }
  const steps = job.steps ?? defaults.steps;
  const [plain, chosen] = await Promise.all([counter.count(steps, []), counter.count(steps, requestAccelSpecs(job.accel))]);
  return { macs: fullMacs(chosen.total), baselineMacs: fullMacs(plain.total) };
}

/** Messages from a worker to the queue. */
export type FromWorker =
  | { type: 'estimate'; id: string; estimate: MacEstimate }
  | { type: 'step'; id: string; step: number; steps: number }
  | { type: 'done'; id: string; outcome: JobOutcome }
  | { type: 'failed'; id: string; error: string; cancelled: boolean; input: boolean };

type Generation = Pick<GenerationResult, 'images' | 'seeds' | 'steps' | 'guidanceScale' | 'scheduler' | 'denoiserMacs' | 'timings' | 'accel' | 'warnings'>;

type Runner = {
  generate(job: ImageJob, onStep: (s: StepInfo) => void, signal: AbortSignal): Promise<Generation>;
  release(): Promise<void>;
};

const sessionCache = commandSessionCache();
/** The pipeline this worker holds, for one model at one image size (its sessions are per shape). */
let held: { key: string; runner: Promise<Runner> } | undefined;

/**
 * The job's pipeline. A worker holds one, for the last model and size it ran: another model or
 * size releases it first, so requests cannot pile up models or per-shape sessions in its memory.
 */
async function runnerFor(job: ImageJob, options: WorkerOptions): Promise<Runner> {
  const key = `${job.folder}|${job.width ?? ''}x${job.height ?? ''}`;
  if (held?.key === key) return held.runner;
  const previous = held?.runner;
  held = undefined;
  await previous?.then((r) => r.release(), () => {});
  const runner = loadRunner(job.folder, options);
  held = { key, runner };
  runner.catch(() => held?.runner === runner && (held = undefined));
  return runner;
}

/** The model folder and image size of the pipeline this worker holds now, if any (for tests and diagnostics). */
export function heldPipeline(): string | undefined {
  return held?.key;
}

async function loadRunner(folderPath: string, { threads, precision = 'fp32', memoryShare }: WorkerOptions): Promise<Runner> {
  const folder = readPipelineFolder(folderPath);
  const family = folderFamily(folder);
  const memoryLimit = totalMemory() * memoryShare;
  if (family === 'dit') {
    const dit = loadDiTPipeline(folder, { threads, precision, sessionCache });
    return {
      // `?? []` and `?? ''` below: jobs queued in Redis by a server before requests had to carry them.
      generate: (job, onStep, signal) => dit.generate({
        classLabels: job.classLabels ?? [], steps: job.steps, guidanceScale: job.guidanceScale, seed: job.seed, scheduler: job.scheduler,
        accel: requestAccelSpecs(job.accel), memoryLimit, onStep, signal,
      }),
      release: () => dit.release(),
    };
  }
  const pipeline = family === 'pixart' ? loadPixArtPipeline(folder, { threads, precision, sessionCache })
    : await loadPipeline(folder.dir, { threads, precision, sessionCache });
  return {
    generate: (job, onStep, signal) => pipeline.generate({ ...promptRequest(job), memoryLimit, onStep, signal }),
    release: () => pipeline.release(),
  };
}

function promptRequest(job: ImageJob) {
  return {
    prompt: job.prompt ?? '', negativePrompt: job.negativePrompt, steps: job.steps, guidanceScale: job.guidanceScale, seed: job.seed,
    width: job.width, height: job.height, imagesPerPrompt: job.batch, scheduler: job.scheduler, accel: requestAccelSpecs(job.accel),
  };
}

/** Library options in a client's words: body fields, and the memory limit a client cannot set named as what sets it. */
export const WORDS_OF_OPTION: Readonly<Record<string, string>> = { ...FIELD_OF_OPTION, memoryLimit: 'memory per worker (a server with fewer --workers or more memory)' };

/** Runs one job to its files; throws what the pipeline throws (InputError for what the model refuses). */
export async function runJob(id: string, job: ImageJob, options: WorkerOptions, onStep: (s: StepInfo) => void, signal: AbortSignal): Promise<JobOutcome> {
  const g = await (await runnerFor(job, options)).generate(job, onStep, signal);
  const images = g.images.map((image, i) => {
    const name = `${id}-${i}.png`;
    const json = { ...job, folder: undefined, seed: g.seeds[i], index: i };
    writeFileAtomically(path.join(options.resultsDir, name), encodePng(image.data, image.width, image.height, {
      parameters: formatParameters({
        subject: job.classLabels ? `class ${job.classLabels.join(', ')}` : job.prompt ?? '', negativePrompt: job.classLabels ? undefined : job.negativePrompt ?? '',
        steps: g.steps, sampler: g.scheduler, cfgScale: g.guidanceScale, seed: g.seeds[i], width: image.width, height: image.height, model: job.model, accel: job.accel,
      }),
      'diffusion.ts': JSON.stringify(json),
    }));
    return name;
  });
  const timings = Object.fromEntries(Object.entries(g.timings).filter((e): e is [string, number] => e[1] !== undefined));
  return {
    images, seed: job.seed, steps: g.steps, guidanceScale: g.guidanceScale, scheduler: g.scheduler, macs: fullMacs(g.denoiserMacs), timings,
    accel: g.accel && [g.accel.name, ...g.accel.summary], warnings: g.warnings.map((w) => withOptionNames(w, WORDS_OF_OPTION)),
  };
}

if (parentPort && workerData?.diffusionWorker) {
  const port = parentPort;
  const options = workerData.options as WorkerOptions;
  const running = new Map<string, AbortController>();
  const send = (m: FromWorker) => port.postMessage(m);
  port.on('message', (m: ToWorker) => {
    if (m.type === 'cancel') {
      running.get(m.id)?.abort();
      return;
    }
    const abort = new AbortController();
    running.set(m.id, abort);
    // An estimate that cannot be made (a size the model refuses, say) is left out: the run says why.
    estimateMacs(m.job).then((estimate) => send({ type: 'estimate', id: m.id, estimate }), () => {});
    runJob(m.id, m.job, options, (s) => send({ type: 'step', id: m.id, step: s.step, steps: s.steps }), abort.signal)
      .then((outcome) => send({ type: 'done', id: m.id, outcome }))
      .catch((err: unknown) => send({
        type: 'failed', id: m.id, cancelled: abort.signal.aborted, input: err instanceof InputError,
        // What the model refuses is the client's to mend: said in the body's field names.
        error: err instanceof InputError ? withOptionNames(err.message, WORDS_OF_OPTION) : err instanceof Error ? err.message : String(err),
      }))
      .finally(() => running.delete(m.id));
  });
}
