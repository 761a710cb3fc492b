/**
 * Image-to-image, as diffusers' StableDiffusionImg2ImgPipeline / StableDiffusionXLImg2ImgPipeline:
 * the init image resized (Pillow's Lanczos) to the output size and scaled to [−1, 1], VAE-encoded,
 * a sample of the posterior taken and scaled by `scaling_factor`, noised to the timestep where the
 * shortened schedule starts, then denoised over the rest of the schedule only.
 *
 * The schedule (diffusers' get_timesteps): of `steps` inference steps, int(steps × strength) run,
 * the last ones; the scheduler starts at that position with no history (set_begin_index). Every
 * accelerator sees the calls that run, numbered from 0.
 *
 * Noise: image b of a batch draws, from its own generator (seed + b), first its posterior sample,
 * then the noise added to it, then any step noise — diffusers with one generator per image.
 */
import * as ort from 'onnxruntime-node';
import { InputError, describe } from '../errors.ts';
import { resizeLanczos } from '../image/resize.ts';
import type { AutoencoderKL } from '../models/autoencoder-kl.ts';
import type { Executor } from '../runtime/executor.ts';
import type { Scheduler } from '../schedulers/index.ts';
import { LIMITS, floats, type BatchNoise, type GeneratedImage } from './common.ts';

const f32 = Math.fround;

/** diffusers' default strength for StableDiffusionImg2ImgPipeline (its SDXL pipeline defaults to 0.3). */
export const DEFAULT_STRENGTH = 0.8;

/** The request's init image, checked: planar RGB [3, height, width] with values in [0, 1]. */
export function checkImage(image: unknown): GeneratedImage {
  const i = image as GeneratedImage;
  const ok = typeof i === 'object' && i !== null && i.data instanceof Float32Array && Number.isSafeInteger(i.width) && Number.isSafeInteger(i.height) &&
    i.width >= 1 && i.height >= 1 && i.width <= LIMITS.size && i.height <= LIMITS.size && i.data.length === 3 * i.width * i.height;
  if (!ok) {
    const shape = typeof i === 'object' && i !== null ? `{ data: ${i.data?.constructor?.name ?? describe(i.data)} of ${i.data?.length ?? '?'} values, width: ${describe(i.width)}, height: ${describe(i.height)} }` : describe(image);
    throw new InputError('image', 'wrong value', `planar RGB { data: Float32Array of 3 × width × height values in [0, 1], width, height } (readImage(file) makes one)`, shape);
  }
  for (const v of i.data) {
    if (!(v >= 0 && v <= 1)) throw new InputError('image', 'pixel value out of range', 'values in [0, 1]', describe(v));
  }
  return i;
}

/**
 * The default output size for an init image: its size rounded down to a multiple of the VAE factor
 * (diffusers'), and at least one factor.
 */
export function imageDefaultSize(image: GeneratedImage, factor: number): { width: number; height: number } {
  const floor = (x: number) => Math.max(factor, x - (x % factor));
  return { width: floor(image.width), height: floor(image.height) };
}

/** The strength of a request: a number in (0, 1], `DEFAULT_STRENGTH` when absent. */
export function strengthOf(value: unknown): number {
  const s = value ?? DEFAULT_STRENGTH;
  if (typeof s !== 'number' || !(s > 0 && s <= 1)) throw new InputError('strength', 'wrong value', 'a number in (0, 1]', describe(value));
  return s;
}

/**
 * The schedule position img2img starts at (diffusers' get_timesteps, for first-order schedulers):
 * int(steps × strength) steps run, the last ones. Refused when that is none.
 */
export function startIndex(scheduler: Scheduler, strength: number): number {
  const steps = scheduler.steps;
  const run = Math.min(Math.floor(steps * strength), steps);
  if (run === 0) {
    throw new InputError('strength', `runs no step of ${steps} (int(steps × strength) = 0)`, `at least ${(1 / steps).toPrecision(3)} for ${steps} steps, or more steps`, `${strength}`);
  }
  return steps - run;
}

/**
 * The starting latents of an img2img batch [batch, C, h, w]: the image at the output size, VAE-encoded
 * once, a posterior sample per image scaled by scaling_factor, noised to position `start` of the schedule.
 */
export async function initLatents(vae: AutoencoderKL, exec: Executor<ort.Tensor>, image: GeneratedImage, width: number, height: number,
  batch: number, scheduler: Scheduler, start: number, noise: BatchNoise): Promise<Float32Array> {
  const resized = resizeLanczos(image, width, height);
  const pixels = resized.data.map((v) => f32(f32(2 * v) - 1));
  const { mean, std } = await vae.encode(exec, new ort.Tensor('float32', pixels, [1, 3, height, width]));
  const [m, s] = [await floats(mean), await floats(std)];
  const per = m.length;
  const sample = noise.draw(batch * per);
  const scale = f32(vae.config.scalingFactor);
  const latents = new Float32Array(batch * per);
  for (let b = 0; b < batch; b++) {
    for (let k = 0; k < per; k++) latents[b * per + k] = f32(scale * f32(m[k] + f32(s[k] * sample[b * per + k])));
  }
  return scheduler.addNoise(latents, noise.draw(latents.length), start);
}
