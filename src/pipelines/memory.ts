/**
 * Peak memory of a generation, estimated before it starts from the graphs its segments will build
 * (shapes alone, src/runtime/dry-executor.ts): the weights the sessions hold as fp32, plus the
 * working set of the largest segment call. Runs past the limit (the machine's memory unless the
 * request says otherwise) are refused with the estimate, instead of failing in ONNX Runtime
 * minutes later.
 */
import { InputError } from '../errors.ts';
import { totalMemory } from '../io/files.ts';
import type { Executor, ShapedTensor } from '../runtime/executor.ts';
import { DryExecutor } from '../runtime/dry-executor.ts';
import type { AutoencoderKL } from '../models/autoencoder-kl.ts';
import type { WeightSet } from '../weights/diffusers-folder.ts';

export interface MemoryEstimate {
  bytes: number;
  weightBytes: number;
  /** The float32 RGB images handed back, all held at the end of the run. */
  imageBytes: number;
  /** What the accelerations keep between model calls (caches, attention maps). */
  keptBytes: number;
  /** The segment call with the largest working set. */
  largest: { name: string; bytes: number; attentionScoreBytes: number };
}

/** The estimate for weights of `weightBytes` and the model calls `forwards` make (each on shapes alone). */
async function estimateMemory(weightBytes: number, imageBytes: number, keptBytes: number, forwards: ((exec: Executor<ShapedTensor>) => Promise<unknown>)[]): Promise<MemoryEstimate> {
  let largest = { name: '', bytes: 0, attentionScoreBytes: 0 };
  for (const forward of forwards) {
    const dry = new DryExecutor();
    await forward(dry);
    for (const call of dry.calls) {
      if (call.workingBytes > largest.bytes) largest = { name: call.name, bytes: call.workingBytes, attentionScoreBytes: call.attentionScoreBytes };
    }
  }
  return { bytes: weightBytes + largest.bytes + imageBytes + keptBytes, weightBytes, imageBytes, keptBytes, largest };
}

export function gib(bytes: number): string {
  return bytes >= 2 ** 40 ? `${(bytes / 2 ** 40).toFixed(1)} TiB` : `${(bytes / 2 ** 30).toFixed(1)} GiB`;
}

/**
 * Refuses a run whose estimate exceeds `limit` bytes (default: this machine's memory). `what`
 * names the request fields that set the size (e.g. "width/height").
 */
function checkMemory(estimate: MemoryEstimate, limit: number | undefined, what: string, found: string): void {
  if (limit !== undefined && !(typeof limit === 'number' && Number.isFinite(limit) && limit > 0)) {
    throw new InputError('memoryLimit', 'wrong value', 'a positive number of bytes', String(limit));
  }
  const max = limit ?? totalMemory();
  if (estimate.bytes <= max) return;
  const scores = estimate.largest.attentionScoreBytes > estimate.largest.bytes / 2 ? ` of which attention scores ${gib(estimate.largest.attentionScoreBytes)}` : '';
  const images = estimate.imageBytes >= 2 ** 29 ? `, images ${gib(estimate.imageBytes)}` : '';
  const kept = estimate.keptBytes >= estimate.bytes / 10 ? `, kept by the accelerations between model calls ${gib(estimate.keptBytes)}` : '';
  throw new InputError(what, `needs about ${gib(estimate.bytes)} at its peak (weights ${gib(estimate.weightBytes)}, ` +
    `${estimate.largest.name} ${gib(estimate.largest.bytes)}${scores}${images}${kept}), over the limit of ${gib(max)}${limit === undefined ? ' (this machine\'s memory)' : ''}`,
  `a smaller size or batch${kept ? ', accelerations that keep less (accel)' : ''}, or a higher memoryLimit`, found);
}

/** A --memory-limit flag's GiB as the bytes a request's memoryLimit takes (undefined: none given). */
export function gibBytes(gib: number | undefined): number | undefined {
  return gib === undefined ? undefined : gib * 2 ** 30;
}

/** Float32 bytes of the weights of components whose sessions stay (absent ones count nothing). */
export function residentBytes(components: ({ weights: WeightSet } | undefined)[]): number {
  return components.reduce((sum, c) => sum + (c?.weights.float32Bytes() ?? 0), 0);
}

/**
 * What every pipeline checks before its denoising loop: the weights its sessions keep (`resident`),
 * the denoiser's model call, and unless the output is latents the VAE decoding one image of
 * `latentDims` [B, C, h, w] and the B images handed back (at `imageSize` [width, height] where they
 * are resized to it), against `limit`. `what` names the request fields that set the size.
 */
export async function refuseOverMemory(o: {
  resident: ({ weights: WeightSet } | undefined)[];
  denoise: (exec: Executor<ShapedTensor>) => Promise<unknown>;
  vae: AutoencoderKL;
  latentDims: number[];
  limit: number | undefined;
  what: string;
  output?: 'image' | 'latent';
  imageSize?: [number, number];
  /** What the run's accelerations keep between model calls (Acceleration.keptBytes). */
  keptBytes?: number;
}): Promise<void> {
  const weightBytes = residentBytes(o.resident);
  const decode = (exec: Executor<ShapedTensor>) => o.vae.decode(exec, { dims: [1, ...o.latentDims.slice(1)], type: 'float32' });
  const [batch, , h, w] = o.latentDims;
  const factor = o.vae.downsampleFactor;
  const [width, height] = o.imageSize ?? [w * factor, h * factor];
  const imageBytes = o.output === 'latent' ? 0 : batch * 3 * width * height * 4;
  const forwards = o.output === 'latent' ? [o.denoise] : [o.denoise, decode];
  checkMemory(await estimateMemory(weightBytes, imageBytes, o.keptBytes ?? 0, forwards), o.limit, o.what, `${width}x${height}, ${batch} image${batch > 1 ? 's' : ''}`);
}
