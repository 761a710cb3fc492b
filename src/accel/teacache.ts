/**
 * TeaCache (Liu et al., arXiv 2411.19108; official code ali-vilab/TeaCache, e.g. TeaCache4FLUX).
 * At each model call the first block's timestep-modulated input (its self-attention's normalised,
 * shifted and scaled tokens) is compared with the previous call's: the relative L1 change, rescaled
 * by a polynomial fitted to the model, accumulates; while the sum stays under rel_l1_thresh the
 * whole block stack is skipped and the residual (stack output − input) of the last computed call
 * is added instead; once it reaches the threshold the call computes and the sum restarts. The
 * first and last calls always compute. The modulated input comes from a probe of block 0's
 * self-attention segment (runtime/plan.ts `around`), which costs a norm and a modulation.
 *
 * `coefficients` are numpy.poly1d's, highest power first, separated by ':' (a comma separates knobs);
 * the default "1:0" is no rescaling.
 * Calls another composed method needs full (TGATE's gate) compute.
 */
import { InputError } from '../errors.ts';
import type { TensorLike } from '../runtime/executor.ts';
import type { Accelerator, PlanContext, RunHooks } from '../runtime/plan.ts';
import type { MethodDefinition } from './method.ts';
import { SPAN_CACHE_CLAIMS, blockChain, modulatedInputProbe, passedOn, tokenArithmetic } from './span-cache.ts';

export type TeaCacheParams = {
  rel_l1_thresh: number;
  coefficients: string;
};

export const TEACACHE_DEFAULTS: TeaCacheParams = { rel_l1_thresh: 0.3, coefficients: '1:0' };

/** numpy.poly1d from "c_n:…:c_1:c_0" (highest power first); `where` names the knob in errors. */
export function polynomial(text: string, where: string): (x: number) => number {
  const cs = text.split(':').map((c) => (c.trim() === '' ? Number.NaN : Number(c)));
  if (cs.length > 16 || cs.some((c) => !Number.isFinite(c))) {
    throw new InputError(where, 'wrong value', 'up to 16 numbers separated by ":", highest power first (numpy.poly1d), e.g. 1:0', JSON.stringify(text));
  }
  return (x) => cs.reduce((acc, c) => acc * x + c, 0);
}

export function teaCache(p: TeaCacheParams): Accelerator {
  const rescale = polynomial(p.coefficients, 'accel teacache:coefficients');
  let blocks = new Map<string, number>();
  return {
    name: 'teacache',
    ...SPAN_CACHE_CLAIMS,
    check(model) {
      blocks = blockChain(model, 'accel teacache', { head: 0, tail: 0 });
    },
    begin<T extends TensorLike>(context: PlanContext<T>): RunHooks<T> {
      const { exec, ops, run } = context;
      const last = blocks.size - 1;
      const calls = run.calls ?? Number.POSITIVE_INFINITY;
      const { difference, sum } = tokenArithmetic(exec, 'teacache');
      let call = -1;
      let skip = false;
      let accumulated = 0;
      let previousInput: T | undefined;
      let stackInput: T | undefined;
      let residualOfStack: T | undefined;
      let cachedCalls = 0;
      return {
        async around(segment, at, next, residual, probe) {
          const index = blocks.get(segment.role.block);
          if (index === undefined || (!residual && !segment.role.passThrough)) return next();
          if (!residual) return skip ? passedOn(segment, residual) : next();
          const tokens = segment.inputs[residual.residual];
          if (index === 0 && segment.role.blockInput !== undefined && at.call !== call) {
            call = at.call;
            const { h } = await probe(modulatedInputProbe());
            const edge = at.call === 0 || at.call === calls - 1 || run.fullPassCalls.includes(at.call);
            const comparable = previousInput !== undefined && previousInput.dims.join() === h.dims.join() && residualOfStack?.dims.join() === tokens.dims.join();
            if (edge || !comparable) {
              skip = false;
              accumulated = 0;
            } else {
              accumulated += rescale(await ops.relativeL1(h, previousInput!));
              // NaN (shapes alone, no values) computes, as a change past the threshold would.
              skip = accumulated < p.rel_l1_thresh;
              if (!skip) accumulated = 0;
            }
            previousInput = h;
            if (skip) cachedCalls++;
            else stackInput = tokens;
          }
          const end = index === last && segment.role.layer === 'feed-forward';
          if (skip) return passedOn(segment, residual, end ? await sum(tokens, residualOfStack!) : tokens);
          const out = await next();
          if (end) residualOfStack = await difference(out[residual.result], stackInput!);
          return out;
        },
        held: () => [previousInput, residualOfStack].filter((t): t is T => t !== undefined),
        stats: () => ({ cachedCalls }),
        summary: () => (cachedCalls ? `${cachedCalls} model calls skipped every block (cached residual)` : undefined),
      };
    },
  };
}

export const TEACACHE: MethodDefinition<TeaCacheParams> = {
  name: 'teacache',
  abbreviation: 'TC',
  paper: 'TeaCache (arXiv 2411.19108)',
  knobs: {
    rel_l1_thresh: { type: 'number', min: 0, max: 100, doc: 'skip while the accumulated rescaled change of block 0\'s modulated input stays under this' },
    coefficients: { type: 'string', doc: 'the rescaling polynomial, highest power first, ":"-separated (numpy.poly1d), e.g. 2:0.5:0' },
  },
  defaults: TEACACHE_DEFAULTS,
  create: teaCache,
};

/**
 * TeaCache's calibration, as a plan that changes nothing: per model call after the first, the
 * relative L1 change of block 0's modulated input (x) and of the block stack's output (y), the
 * pairs its rescaling polynomial is fitted to (src/tune/teacache-calibration.ts).
 */
export function teaCacheRecorder(): { plan: Accelerator; samples: { x: number; y: number }[] } {
  const samples: { x: number; y: number }[] = [];
  let blocks = new Map<string, number>();
  const plan: Accelerator = {
    name: 'teacache-calibration',
    check(model) {
      blocks = blockChain(model, '--method teacache', { head: 0, tail: 0 });
    },
    begin<T extends TensorLike>({ ops }: PlanContext<T>): RunHooks<T> {
      const last = blocks.size - 1;
      let call = -1;
      let previousInput: T | undefined;
      let previousOutput: T | undefined;
      let x = Number.NaN;
      return {
        async around(segment, at, next, residual, probe) {
          const index = blocks.get(segment.role.block);
          if (index === undefined || !residual) return next();
          if (index === 0 && segment.role.blockInput !== undefined && at.call !== call) {
            call = at.call;
            const { h } = await probe(modulatedInputProbe());
            x = previousInput ? await ops.relativeL1(h, previousInput) : Number.NaN;
            previousInput = h;
          }
          const out = await next();
          if (index === last && segment.role.layer === 'feed-forward') {
            const tokens = out[residual.result];
            if (previousOutput && Number.isFinite(x)) samples.push({ x, y: await ops.relativeL1(tokens, previousOutput) });
            previousOutput = tokens;
          }
          return out;
        },
        held: () => [previousInput, previousOutput].filter((t): t is T => t !== undefined),
      };
    },
  };
  return { plan, samples };
}
