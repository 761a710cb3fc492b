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
 * averages two different images when CFG is off).
 */
import type { Accelerator, Decision } from './plan.ts';

export interface TgateParams {
  gate_step: number;
  sp_interval: number;
  fi_interval: number;
  warm_up: number;
  cache_self_attn: boolean;
}

export const TGATE_DEFAULTS: TgateParams = { gate_step: 10, sp_interval: 5, fi_interval: 1, warm_up: 2, cache_self_attn: true };

const isCross = (segment: string) => segment.endsWith('.attn2');
const isSelf = (segment: string) => segment.endsWith('.attn1');

export function tgate(p: TgateParams): Accelerator {
  const gate = p.gate_step;
  return {
    name: 'tgate',
    cfgActive: (s) => s < gate,
    decide(segment: string, s: number, cfg: boolean): Decision {
      const atGate = cfg ? 'cache-cfg-mean' : 'cache';
      if (isCross(segment)) {
        if (s < gate - 1) return 'compute';
        return s === gate - 1 ? atGate : 'reuse';
      }
      if (!isSelf(segment) || !p.cache_self_attn) return 'compute';
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
