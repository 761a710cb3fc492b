/**
 * Skip-Cache (Skip-DiT, arXiv 2411.17616; official code OpenSparseLLMs/Skip-DiT, `DiT_cache` in
 * class-to-image/models.py). On a DiT trained with long skips, a full pass stores the input of
 * block D−k before its skip fusion; the other calls run only blocks 0…k−1 (their outputs are the
 * fresh skips) and D−k…D−1, resuming from the stored feature. The cut is the model's declared long
 * skips (LongSkips, runtime/protocol.ts) at branch k−1, as DeepCache's on U-Nets.
 *
 * The schedule, as the official forward keeps it over model calls: a counter c and the stored
 * feature; a call is full when c % cache_interval = 0, nothing is stored, or its timestep is ≥
 * start_cache_at; c then counts up, and a call whose timestep is ≤ close_cache_at clears both
 * afterwards (so every later call is full). Unlike the official code, nothing outlives a
 * generation. Calls another composed method needs full (TGATE's gate) are full too.
 */
import { InputError } from '../errors.ts';
import type { Accelerator, BranchDecision, RunInfo } from '../runtime/plan.ts';
import type { MethodDefinition } from './method.ts';

export type SkipCacheParams = {
  cache_interval: number;
  skip_at_branch: number;
  close_cache_at: number;
  start_cache_at: number;
};

/** The official DiT_cache's values: N = 2 (its `deepcache` argument), k = 4, close at 20, start at 1000. */
export const SKIP_CACHE_DEFAULTS: SkipCacheParams = { cache_interval: 2, skip_at_branch: 4, close_cache_at: 20, start_cache_at: 1000 };

/** Which of a run's calls are full passes (the official counter, replayed over the run's timesteps). */
export function skipCacheFullCalls(p: SkipCacheParams, run: RunInfo): boolean[] {
  const full: boolean[] = [];
  let counter = 0;
  let stored = false;
  for (let call = 0; call < (run.calls ?? 0); call++) {
    const t = run.timesteps?.[call];
    const isFull = counter % p.cache_interval === 0 || !stored || (t !== undefined && t >= p.start_cache_at) || run.fullPassCalls.includes(call);
    full.push(isFull);
    if (isFull) stored = true;
    counter++;
    if (t !== undefined && t <= p.close_cache_at) {
      counter = 0;
      stored = false;
    }
  }
  return full;
}

export function skipCache(p: SkipCacheParams): Accelerator {
  let schedule: { run: RunInfo; full: boolean[] } | undefined;
  const isFull = (call: number, run: RunInfo) => {
    if (schedule?.run !== run) schedule = { run, full: skipCacheFullCalls(p, run) };
    return schedule.full[call] ?? true;
  };
  return {
    name: 'skip-cache',
    claims: { cut: 'cut the model at a long skip' },
    check(model, run) {
      const where = 'accel skip-cache:skip_at_branch';
      if (!model.longSkips || model.kind === 'U-Net') {
        throw new InputError('accel skip-cache', `this ${model.kind} has no long skip branches between its transformer blocks`,
          model.kind === 'U-Net' ? 'a Skip-DiT (on U-Nets the same cut is deepcache)' : 'a DiT trained with long skips (Skip-DiT)');
      }
      const pairs = model.longSkips.maxBranch + 1;
      if (p.skip_at_branch >= pairs) {
        throw new InputError(where, `${p.skip_at_branch} leaves no block between the ends to skip (${model.longSkips.describe})`, `1 to ${pairs - 1}`, `${p.skip_at_branch}`);
      }
      if (run.calls !== undefined && !skipCacheFullCalls(p, run).includes(false)) {
        throw new InputError('accel skip-cache', `no call of this run of ${run.calls} would reuse the cache (cache_interval ${p.cache_interval}, close_cache_at ${p.close_cache_at}, start_cache_at ${p.start_cache_at})`,
          'a cache_interval and noise levels that leave calls to skip');
      }
    },
    branch: (call: number, run: RunInfo): BranchDecision => ({ branch: p.skip_at_branch - 1, reuse: !isFull(call, run) }),
  };
}

export const SKIP_CACHE: MethodDefinition<SkipCacheParams> = {
  name: 'skip-cache',
  abbreviation: 'SC',
  paper: 'Skip-Cache on Skip-DiT (arXiv 2411.17616)',
  knobs: {
    cache_interval: { type: 'int', min: 1, max: 10_000, doc: 'model calls per full pass (the official DiT_cache\'s deepcache N)' },
    skip_at_branch: { type: 'int', min: 1, max: 1_000, doc: 'blocks run at each end on cached calls: 0…k−1 and D−k…D−1' },
    close_cache_at: { type: 'number', min: -1, max: 100_000, doc: 'after a call at a timestep ≤ this, the cache is cleared (every later call full)' },
    start_cache_at: { type: 'number', min: -1, max: 100_000, doc: 'calls at timesteps ≥ this are full' },
  },
  defaults: SKIP_CACHE_DEFAULTS,
  create: skipCache,
};
