/**
 * Peak memory of a generation, estimated before it starts from the graphs its segments will build
 * (shapes alone, src/runtime/dry-executor.ts): the weights the sessions hold as fp32, plus the
 * working set of the largest segment call. Runs past the limit (the machine's memory unless the
 * request says otherwise) are refused with the estimate, instead of failing in ONNX Runtime
 * minutes later.
 */
import * as os from 'node:os';
import { InputError } from '../errors.ts';
import type { Executor, ShapedTensor } from '../runtime/executor.ts';
import { DryExecutor } from '../runtime/dry-executor.ts';
import type { AutoencoderKL } from '../models/autoencoder-kl.ts';

export interface MemoryEstimate {
  bytes: number;
  weightBytes: number;
  /** The segment call with the largest working set. */
  largest: { name: string; bytes: number; attentionScoreBytes: number };
}

/** The estimate for weights of `weightBytes` and the model calls `forwards` make (each on shapes alone). */
export async function estimateMemory(weightBytes: number, forwards: ((exec: Executor<ShapedTensor>) => Promise<unknown>)[]): Promise<MemoryEstimate> {
  let largest = { name: '', bytes: 0, attentionScoreBytes: 0 };
  for (const forward of forwards) {
    const dry = new DryExecutor();
    await forward(dry);
    for (const call of dry.calls) {
      if (call.workingBytes > largest.bytes) largest = { name: call.name, bytes: call.workingBytes, attentionScoreBytes: call.attentionScoreBytes };
    }
  }
  return { bytes: weightBytes + largest.bytes, weightBytes, largest };
}

export function gib(bytes: number): string {
  return bytes >= 2 ** 40 ? `${(bytes / 2 ** 40).toFixed(1)} TiB` : `${(bytes / 2 ** 30).toFixed(1)} GiB`;
}

/**
 * Refuses a run whose estimate exceeds `limit` bytes (default: this machine's memory). `what`
 * names the request fields that set the size (e.g. "width/height").
 */
export function checkMemory(estimate: MemoryEstimate, limit: number | undefined, what: string, found: string): void {
  if (limit !== undefined && !(typeof limit === 'number' && Number.isFinite(limit) && limit > 0)) {
    throw new InputError('memoryLimit', 'wrong value', 'a positive number of bytes', String(limit));
  }
  const max = limit ?? os.totalmem();
  if (estimate.bytes <= max) return;
  const scores = estimate.largest.attentionScoreBytes > estimate.largest.bytes / 2 ? ` of which attention scores ${gib(estimate.largest.attentionScoreBytes)}` : '';
  throw new InputError(what, `needs about ${gib(estimate.bytes)} at its peak (weights ${gib(estimate.weightBytes)}, ` +
    `${estimate.largest.name} ${gib(estimate.largest.bytes)}${scores}), over the limit of ${gib(max)}${limit === undefined ? ' (this machine\'s memory)' : ''}`,
  'a smaller size or batch, or a higher memory limit', found);
}

/** The VAE decoding one image of a latent batch `latentDims` [B, C, h, w], on shapes alone. */
export function vaeDecodeShapes(vae: AutoencoderKL, latentDims: number[]): (exec: Executor<ShapedTensor>) => Promise<unknown> {
  return (exec) => vae.decode(exec, { dims: [1, ...latentDims.slice(1)], type: 'float32' });
}
