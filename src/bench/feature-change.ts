/**
 * How much each transformer block's output changes from one model call to the next: the
 * feature-smoothness picture the Skip-DiT paper draws to explain why a DiT trained with long skips
 * caches well. A plan that only looks: after every block's feed-forward (its last sub-layer) it measures the relative
 * L1 change (mean |x_i − x_{i−1}| / mean |x_{i−1}|) of the block's output tokens against the
 * previous call's, per block.
 */
import type { TensorLike } from '../runtime/executor.ts';
import type { Accelerator, PlanContext, RunHooks } from '../runtime/plan.ts';

export interface FeatureChange {
  /** The blocks' module paths, in the order the model runs them. */
  blocks: string[];
  /** changes[i][j]: block j's change from model call i to call i + 1 (NaN where it did not run at both). */
  changes: number[][];
}

export function featureChangeRecorder(): { plan: Accelerator; result: FeatureChange } {
  const result: FeatureChange = { blocks: [], changes: [] };
  const plan: Accelerator = {
    name: 'feature-change',
    check(model) {
      result.blocks = model.transformerBlocks.map((b) => b.block);
    },
    begin<T extends TensorLike>({ ops }: PlanContext<T>): RunHooks<T> {
      const previous = new Map<string, { call: number; tokens: T }>();
      return {
        async around(segment, at, next, residual) {
          const out = await next();
          // A block's last sub-layer is its feed-forward; its result is the block's output.
          if (!residual || segment.role.layer !== 'feed-forward') return out;
          const tokens = out[residual.result];
          const key = `${segment.role.block} ${segment.key}`;
          const before = previous.get(key);
          // Only between consecutive calls: a block a cache skipped at the call before has no change to show.
          if (before?.call === at.call - 1) {
            const row = (result.changes[at.call - 1] ??= new Array(result.blocks.length).fill(Number.NaN));
            row[result.blocks.indexOf(segment.role.block)] = await ops.relativeL1(tokens, before.tokens);
          }
          previous.set(key, { call: at.call, tokens });
          return out;
        },
        held: () => [...previous.values()].map((p) => p.tokens),
      };
    },
  };
  return { plan, result };
}
