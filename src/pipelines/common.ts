/**
 * What the text-to-image and class-to-image pipelines share: request checks, classifier-free
 * guidance, tensors read back from the runtime, the [0, 1] image out of the VAE.
 */
import * as ort from 'onnxruntime-node';
import { createAccelerator, type AccelSpec } from '../accel/index.ts';
import { InputError } from '../errors.ts';
import type { AutoencoderKL } from '../models/autoencoder-kl.ts';
import type { Executor, ShapedTensor } from '../runtime/executor.ts';
import { ortOps } from '../runtime/ort-executor.ts';
import { PlannedExecutor, dryRehearsal, type Accelerator } from '../runtime/plan.ts';
import type { ModelDeclaration } from '../runtime/protocol.ts';
import type { SchedulerName } from '../schedulers/index.ts';

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
  accel?: AccelSpec[];
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
}

export const seconds = (start: number) => (performance.now() - start) / 1000;

export function list(value: string | string[], flag: string): string[] {
  const items = Array.isArray(value) ? value : [value];
  if (items.length === 0 || items.some((p) => typeof p !== 'string')) throw new InputError(flag, 'wrong value', 'a string or a non-empty list of strings');
  return items;
}

export function positiveInt(value: number | undefined, fallback: number, flag: string): number {
  const v = value ?? fallback;
  if (!Number.isInteger(v) || v <= 0) throw new InputError(flag, 'wrong value', 'a positive integer', String(value));
  return v;
}

export function finite(value: number | undefined, fallback: number, flag: string, min = -Infinity): number {
  const v = value ?? fallback;
  if (!Number.isFinite(v) || v < min) throw new InputError(flag, 'wrong value', min > -Infinity ? `a number ≥ ${min}` : 'a finite number', String(value));
  return v;
}

export async function floats(t: ort.Tensor): Promise<Float32Array> {
  return (t.location === 'cpu' ? t.data : await t.getData()) as Float32Array;
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


/** A seed for our noise generator: the given one, checked, or a random one. */
export function seedOf(seed: number | undefined): number {
  const value = seed ?? Math.floor(Math.random() * 2 ** 32);
  if (!Number.isInteger(value) || value < 0 || value >= 2 ** 32) throw new InputError('--seed', 'wrong value', 'an integer in [0, 2³²)', String(seed));
  return value;
}

/** Given starting latents must have exactly the shape the request implies. */
export function checkLatents(latents: Latents | undefined, dims: number[]): void {
  const d = latents?.dims;
  if (d && (d.length !== dims.length || d.some((x, i) => x !== dims[i]))) {
    throw new InputError('--latents', 'shape does not fit the request', `[${dims.join(', ')}]`, `[${d.join(', ')}]`);
  }
}

export function checkAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw signal.reason ?? new DOMException('generation aborted', 'AbortError');
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

/**
 * The training-free accelerations of one generation: the composed plan, checked against the model
 * and the run before any work; after the prompt is encoded, its planned executor; per model call,
 * whether the CFG batch runs and which executor runs the call.
 */
export class Acceleration {
  private planned?: PlannedExecutor<ort.Tensor>;
  private cfgCalls = 0;

  private constructor(private readonly plan: Accelerator | undefined, private readonly run: { steps: number; calls: number }) {}

  static check(specs: AccelSpec[] | undefined, model: ModelDeclaration, run: { steps: number; calls: number }): Acceleration {
    const plan = createAccelerator(specs ?? []);
    plan?.check?.(model, { ...run, fullPassCalls: plan.fullPassCalls ?? [] });
    return new Acceleration(plan, run);
  }

  /** Lets methods rehearse one model call (`forward` on shapes) to size what they keep; returns their warnings. */
  async begin(exec: Executor<ort.Tensor>, forward: (exec: Executor<ShapedTensor>) => Promise<unknown>): Promise<string[]> {
    if (!this.plan) return [];
    const warnings = (await this.plan.prepare?.(dryRehearsal(forward, this.run))) ?? [];
    this.planned = new PlannedExecutor(exec, this.plan, ortOps, this.run);
    return warnings;
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

  report(): AccelReport | undefined {
    return this.plan && this.planned && { name: this.plan.name, cfgCalls: this.cfgCalls, ...this.planned.report() };
  }
}

/**
 * VAE-decodes each image of a latent batch [B, C, h, w] (one at a time: the decoder's activations
 * dominate memory at full size) to planar RGB in [0, 1]; `fit` reshapes the decoded [−1, 1] image first.
 */
export async function decodeImages(vae: AutoencoderKL, exec: Executor<ort.Tensor>, latents: Float32Array, dims: number[],
  fit?: (decoded: Float32Array) => { data: Float32Array; width: number; height: number }): Promise<GeneratedImage[]> {
  const [batch, ...plane] = dims;
  const size = plane.reduce((a, b) => a * b, 1);
  const scale = 1 / vae.config.scalingFactor;
  const factor = vae.downsampleFactor;
  const images: GeneratedImage[] = [];
  for (let b = 0; b < batch; b++) {
    const z = latents.slice(b * size, (b + 1) * size).map((v) => v * scale);
    const decoded = await floats(await vae.decode(exec, new ort.Tensor('float32', z, [1, ...plane])));
    const image = fit ? fit(decoded) : { data: decoded, width: plane[2] * factor, height: plane[1] * factor };
    images.push({ data: image.data.map((v) => Math.min(1, Math.max(0, v / 2 + 0.5))), width: image.width, height: image.height });
  }
  return images;
}
