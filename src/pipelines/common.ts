/**
 * What the text-to-image and class-to-image pipelines share: request checks, classifier-free
 * guidance, tensors read back from the runtime, the [0, 1] image out of the VAE.
 */
import * as ort from 'onnxruntime-node';
import { createAccelerator, type AccelInput, type AccelSpec } from '../accel/index.ts';
import { InputError, checkAborted, describe } from '../errors.ts';
import type { MacCount } from '../graph/builder.ts';
import type { AutoencoderKL } from '../models/autoencoder-kl.ts';
import type { Executor, ShapedTensor } from '../runtime/executor.ts';
import { ortOps, tensorData, type OrtExecutor, type Transfers } from '../runtime/ort-executor.ts';
import { PlannedExecutor, combine, dryRehearsal, plannedMemory, type Accelerator, type RunShape } from '../runtime/plan.ts';
import type { ModelDeclaration } from '../runtime/protocol.ts';
import { createScheduler, type SchedulerName } from '../schedulers/index.ts';
import type { Scheduler } from '../schedulers/types.ts';
import { Rng } from '../util/rng.ts';
import { getComponent, readComponentConfig, type PipelineFolder } from '../weights/diffusers-folder.ts';

export interface Latents {
  data: Float32Array;
  dims: number[];
}

export interface StepInfo {
  step: number;
  steps: number;
  timestep: number;
  seconds: number;
}

export interface GeneratedImage {
  /** Planar RGB [3, height, width] in [0, 1]. */
  data: Float32Array;
  width: number;
  height: number;
}

/** What every generation request has. */
export interface BaseRequest {
  steps?: number;
  guidanceScale?: number;
  /** Scheduler by name; default: the folder's own scheduler. */
  scheduler?: SchedulerName;
  /** Seed of our noise generator; random when absent (the result says which). */
  seed?: number;
  /** Starting latents [B, C, h, w], as diffusers' `latents=`. */
  latents?: Latents;
  /** Training-free accelerations, composed in this order (see src/runtime/plan.ts). */
  accel?: (AccelSpec | AccelInput)[];
  /**
   * Plans built in code (runtime/plan.ts Accelerator objects: a method of your own, or an observer
   * such as TeaCache's calibration recorder), composed after `accel`'s.
   */
  plans?: Accelerator[];
  /**
   * Bytes the run may need at its peak (default: this machine's memory). A run estimated above it
   * is refused before it starts (src/pipelines/memory.ts).
   */
  memoryLimit?: number;
  /** 'latent' skips VAE decoding. */
  output?: 'image' | 'latent';
  onStep?: (info: StepInfo) => void;
  signal?: AbortSignal;
}

/** A text-to-image request: prompts, the image size and how many images per prompt. */
export interface PromptRequest extends BaseRequest {
  prompt: string | string[];
  negativePrompt?: string | string[];
  width?: number;
  height?: number;
  imagesPerPrompt?: number;
  /**
   * img2img: the init image, planar RGB in [0, 1] (a GeneratedImage, or readImage(file)); resized to
   * width × height, which default to its size rounded down to the VAE factor (src/pipelines/img2img.ts).
   */
  image?: GeneratedImage;
  /** img2img: how much of the schedule runs, in (0, 1]; 1 ignores the image's content. Default 0.8. */
  strength?: number;
}

export const seconds = (start: number) => (performance.now() - start) / 1000;

/** MACs an executor ran since `before` (a copy of its macsSpent taken earlier). */
export function macsSince(exec: { macsSpent: MacCount }, before: MacCount): MacCount {
  return { conv: exec.macsSpent.conv - before.conv, linear: exec.macsSpent.linear - before.linear, attention: exec.macsSpent.attention - before.attention };
}

/** Where a value came from, for error messages: a string, a number, a list... */
function found(value: unknown): string {
  return typeof value === 'string' ? `"${value}" (a string)` : describe(value);
}

/** A prompt or a non-empty list of them (`option` names the request field). */
export function list(value: unknown, option: string): string[] {
  const items = Array.isArray(value) ? value : [value];
  if (items.length === 0 || items.length > LIMITS.prompts || items.some((p) => typeof p !== 'string')) {
    throw new InputError(option, 'wrong value', `a string or a list of 1 to ${LIMITS.prompts} strings`, found(value));
  }
  return items as string[];
}

