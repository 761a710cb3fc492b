/**
 * Whole-run MAC accounting without weights: the denoiser's forward (a U-Net or a diffusion
 * transformer) is run dry once per model call, through the accelerator's plan, with the batch the
 * plan gives each call (CFG or not); segments a plan skips (a cut pass) or answers from a cache
 * cost what they run.
 */
import { addMacs, zeroMacs, type MacCount } from '../graph/builder.ts';
import { DryExecutor } from '../runtime/dry-executor.ts';
import type { Executor, ShapedTensor } from '../runtime/executor.ts';
import { PlannedExecutor, combine, dryRehearsal, shapedOps, type Accelerator } from '../runtime/plan.ts';
import type { ModelDeclaration } from '../runtime/protocol.ts';

/** What a whole-run count needs of a model: its declaration and a forward pass on shapes. */
export interface Denoiser {
  readonly declaration: ModelDeclaration;
  forwardShapes(exec: Executor<ShapedTensor>, o: { batch: number; latentHeight: number; latentWidth: number; textEmbedsDim?: number; tokens?: number }): Promise<ShapedTensor>;
}

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
  /** Text tokens per prompt (PixArt's max_sequence_length). */
  tokens?: number;
  /** Inference steps, for plans that spread over them (DeepCache non-uniform); default `calls`. */
  steps?: number;
  /** Each call's timestep, for plans that act on noise levels (Skip-Cache's close/start); unknown if absent. */
  timesteps?: readonly number[];
}

export interface RunMacs {
  total: MacCount;
  perCall: MacCount[];
  cfgCalls: number;
  /** What the plan did (PlannedExecutor.report): segment calls reused, shallow passes, merged blocks, ... */
  stats: Record<string, number>;
}

export async function wholeRunMacs(model: Denoiser, o: RunMacsOptions): Promise<RunMacs> {
  const plan = o.accelerator ?? combine([]);
  const run = { steps: o.steps ?? o.calls, calls: o.calls, timesteps: o.timesteps };
  const shapes = (batch: number) => ({ batch, latentHeight: o.latentHeight, latentWidth: o.latentWidth, textEmbedsDim: o.textEmbedsDim, tokens: o.tokens });
  plan.check?.(model.declaration, { ...run, fullPassCalls: plan.fullPassCalls ?? [] });
  await plan.prepare?.(dryRehearsal((exec) => model.forwardShapes(exec, shapes(o.cfg ? 2 * o.batch : o.batch)), run));
  const dry = new DryExecutor();
  const planned = new PlannedExecutor(dry, plan, shapedOps, run);
  const total = zeroMacs();
  const perCall: MacCount[] = [];
  let cfgCalls = 0;
  for (let s = 0; s < o.calls; s++) {
    const cfg = o.cfg && (plan.cfgActive?.(s) ?? true);
    if (cfg) cfgCalls++;
    planned.call = s;
    planned.cfg = cfg;
    const first = dry.calls.length;
    await model.forwardShapes(planned, shapes(cfg ? 2 * o.batch : o.batch));
    const macs = zeroMacs();
    for (const r of dry.calls.slice(first)) addMacs(macs, r.macs);
    perCall.push(macs);
    addMacs(total, macs);
  }
  return { total, perCall, cfgCalls, stats: planned.report().stats };
}
