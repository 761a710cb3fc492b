/**
 * First-Block-Cache / DBCache (ParaAttention's First Block Cache as diffusers' hooks/first_block_cache.py
 * applies it; cache-dit's DBCache knob names). At every model call the first Fn transformer blocks
 * run; their residual (output − input) is compared with the one of the last fully computed call:
 * mean |r − r_prev| / mean |r_prev| ≤ residual_diff_threshold → the blocks after them up to the last
 * Bn are skipped and their residual from the last full call is added instead; the last Bn blocks
 * always run. Fn = 1, Bn = 0 with no warm-up and no cap is exactly diffusers' FirstBlockCacheConfig.
 * The residual kept for comparison is updated only on calls that compute the rest, as diffusers does.
 * Calls another composed method needs full (TGATE's gate) compute everything.
 *
 * A decision from tensor values, through the plan's `around` hooks (runtime/plan.ts): the blocks'
 * segments are answered without running (their input passes through) while skipped.
 */
import { InputError } from '../errors.ts';
import type { Accelerator, PlanContext, RunHooks } from '../runtime/plan.ts';
import type { TensorLike } from '../runtime/executor.ts';
import type { MethodDefinition } from './method.ts';
import { SPAN_CACHE_CLAIMS, blockChain, passedOn, tokenArithmetic } from './span-cache.ts';

export type FirstBlockCacheParams = {
  residual_diff_threshold: number;
  Fn_compute_blocks: number;
  Bn_compute_blocks: number;
  max_warmup_steps: number;
  max_continuous_cached_steps: number;
};

/** diffusers' FirstBlockCacheConfig: threshold 0.05, one head block, nothing always computed at the end. */
export const FIRST_BLOCK_CACHE_DEFAULTS: FirstBlockCacheParams = {
  residual_diff_threshold: 0.05, Fn_compute_blocks: 1, Bn_compute_blocks: 0, max_warmup_steps: 0, max_continuous_cached_steps: -1,
};

export function firstBlockCache(p: FirstBlockCacheParams): Accelerator {
  let blocks = new Map<string, number>();
  return {
    name: 'fbcache',
    ...SPAN_CACHE_CLAIMS,
    check(model) {
      const chain = blockChain(model, 'accel fbcache', { head: p.Fn_compute_blocks, tail: p.Bn_compute_blocks, knobs: 'Bn_compute_blocks = Fn_compute_blocks' });
      const depth = chain.size;
      if (p.Fn_compute_blocks + p.Bn_compute_blocks >= depth) {
        throw new InputError('accel fbcache:Fn_compute_blocks', `with Bn_compute_blocks ${p.Bn_compute_blocks} leaves no block of ${depth} to skip`,
          `Fn + Bn < ${depth}`, `${p.Fn_compute_blocks}`);
      }
      blocks = chain;
    },
    begin<T extends TensorLike>(context: PlanContext<T>): RunHooks<T> {
      const { exec, ops, run } = context;
      const depth = blocks.size;
      const spanEnd = depth - p.Bn_compute_blocks - 1;
      const { difference, sum } = tokenArithmetic(exec, 'fbcache');
      let call = -1;
      let skip = false;
      let headIn: T | undefined;
      let headOut: T | undefined;
      let headResidual: T | undefined;
      let spanResidual: T | undefined;
      let continuous = 0;
      let cachedCalls = 0;
      return {
        async around(segment, at, next, residual) {
          const index = blocks.get(segment.role.block);
          if (index === undefined || (!residual && !segment.role.passThrough)) return next();
          if (!residual) return skip && index >= p.Fn_compute_blocks && index <= spanEnd ? passedOn(segment, residual) : next();
          if (at.call !== call) {
            call = at.call;
            skip = false;
          }
          const tokens = segment.inputs[residual.residual];
          const blockEnd = segment.role.layer === 'feed-forward';
          if (index === 0 && segment.role.blockInput !== undefined) headIn = tokens;
          if (index < p.Fn_compute_blocks) {
            const out = await next();
            if (index === p.Fn_compute_blocks - 1 && blockEnd) {
              headOut = out[residual.result];
              const r = await difference(headOut, headIn!);
              // Shapes change with the CFG batch: a residual of another shape is no reference.
              const comparable = headResidual !== undefined && headResidual.dims.join() === r.dims.join() && spanResidual?.dims.join() === r.dims.join();
              const change = comparable ? await ops.relativeL1(r, headResidual!) : Number.NaN;
              skip = change <= p.residual_diff_threshold && at.call >= p.max_warmup_steps && !run.fullPassCalls.includes(at.call) &&
                (p.max_continuous_cached_steps < 0 || continuous < p.max_continuous_cached_steps);
              if (skip) {
                continuous++;
                cachedCalls++;
              } else {
                continuous = 0;
                headResidual = r;
              }
            }
            return out;
          }
          if (index > spanEnd) return next();
          if (skip) {
            const end = index === spanEnd && blockEnd;
            return passedOn(segment, residual, end ? await sum(tokens, spanResidual!) : tokens);
          }
          const out = await next();
          if (index === spanEnd && blockEnd) spanResidual = await difference(out[residual.result], headOut!);
          return out;
        },
        held: () => [headResidual, spanResidual].filter((t): t is T => t !== undefined),
        stats: () => ({ cachedCalls }),
        summary: () => (cachedCalls ? `${cachedCalls} model calls ran blocks ${p.Fn_compute_blocks}–${spanEnd} from the cache` : undefined),
      };
    },
  };
}

export const FIRST_BLOCK_CACHE: MethodDefinition<FirstBlockCacheParams> = {
  name: 'fbcache',
  abbreviation: 'FB',
  paper: 'First-Block-Cache (ParaAttention) / DBCache (cache-dit)',
  knobs: {
    residual_diff_threshold: { type: 'number', min: 0, max: 10, doc: 'skip while the first blocks\' residual changed by at most this (relative L1)' },
    Fn_compute_blocks: { type: 'int', min: 1, max: 1_000, doc: 'first blocks always computed; their residual decides' },
    Bn_compute_blocks: { type: 'int', min: 0, max: 1_000, doc: 'last blocks always computed' },
    max_warmup_steps: { type: 'int', min: 0, max: 10_000, doc: 'first model calls always computed in full' },
    max_continuous_cached_steps: { type: 'int', min: -1, max: 10_000, doc: 'at most this many cached calls in a row (-1: no limit)' },
  },
  defaults: FIRST_BLOCK_CACHE_DEFAULTS,
  create: firstBlockCache,
};
