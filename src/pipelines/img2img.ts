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
import type { OrtExecutor } from '../runtime/ort-executor.ts';
import type { RunShape } from '../runtime/plan.ts';
import type { Scheduler } from '../schedulers/index.ts';
import { LIMITS, floats, type BatchNoise, type GeneratedImage, type Latents, type PromptRequest } from './common.ts';

const f32 = Math.fround;

/** diffusers' default strength for StableDiffusionImg2ImgPipeline (its SDXL pipeline defaults to 0.3). */
export const DEFAULT_STRENGTH = 0.8;

/** An img2img request's own part. */
export interface Img2Img {
  image: GeneratedImage;
  strength: number;
}

/** The img2img part of a request, checked; undefined for text-to-image. */
export function img2imgOf(request: PromptRequest): Img2Img | undefined {
  if (request.image === undefined) {
    if (request.strength !== undefined) throw new InputError('strength', 'is for img2img', 'an image with it', describe(request.strength));
    return undefined;
  }
  const image = checkImage(request.image);
  if (request.latents) throw new InputError('latents', 'cannot start an img2img run (the image gives the starting latents)', 'latents or image', 'both');
  return { image, strength: strengthOf(request.strength) };
}

/** The request's init image, checked: planar RGB [3, height, width] with values in [0, 1]. */
function checkImage(image: unknown): GeneratedImage {
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
function strengthOf(value: unknown): number {
  const s = value ?? DEFAULT_STRENGTH;
  if (typeof s !== 'number' || !(s > 0 && s <= 1)) throw new InputError('strength', 'wrong value', 'a number in (0, 1]', describe(value));
  return s;
}

/**
 * Where the denoising loop starts: position 0, or for img2img (diffusers' get_timesteps, for
 * first-order schedulers) the position after which int(steps × strength) steps remain, refused when
 * that is none. `run` is what the accelerations see: the steps, model calls and timesteps that run;
 * `why` explains them for error messages.
 */
export function scheduleStart(scheduler: Scheduler, img2img: Img2Img | undefined): { start: number; run: RunShape & { calls: number }; why?: string } {
  const total = scheduler.timesteps.length;
  const runFrom = (start: number) => ({ steps: scheduler.steps - start, calls: total - start, timesteps: scheduler.timesteps.slice(start) });
  if (!img2img) return { start: 0, run: runFrom(0) };
  const { steps } = scheduler;
  const { strength } = img2img;
  const remaining = Math.min(Math.floor(steps * strength), steps);
  if (remaining === 0) {
    throw new InputError('strength', `runs no step of ${steps} (int(steps × strength) = 0)`, `at least ${(1 / steps).toPrecision(3)} for ${steps} steps, or more steps`, `${strength}`);
  }
  const start = steps - remaining;
  return { start, run: runFrom(start), why: `img2img at strength ${strength} runs the last ${total - start} of the schedule's ${total} model calls` };
}

/**
 * The latents the loop starts from, [B, C, h, w]: text-to-image's noise (or the given latents) times
 * the scheduler's initial sigma, as diffusers does; or img2img's noised init image (initLatents).
 */
export async function startingLatents(o: { img2img?: Img2Img; given?: Latents; dims: number[]; scheduler: Scheduler; start: number; noise: BatchNoise;
  vae: AutoencoderKL; vaeExec: OrtExecutor; width: number; height: number }): Promise<Float32Array> {
  if (o.img2img) return initLatents(o.vae, o.vaeExec, o.img2img.image, o.width, o.height, o.dims[0], o.scheduler, o.start, o.noise);
  const size = o.dims.reduce((a, b) => a * b, 1);
  const latents = o.given ? Float32Array.from(o.given.data) : o.noise.draw(size);
  for (let i = 0; i < size; i++) latents[i] *= o.scheduler.initNoiseSigma;
  return latents;
}

/**
 * The starting latents of an img2img batch [batch, C, h, w]: the image at the output size, VAE-encoded
 * once, a posterior sample per image scaled by scaling_factor, noised to position `start` of the schedule.
 */
async function initLatents(vae: AutoencoderKL, exec: OrtExecutor, image: GeneratedImage, width: number, height: number,
  batch: number, scheduler: Scheduler, start: number, noise: BatchNoise): Promise<Float32Array> {
  const resized = resizeLanczos(image, width, height);
  const pixels = resized.data.map((v) => f32(f32(2 * v) - 1));
  const { mean, std } = await vae.encode(exec, new ort.Tensor('float32', pixels, [1, 3, height, width]));
  const [m, s] = [await floats(mean), await floats(std)];
  exec.freeOutputs();
  const per = m.length;
  const sample = noise.draw(batch * per);
  const scale = f32(vae.config.scalingFactor);
  const latents = new Float32Array(batch * per);
  for (let b = 0; b < batch; b++) {
    for (let k = 0; k < per; k++) latents[b * per + k] = f32(scale * f32(m[k] + f32(s[k] * sample[b * per + k])));
  }
  return scheduler.addNoise(latents, noise.draw(latents.length), start);
}
