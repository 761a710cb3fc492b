/**
 * What the span caches (first-block-cache.ts, teacache.ts) share: they skip runs of consecutive
 * transformer blocks on a cached residual, so the span must be self-contained (on a Skip-DiT: every
 * long skip inside it or outside it, never across its edge); they answer a skipped block's
 * segments by passing tokens on, add and subtract token tensors on the device; TeaCache probes
 * block 0's modulated input.
 */
import { InputError } from '../errors.ts';
import type { Executor, ResidualSpec, TensorLike } from '../runtime/executor.ts';
import type { SegmentCall, SegmentVariant } from '../runtime/plan.ts';
import type { ModelDeclaration } from '../runtime/protocol.ts';

/** Claims and conflicts of a span cache (runtime/plan.ts composition). */
export const SPAN_CACHE_CLAIMS = {
  claims: { 'span-cache': 'skip spans of transformer blocks on cached residuals' },
  conflicts: {
    cut: 'the blocks it skips are joined by long skips, not one chain',
    'block-schedule': 'a skipped call would leave FORA\'s refresh undone, and its caches stale',
  },
} as const;

/**
 * The model's transformer blocks in order (name → index), refused unless the span that skips all
 * but the first `head` and the last `tail` blocks can be replaced by one residual: a U-Net's
 * blocks are no chain; on a Skip-DiT, block i's long skip goes to block D−1−i, which stays on the
 * same side of the span's edges only when head = tail.
 */
export function blockChain(model: ModelDeclaration, where: string, span: { head: number; tail: number; knobs?: string }): Map<string, number> {
  if (model.kind === 'U-Net') {
    throw new InputError(where, `the transformer blocks of this ${model.kind} are not one chain (resnets and resolutions between them)`, 'a DiT or PixArt (on U-Nets: deepcache)');
  }
  if (model.longSkips && span.head !== span.tail) {
    throw new InputError(where, `on a ${model.kind} a skipped span must hold both ends of every long skip it cuts: ${span.head} first and ${span.tail} last blocks always computed`,
      `as many last blocks as first (${span.knobs ?? 'head = tail'})`);
  }
  return new Map(model.transformerBlocks.map((b, i) => [b.block, i]));
}

/** A span cache's answer for a segment of a skipped block: the residual input as the result, or a skip fusion's tokens passed on. */
export function passedOn<T>(segment: SegmentCall<T>, residual: ResidualSpec | undefined, tokens?: T): Record<string, T> {
  if (residual) return { [residual.result]: tokens ?? segment.inputs[residual.residual] };
  const through = segment.role.passThrough!;
  return { [through.output]: segment.inputs[through.input] };
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
