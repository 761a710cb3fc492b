/**
 * What the text-to-image and class-to-image pipelines share: request checks, classifier-free
 * guidance, tensors read back from the runtime, the [0, 1] image out of the VAE.
 */
import * as ort from 'onnxruntime-node';
import { InputError } from '../errors.ts';

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