/** Bounds of the request fields: past them a request is a mistake, not a bigger job. */
export const LIMITS = { steps: 1000, imagesPerPrompt: 64, prompts: 64, size: 16_384, guidanceScale: 100, maxSequenceLength: 4096 };

/** An integer request field in [min, max], `fallback` when absent. */
export function intOption(value: unknown, fallback: number, option: string, min: number, max: number): number {
  const v = value ?? fallback;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) {
    throw new InputError(option, 'wrong value', `an integer in [${min}, ${max}]`, found(value));
  }
  return v;
}

/** A number request field in [min, max], `fallback` when absent. */
export function numberOption(value: unknown, fallback: number, option: string, min: number, max: number): number {
  const v = value ?? fallback;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max) {
    throw new InputError(option, 'wrong value', `a number in [${min}, ${max}]`, found(value));
  }
  return v;
}

export async function floats(t: ort.Tensor): Promise<Float32Array> {
  return (await tensorData(t)) as Float32Array;
}

export function concat(a: Float32Array, b: Float32Array): Float32Array {
  const out = new Float32Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

/**
 * Classifier-free guidance on a [uncond; text] batch: uncond + g·(text − uncond), then diffusers'
 * rescale_noise_cfg (match the per-sample std of the text prediction, blended by `rescale`).
 */
export function guide(prediction: Float32Array, size: number, scale: number, rescale: number, batch: number): Float32Array {
  const out = new Float32Array(size);
  for (let i = 0; i < size; i++) {
    const uncond = prediction[i];
    out[i] = uncond + scale * (prediction[size + i] - uncond);
  }
  if (rescale > 0) {
    const per = size / batch;
    for (let b = 0; b < batch; b++) {
      const text = prediction.subarray(size + b * per, size + (b + 1) * per);
      const guided = out.subarray(b * per, (b + 1) * per);
      const factor = std(text) / std(guided);
      for (let i = 0; i < per; i++) guided[i] = rescale * guided[i] * factor + (1 - rescale) * guided[i];
    }
  }
  return out;
}

/** Unbiased standard deviation (torch's default). */
function std(x: Float32Array): number {
  let mean = 0;
  for (const v of x) mean += v;
  mean /= x.length;
  let sum = 0;
  for (const v of x) sum += (v - mean) ** 2;
  return Math.sqrt(sum / (x.length - 1));
}


/**
 * The noise of a batch: image b draws from its own generator seeded seed + b (mod 2³²), so every
 * image of a batch is the image a run of that one seed gives (A1111's convention).
 */
export class BatchNoise {
  private readonly rngs: Rng[];
  readonly seeds: number[];

  constructor(seed: number, images: number) {
    this.seeds = Array.from({ length: images }, (_, b) => (seed + b) % 2 ** 32);
    this.rngs = this.seeds.map((s) => new Rng(s));
  }

  /** Normal noise for the whole batch, `size` values, each image's part from its own generator. */
  draw(size: number): Float32Array {
    const out = new Float32Array(size);
    const per = size / this.rngs.length;
    this.rngs.forEach((rng, b) => rng.fillNormal(out.subarray(b * per, (b + 1) * per)));
    return out;
  }
}

/** A seed for our noise generator: the given one, checked, or a random one. */
export function seedOf(seed: unknown): number {
  return intOption(seed, Math.floor(Math.random() * 2 ** 32), 'seed', 0, 2 ** 32 - 1);
}

/** The folder's scheduler (its scheduler/ config, or the one `name` asks for) set to `steps`. */
export function folderScheduler(folder: PipelineFolder, name: SchedulerName | undefined, steps: number): Scheduler {
  const { config, where } = readComponentConfig(folder, 'scheduler');
  const scheduler = createScheduler({ name, className: getComponent(folder, 'scheduler').className, config, configFile: where, steps });
  // Every pipeline here (as diffusers' do) drops a predicted variance before the step, so such a step could not run.
  if (scheduler.usesVariance) {
    throw new InputError(`${where}: variance_type`, `learned_range makes ${scheduler.name} step with the model's predicted variance, which the pipelines drop`,
      'fixed_small or fixed_large (or another scheduler)', 'learned_range');
  }
  return scheduler;
}

/** Given starting latents must have exactly the shape the request implies, and that many finite values. */
export function checkLatents(latents: Latents | undefined, dims: number[]): void {
  if (latents === undefined) return;
  const d: unknown = typeof latents === 'object' && latents !== null ? latents.dims : undefined;
  if (!Array.isArray(d)) {
    throw new InputError('latents', 'wrong value', `{ data: Float32Array, dims: [${dims.join(', ')}] }`, describe(latents));
  }
  if (d.length !== dims.length || d.some((x, i) => x !== dims[i])) {
    throw new InputError('latents', 'shape does not fit the request', `[${dims.join(', ')}]`, `[${d.join(', ')}]`);
  }
  const size = dims.reduce((a, b) => a * b, 1);
  const data: unknown = latents.data;
  if (!(data instanceof Float32Array) || data.length !== size) {
    throw new InputError('latents.data', 'wrong value', `a Float32Array of ${size} values ([${dims.join(', ')}])`,
      data instanceof Float32Array ? `${data.length} values` : describe(data));
  }
  const bad = data.findIndex((v) => !Number.isFinite(v));
  if (bad >= 0) throw new InputError('latents.data', 'not finite', 'finite numbers', `${data[bad]} at index ${bad}`);
}

/**
 * The names of a request interface's own options (those `Base` does not have), from an object the
 * compiler checks against `Request`: an option added to the interface and not here fails the build.
 */
export function optionNames<Request, Base = object>(names: Record<Exclude<keyof Request, keyof Base>, true>): string[] {
  return Object.keys(names);
}

/** What every request may set (BaseRequest). */
export const BASE_OPTIONS = optionNames<BaseRequest>({
  steps: true, guidanceScale: true, scheduler: true, seed: true, latents: true, accel: true, plans: true, memoryLimit: true, output: true, onStep: true, signal: true,
});
/** What a text-to-image request may set (PromptRequest). */
export const PROMPT_OPTIONS = [...BASE_OPTIONS, ...optionNames<PromptRequest, BaseRequest>({
  prompt: true, negativePrompt: true, width: true, height: true, imagesPerPrompt: true, image: true, strength: true,
})];

/**
 * Refuses a request that is not an object, an option this pipeline does not read (a typo, or
 * another family's option, would otherwise do nothing), and shared options of the wrong kind.
 * Options set to undefined count as not given.
 */
export function checkRequestOptions(request: unknown, options: readonly string[], pipeline: string): void {
  if (typeof request !== 'object' || request === null || Array.isArray(request)) {
    throw new InputError('request', 'not an object', 'an object of generation options', describe(request));
  }
  for (const [key, value] of Object.entries(request)) {
    if (value !== undefined && !options.includes(key)) {
      throw new InputError(key, `not an option of ${pipeline} requests, so it would do nothing`, `one of ${options.join(', ')}`, describe(value));
    }
  }
  const { output, onStep, signal } = request as BaseRequest;
  if (output !== undefined && output !== 'image' && output !== 'latent') throw new InputError('output', 'wrong value', '"image" or "latent"', describe(output));
  if (onStep !== undefined && typeof onStep !== 'function') throw new InputError('onStep', 'not a function', 'a function called after each step', describe(onStep));
  if (signal !== undefined && !(signal instanceof AbortSignal)) {
    throw new InputError('signal', 'not an AbortSignal', 'an AbortSignal (an AbortController\'s .signal)', describe(signal));
  }
}

/**
 * The seed draws the starting noise and each step's: says so when it does nothing, starting latents
 * given and no step from `start` on drawing noise.
 */
export function seedWarnings(request: BaseRequest, scheduler: Scheduler, start = 0): string[] {
  if (request.latents === undefined || request.seed === undefined) return [];
  for (let i = start; i < scheduler.timesteps.length; i++) if (scheduler.needsNoise(i)) return [];
  return [`seed has no effect: the starting latents are given and ${scheduler.name} draws no noise at any step`];
}

/** What the accelerations of a generation did. */
export interface AccelReport {
  name: string;
  /** Model calls run with the CFG batch. */
  cfgCalls: number;
  /** Counters by name (segment calls served from caches, shallow passes, each method's own). */
  stats: Record<string, number>;
  /** The same in words. */
  summary: string[];
}

/** What every family's generate gives back; each family adds its own fields. */
export interface GenerationResult {
  /** Final latents, before VAE scaling and decoding. */
  latents: Latents;
  images: GeneratedImage[];
  seed: number;
  /** Each image's own seed (seed + its index): a run of that seed alone gives that image. */
  seeds: number[];
  /** The steps and guidance scale this run used, defaults filled in. */
  steps: number;
  guidanceScale: number;
  scheduler: string;
  accel?: AccelReport;
  /** MACs the denoiser (U-Net or transformer) ran in this generation: what the accelerations really spent. */
  denoiserMacs: MacCount;
  /** GPU↔CPU copies during the denoising loop (WebGPU; zero on the CPU). */
  denoisingTransfers: Transfers;
  /**
   * The most bytes of model outputs left on the GPU between model calls (WebGPU; zero on the CPU):
   * what the plan and the prompt's keys and values hold. Every other output is freed after each call.
   */
  keptOnDevice: number;
  /** Seconds; text encoding where the family has a text encoder, imageEncoding for img2img only. */
  timings: { textEncoding?: number; imageEncoding?: number; denoising: number; decoding: number };
  warnings: string[];
}

/**
 * The training-free accelerations of one generation: the composed plan, checked against the model
 * and the run before any work; after the prompt is encoded, its planned executor; per model call,
 * whether the CFG batch runs and which executor runs the call.
 */
export class Acceleration {
  private planned?: PlannedExecutor<ort.Tensor>;
  private cfgCalls = 0;
  /** See GenerationResult.keptOnDevice. */
  keptOnDevice = 0;

  private constructor(private readonly plan: Accelerator | undefined, private readonly run: RunShape & { calls: number }) {}

  /** `why` says, for errors, why the run has the calls it has (e.g. img2img's strength). */
  static check(specs: readonly (AccelSpec | AccelInput)[] | undefined, model: ModelDeclaration, run: RunShape & { calls: number }, why?: string,
    plans?: readonly Accelerator[]): Acceleration {
    const methods = createAccelerator(specs, run.calls);
    if (plans !== undefined && !(Array.isArray(plans) && plans.every((p) => typeof p === 'object' && p !== null && typeof p.name === 'string'))) {
      throw new InputError('plans', 'wrong value', 'a list of Accelerator objects (src/runtime/plan.ts)', describe(plans));
    }
    const plan = plans?.length ? combine([...(methods?.parts ?? (methods ? [methods] : [])), ...plans]) : methods;
    try {
      plan?.check?.(model, { ...run, fullPassCalls: plan.fullPassCalls ?? [] });
    } catch (e) {
      if (e instanceof InputError && why) e.message += ` (${why})`;
      throw e;
    }
    return new Acceleration(plan, run);
  }

  /** Bytes the plan keeps between model calls at most (plannedMemory), for the memory check; `forward` is one model call on shapes. */
  keptBytes(forward: (exec: Executor<ShapedTensor>) => Promise<unknown>, cfg: boolean): Promise<number> {
    return this.plan ? plannedMemory(this.plan, forward, this.run, cfg) : Promise.resolve(0);
  }

  /** Lets methods rehearse one model call (`forward` on shapes) to size what they keep, before any work; returns their warnings. */
  async prepare(forward: (exec: Executor<ShapedTensor>) => Promise<unknown>): Promise<string[]> {
    return (await this.plan?.prepare?.(dryRehearsal(forward, this.run))) ?? [];
  }

  /** After `prepare`: the planned executor the model calls will run on, over `exec`. */
  begin(exec: Executor<ort.Tensor>): void {
    if (this.plan) this.planned = new PlannedExecutor(exec, this.plan, ortOps, this.run);
  }

  /** Model call `i` of a pipeline that does (`cfg`) or does not use CFG: the batch it runs and the executor for it. */
  call(i: number, cfg: boolean, exec: Executor<ort.Tensor>): { cfg: boolean; exec: Executor<ort.Tensor> } {
    const cfgNow = cfg && (this.plan?.cfgActive?.(i) ?? true);
    if (cfgNow) this.cfgCalls++;
    if (this.planned) {
      this.planned.call = i;
      this.planned.cfg = cfgNow;
    }
    return { cfg: cfgNow, exec: this.planned ?? exec };
  }

  /**
   * After a model call, once its output is read: frees what the call produced on `exec` but what
   * the plan keeps and `kept` (tensors the pipeline reuses, e.g. a prompt's cross-attention keys).
   */
  endCall(exec: OrtExecutor, kept: Iterable<ort.Tensor> = []): void {
    this.keptOnDevice = Math.max(this.keptOnDevice, exec.freeOutputs([...(this.planned?.held() ?? []), ...kept]));
  }

  report(): AccelReport | undefined {
    return this.plan && this.planned && { name: this.plan.name, cfgCalls: this.cfgCalls, ...this.planned.report() };
  }
}

/**
 * Whether the device computes in float16, asked only of a request with accelerations (a method may
 * store float16 values: attn-reuse's maps); undefined otherwise, as plans need not know.
 */
export async function halfFloatsFor(request: { accel?: unknown; plans?: unknown }, exec: OrtExecutor): Promise<boolean | undefined> {
  return request.accel !== undefined || request.plans !== undefined ? exec.halfFloats() : undefined;
}

/**
 * A pipeline's generations, one at a time, each leaving nothing on its executors: they share the
 * executors (MAC counters, sessions, outputs not yet freed), so a second generate waits for the
 * first, and release() for both. A generation must not await another on its own pipeline (from a
 * plan's hook, say): that one waits for it to end.
 */
export class Generations {
  private last: Promise<unknown> = Promise.resolve();
  private released = false;

  constructor(private readonly executors: readonly (OrtExecutor | undefined)[]) {}

  /** `signal` stops the generation at its executors' next segment (and any weights they are fetching). */
  run<R>(generate: () => Promise<R>, signal?: AbortSignal): Promise<R> {
    if (this.released) return Promise.reject(new InputError('pipeline', 'released (its sessions are freed and its weights closed)', 'a pipeline loaded again'));
    const done = this.last.then(async () => {
      checkAborted(signal);
      for (const exec of this.executors) if (exec) exec.abortSignal = signal;
      try {
        return await generate();
      } finally {
        for (const exec of this.executors) {
          if (!exec) continue;
          exec.abortSignal = undefined;
          exec.freeOutputs();
        }
      }
    });
    this.last = done.catch(() => undefined);
    return done;
  }

  /** Refuses generations from now on; settles when every one begun before has ended. */
  async release(): Promise<void> {
    this.released = true;
    await this.last;
  }
}

/** Every tensor of a pipeline's precomputed cross-attention keys and values (by text, by layer). */
export function keyValueTensors(byText: Map<unknown, Map<string, Record<string, ort.Tensor>>>): ort.Tensor[] {
  return [...byText.values()].flatMap((layers) => [...layers.values()].flatMap((kv) => Object.values(kv)));
}

/**
 * VAE-decodes each image of a latent batch [B, C, h, w] (one at a time: the decoder's activations
 * dominate memory at full size) to planar RGB in [0, 1]; `fit` reshapes the decoded [−1, 1] image first.
 */
export async function decodeImages(vae: AutoencoderKL, exec: OrtExecutor, latents: Float32Array, dims: number[],
  fit?: (decoded: Float32Array) => { data: Float32Array; width: number; height: number }): Promise<GeneratedImage[]> {
  const [batch, ...plane] = dims;
  const size = plane.reduce((a, b) => a * b, 1);
  const scale = 1 / vae.config.scalingFactor;
  const factor = vae.downsampleFactor;
  const images: GeneratedImage[] = [];
  for (let b = 0; b < batch; b++) {
    const z = latents.slice(b * size, (b + 1) * size).map((v) => v * scale);
    const decoded = await floats(await vae.decode(exec, new ort.Tensor('float32', z, [1, ...plane])));
    exec.freeOutputs();
    const image = fit ? fit(decoded) : { data: decoded, width: plane[2] * factor, height: plane[1] * factor };
    images.push({ data: image.data.map((v) => Math.min(1, Math.max(0, v / 2 + 0.5))), width: image.width, height: image.height });
  }
  return images;
}
