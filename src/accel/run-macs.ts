/**
 * Whole-run MAC accounting without weights: the U-Net's forward is run dry once per model call,
 * through the accelerator's plan, with the batch the plan gives each call (CFG or not); segments a
 * plan skips (DeepCache's shallow passes) or answers from a cache cost what they run.
 */
import { addMacs, zeroMacs, type MacCount } from '../graph/builder.ts';
import type { UNet2DConditionModel } from '../models/unet2d-condition.ts';
import { DryExecutor } from '../runtime/dry-executor.ts';
import { shaped } from '../runtime/executor.ts';
import { PlannedExecutor, combine, shapedCacheOps, type Accelerator } from './plan.ts';

export interface RunMacsOptions {
  calls: number;
  /** Images per call (without the CFG doubling). */
  batch: number;
  latentHeight: number;
  latentWidth: number;
  /** Whether the pipeline uses classifier-free guidance at all. */
  cfg: boolean;
  accelerator?: Accelerator;
  /** Width of the pooled text embedding for SDXL-style added conditioning. */
  textEmbedsDim?: number;
  /** Inference steps, for plans that spread over them (DeepCache non-uniform); default `calls`. */
  steps?: number;
}

export interface RunMacs {
  total: MacCount;
  perCall: MacCount[];
  cfgCalls: number;
  reusedSegments: number;
  /** Calls that ran a shallow branch on a cached deep feature (DeepCache). */
  shallowPasses: number;
  /** Transformer-block runs with merged tokens (ToMe). */
  mergedBlocks: number;
}

export async function wholeRunMacs(unet: UNet2DConditionModel, o: RunMacsOptions): Promise<RunMacs> {
  const dry = new DryExecutor();
  const planned = new PlannedExecutor(dry, o.accelerator ?? combine([]), shapedCacheOps);
  planned.steps = o.steps ?? o.calls;
  planned.calls = o.calls;
  o.accelerator?.checkRun?.(o.calls);
  const total = zeroMacs();
  const perCall: MacCount[] = [];
  let cfgCalls = 0;
  const c = unet.config;
  for (let s = 0; s < o.calls; s++) {
    const cfg = o.cfg && (o.accelerator?.cfgActive(s) ?? true);
    if (cfg) cfgCalls++;
    const b = cfg ? 2 * o.batch : o.batch;
    planned.call = s;
    planned.cfg = cfg;
    const first = dry.calls.length;
    const addedShapes = unet.addedConditioningShapes(b, o.textEmbedsDim);
    const added = addedShapes ? { textEmbeds: shaped(addedShapes.textEmbeds), timeIds: shaped(addedShapes.timeIds) } : undefined;
    await unet.forward(planned, shaped([b, c.inChannels, o.latentHeight, o.latentWidth]), shaped([b]), shaped([b, 77, c.crossAttentionDim[0]]), added);
    const macs = zeroMacs();
    for (const r of dry.calls.slice(first)) addMacs(macs, r.macs);
    perCall.push(macs);
    addMacs(total, macs);
  }
  return { total, perCall, cfgCalls, reusedSegments: planned.reused, shallowPasses: planned.shallowPasses, mergedBlocks: planned.mergedBlocks };
}

/**
 * The attention maps one model call would store, by segment, from shapes alone: a dry pass of the
 * CFG batch (the largest) through a plan that stores every map the accelerator reuses.
 */
export async function attentionMapSizes(unet: UNet2DConditionModel, o: RunMacsOptions & { accelerator: Accelerator }): Promise<{ segment: string; bytes: number }[]> {
  const dry = new DryExecutor();
  const wanted = o.accelerator;
  const storeAll: Accelerator = {
    name: 'map sizes', cfgActive: () => true, decide: () => 'compute', mapType: wanted.mapType,
    attentionMap: (segment, _call, calls) =>
      (Array.from({ length: calls }, (_, s) => wanted.attentionMap!(segment, s, calls)).some((d) => d !== 'compute') ? 'store' : 'compute'),
  };
  const planned = new PlannedExecutor(dry, storeAll, shapedCacheOps);
  planned.calls = o.calls;
  const b = o.cfg ? 2 * o.batch : o.batch;
  const c = unet.config;
  const addedShapes = unet.addedConditioningShapes(b, o.textEmbedsDim);
  const added = addedShapes ? { textEmbeds: shaped(addedShapes.textEmbeds), timeIds: shaped(addedShapes.timeIds) } : undefined;
  await unet.forward(planned, shaped([b, c.inChannels, o.latentHeight, o.latentWidth]), shaped([b]), shaped([b, 77, c.crossAttentionDim[0]]), added);
  return planned.storedMaps();
}
