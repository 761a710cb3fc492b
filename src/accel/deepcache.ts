/**
 * DeepCache (Ma et al., arXiv 2312.00858; official code horseee/DeepCache): the U-Net's deep
 * features change slowly between denoising steps, so most model calls run only a shallow branch and
 * take the feature entering the up path from the last full pass.
 *
 * Branches, as the official plug-in `DeepCacheSDHelper` numbers them (`cache_branch_id`, from the
 * shallowest): the down path's outputs in order — each resnet(+attention) pair, then the block's
 * downsampler — are positions 0, 1, 2, ...; branch b recomputes `conv_in`, the first b positions and
 * the up-path layers whose skip connections they (and conv_in) feed; the mid block and everything
 * deeper come from the cache. With SD's 2 layers per block this is the helper's
 * `cache_block_id = b // 3, cache_layer_id = b % 3`; the older pipeline code's
 * (`cache_layer_id` = block L, `cache_block_id` = layer K) is branch 3L + K + 1, so the paper's SD
 * setting (0, 0) is branch 1 and the helper's default branch 0 is shallower still (conv_in and the
 * last up layer only). With other layer counts per block the branch still counts down-path
 * outputs (the helper's split by 3 would not line up). The deepest branch skips the mid block
 * alone; deeper ones are refused. The branches are the model's declared long skips (skip 0 is
 * conv_in's output): the cut itself is LongSkips' (runtime/protocol.ts), which Skip-Cache on
 * Skip-DiT uses too.
 *
 * Schedules, over 0-based model calls c:
 * - uniform (the helper's `skip_mode='uniform'`): full pass when (c − r) % cache_interval = 0,
 *   r being the latest restart (0, or a call another method forces, below).
 * - non-uniform (the pipeline's `uniform=False, pow, center`): ceil(steps / cache_interval) full
 *   passes at `sample_from_quad_center(steps, ·, center, pow)`, denser around `center` (see
 *   deepcache-schedule.ts); needs the run's step count (PlannedExecutor.steps). The official
 *   plug-in helper has no non-uniform mode; the older pipeline code has, with these knobs.
 * Calls count model calls, as the pipeline code does (the helper looks the timestep up in the
 * scheduler's list instead, which differs only for schedulers repeating a timestep, e.g. PNDM's
 * second call).
 *
 * With TGATE (the T-GATE repo's SD_DeepCache.py): the helper is reset at TGATE's calls gate_step−1
 * and gate_step, i.e. a full pass there (all cross-attention outputs get cached; the batch drops the
 * CFG half) and the uniform schedule restarts. Here any composed method lists such calls in
 * `fullPassCalls`.
 */
import { InputError } from '../errors.ts';
import type { Accelerator, BranchDecision, RunInfo } from '../runtime/plan.ts';
import { sampleFromQuadCenter } from './deepcache-schedule.ts';
import type { MethodDefinition } from './method.ts';

export { sampleFromQuadCenter };

export type DeepCacheParams = {
  cache_interval: number;
  cache_branch_id: number;
  uniform: boolean;
  pow: number;
  center: number;
};

/**
 * cache_interval 3 / branch 0 as the diffusers docs and T-GATE's loader; pow 1.4 / center 15 as the
 * official SD script's non-uniform setting (with cache_interval 5, 50 PLMS steps).
 */
export const DEEPCACHE_DEFAULTS: DeepCacheParams = { cache_interval: 3, cache_branch_id: 0, uniform: true, pow: 1.4, center: 15 };

/** The model calls of a non-uniform schedule that run a full pass (the official `interval_seq`). */
export function nonUniformFullCalls(p: DeepCacheParams, steps: number): number[] {
  if (p.cache_interval === 1) return Array.from({ length: steps }, (_, i) => i);
  const slow = Math.ceil(steps / p.cache_interval);
  return sampleFromQuadCenter(steps, slow, p.center, p.pow).indices.sort((a, b) => a - b);
}

export function deepcache(p: DeepCacheParams): Accelerator {
  let nonUniform: { steps: number; full: Set<number> } | undefined;
  const isFull = (call: number, run: RunInfo): boolean => {
    if (run.fullPassCalls.includes(call)) return true;
    if (p.uniform) {
      const restart = Math.max(0, ...run.fullPassCalls.filter((c) => c <= call));
      return (call - restart) % p.cache_interval === 0;
    }
    if (run.steps === undefined) {
      throw new Error('deepcache:uniform=false needs the run\'s number of inference steps: give the PlannedExecutor the run\'s steps (RunMacsOptions.steps)');
    }
    if (nonUniform?.steps !== run.steps) nonUniform = { steps: run.steps, full: new Set(nonUniformFullCalls(p, run.steps)) };
    return nonUniform.full.has(call);
  };
  return {
    name: 'deepcache',
    claims: { cut: 'cut the U-Net at a branch' },
    check(model) {
      const skips = model.longSkips;
      const where = 'accel deepcache:cache_branch_id';
      if (!skips) throw new InputError(where, `this ${model.kind} has no long skip connections to cut`, 'a U-Net');
      if (p.cache_branch_id > skips.maxBranch) {
        throw new InputError(where, `beyond this ${model.kind}'s depth (${skips.describe})`, `0 to ${skips.maxBranch}`, `${p.cache_branch_id}`);
      }
    },
    branch: (call: number, run: RunInfo): BranchDecision => ({ branch: p.cache_branch_id, reuse: !isFull(call, run) }),
  };
}

export const DEEPCACHE: MethodDefinition<DeepCacheParams> = {
  name: 'deepcache',
  abbreviation: 'DC',
  paper: 'DeepCache (arXiv 2312.00858)',
  knobs: {
    cache_interval: { type: 'int', min: 1, max: 10_000, doc: 'model calls per full U-Net pass (1 = every call full)' },
    cache_branch_id: { type: 'int', min: 0, max: 64, doc: 'branch recomputed on the other calls, 0 = shallowest (see src/accel/deepcache.ts)' },
    uniform: { type: 'bool', doc: 'true: a full pass every cache_interval calls; false: spaced by pow around center' },
    pow: { type: 'number', min: 1, minExclusive: true, max: 10, doc: 'non-uniform spacing exponent' },
    center: { type: 'int', min: 0, max: 10_000, doc: 'non-uniform: step where full passes are densest' },
  },
  defaults: DEEPCACHE_DEFAULTS,
  create: deepcache,
};
