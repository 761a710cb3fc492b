/**
 * TGATE (Liu et al., arXiv 2404.02747; official code HaozheLiu-ST/T-GATE, tgate_utils.py), v2.
 * Attention outputs are cached after the output projection, before the residual add. With 0-based
 * model call s:
 * - s < gate_step−1 (semantics planning): cross-attention computed; self-attention computed while
 *   s < warm_up, cached at s = warm_up, then cached when s % sp_interval = 0 and reused otherwise.
 * - s = gate_step−1: both computed and cached; with CFG the cache is the mean of the two halves.
 * - s ≥ gate_step (fidelity improving): cross-attention reused; self-attention cached when
 *   s % fi_interval = 0, reused otherwise — and the pipeline drops the CFG batch (batch B, no
 *   guidance formula), which is where most of the saving comes from.
 * `cache_self_attn=false` is TGATE v1: only cross-attention is gated.
 * Averaging follows "is CFG active at the gate", not an LCM flag (the official code crashes or
 * averages two different images when CFG is off). Methods that cut the model (DeepCache) run full
 * passes at the gate calls, as T-GATE's SD_DeepCache.py resets DeepCache at gate_step−1 and
 * gate_step.
 */
import type { Accelerator, Decision, SegmentRef } from '../runtime/plan.ts';
import { InputError } from '../errors.ts';
import type { MethodDefinition } from './method.ts';

export type TgateParams = {
  gate_step: number;
  sp_interval: number;
  fi_interval: number;
  warm_up: number;
  cache_self_attn: boolean;
};

export const TGATE_DEFAULTS: MethodDefinition<TgateParams>['defaults'] = { gate_step: 'auto', sp_interval: 5, fi_interval: 1, warm_up: 2, cache_self_attn: true };

export function tgate(p: TgateParams): Accelerator {
  const gate = p.gate_step;
  return {
    name: 'tgate',
    claims: { 'residual-cache': 'cache attention outputs' },
    cfgActive: (s) => s < gate,
    fullPassCalls: [gate - 1, gate],
    check(_model, run) {
      if (run.calls !== undefined && gate >= run.calls) {
        throw new InputError('accel tgate:gate_step', `${gate} leaves no model call after the gate in a run of ${run.calls} (nothing would be reused)`, `gate_step < ${run.calls}`);
      }
    },
    decide({ role }: SegmentRef, s: number, cfg: boolean): Decision {
      const atGate = cfg ? 'cache-cfg-mean' : 'cache';
      if (role.layer === 'cross-attention') {
        if (s < gate - 1) return 'compute';
        return s === gate - 1 ? atGate : 'reuse';
      }
      if (role.layer !== 'self-attention' || !p.cache_self_attn) return 'compute';
      if (s < gate - 1) {
        if (s < p.warm_up) return 'compute';
        if (s === p.warm_up) return 'cache';
        return s % p.sp_interval === 0 ? 'cache' : 'reuse';
      }
      if (s === gate - 1) return atGate;
      if (p.fi_interval === 1) return 'compute'; // refreshed every call: nothing would reuse a cache
      return s % p.fi_interval === 0 ? 'cache' : 'reuse';
    },
  };
}

export const TGATE: MethodDefinition<TgateParams> = {
  name: 'tgate',
  abbreviation: 'TG',
  paper: 'TGATE v2 (arXiv 2404.02747)',
  knobs: {
    gate_step: {
      type: 'int', min: 1, max: 10_000, doc: 'model calls with CFG; cross-attention cached at call gate_step-1, reused after',
      auto: { doc: '2/5 of the model calls (10 of 25, the paper\'s setting)', of: (calls) => Math.max(1, Math.round((2 * calls) / 5)) },
    },
    sp_interval: { type: 'int', min: 1, max: 10_000, doc: 'self-attention refresh interval before the gate' },
    fi_interval: { type: 'int', min: 1, max: 10_000, doc: 'self-attention refresh interval after the gate' },
    warm_up: { type: 'int', min: 0, max: 10_000, doc: 'calls that always compute self-attention' },
    cache_self_attn: { type: 'bool', doc: 'false = TGATE v1 (gate cross-attention only)' },
  },
  defaults: TGATE_DEFAULTS,
  create: tgate,
};
