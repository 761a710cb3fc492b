/**
 * What the span caches (first-block-cache.ts, teacache.ts) share: they skip runs of consecutive
 * transformer blocks on a cached residual, so they need the blocks to form one chain; they add
 * and subtract token tensors on the device; TeaCache probes block 0's modulated input.
 */
import { InputError } from '../errors.ts';
import type { Executor, TensorLike } from '../runtime/executor.ts';
import type { SegmentVariant } from '../runtime/plan.ts';
import type { ModelDeclaration } from '../runtime/protocol.ts';

/** Claims and conflicts of a span cache (runtime/plan.ts composition). */
export const SPAN_CACHE_CLAIMS = {
  claims: { 'span-cache': 'skip spans of transformer blocks on cached residuals' },
  conflicts: {
    cut: 'the blocks it skips are joined by long skips, not one chain',
    'block-schedule': 'a skipped call would leave FORA\'s refresh undone, and its caches stale',
  },
} as const;

/** The model's transformer blocks in order (name → index), refused unless they form one chain. */
export function blockChain(model: ModelDeclaration, where: string): Map<string, number> {
  if (model.kind === 'U-Net' || model.longSkips) {
    throw new InputError(where, `the transformer blocks of this ${model.kind} are not one chain (${model.kind === 'U-Net' ? 'resnets and resolutions between them' : 'long skips join them'})`,
      model.kind === 'U-Net' ? 'a DiT or PixArt (on U-Nets: deepcache)' : 'a DiT without long skips (on Skip-DiT: skip-cache)');
  }
  return new Map(model.transformerBlocks.map((b, i) => [b.block, i]));
}

/** a − b and a + b on the executor's device (one small segment each). */
export function tokenArithmetic<T extends TensorLike>(exec: Executor<T>, name: string) {
  return {
    difference: async (a: T, b: T) => (await exec.run(`${name}.sub`, (g, i) => ({ d: g.sub(i.a, i.b) }), { a, b })).d,
    sum: async (a: T, b: T) => (await exec.run(`${name}.add`, (g, i) => ({ s: g.add(i.a, i.b) }), { a, b })).s,
  };
}

/** A probe of a sub-layer for the normalised, modulated tokens its body would take (TeaCache's input). */
export function modulatedInputProbe<T extends TensorLike>(): SegmentVariant<T> {
  return { name: 'teacache-probe', emits: ['h'], hooks: (_own, _inner, emit) => ({ body: (_g, h) => (emit('h', h), h) }) };
}
