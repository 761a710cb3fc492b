/**
 * FORA (Selvaraju et al., arXiv 2407.01425; official code prathebaselva/FORA): static caching of
 * every transformer sub-layer's output. Every `cache_interval` model calls the attention and
 * feed-forward outputs of every block are computed and cached (after the output projection,
 * before the residual add — on DiTs, before the gate); on the calls between, each sub-layer
 * reuses its cached output, costing one addition. As in the official code, the interval counts
 * the sampler's step index down (t = calls − 1 − c for model call c): call c refreshes when it is
 * the first or when t % cache_interval = 0, so the last call always refreshes.
 *
 * Written against the plan protocol alone (runtime/plan.ts): it knows sub-layers only by the
 * roles models declare, so it runs on any model that declares them.
 */
import type { Accelerator, Decision, RunInfo, SegmentRef } from '../runtime/plan.ts';
import type { MethodDefinition } from './method.ts';

export type ForaParams = {
  cache_interval: number;
};

const FORA_DEFAULTS: ForaParams = { cache_interval: 3 };

/** Whether model call `call` of a run of `calls` refreshes the cache. */
export function foraRefreshes(p: ForaParams, call: number, calls: number): boolean {
  return call === 0 || (calls - 1 - call) % p.cache_interval === 0;
}

export function fora(p: ForaParams): Accelerator {
  return {
    name: 'fora',
    claims: { 'residual-cache': 'cache sub-layer outputs', 'block-schedule': 'refresh every block\'s outputs on a schedule of calls' },
    check(_model, run) {
      if (run.calls === undefined) throw new Error('fora needs the run\'s number of model calls');
    },
    decide(_segment: SegmentRef, call: number, _cfg: boolean, run: RunInfo): Decision {
      if (p.cache_interval === 1) return 'compute'; // every call refreshes: nothing would reuse a cache
      return foraRefreshes(p, call, run.calls!) ? 'cache' : 'reuse';
    },
  };
}

export const FORA: MethodDefinition<ForaParams> = {
  name: 'fora',
  abbreviation: 'FO',
  paper: 'FORA (arXiv 2407.01425)',
  knobs: {
    cache_interval: { type: 'int', min: 1, max: 10_000, doc: 'model calls per refresh of every attention and feed-forward output (1 = no caching)' },
  },
  defaults: FORA_DEFAULTS,
  create: fora,
};
