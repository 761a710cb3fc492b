/**
 * What a model declares to acceleration methods, without knowing any of them. As it runs, a model
 * says what each segment is (a SegmentRole in RunOptions: a sub-layer of a transformer block, with
 * its residual structure in RunOptions.residual), builds the parts a method may replace through
 * SegmentHooks (the attention core, the token-wise body of a sub-layer), and walks its long skip
 * connections through LongSkips, which a plan may cut. As a whole it declares itself once
 * (ModelDeclaration) so that methods can refuse what cannot work before any work. Methods answer
 * through runtime/plan.ts; models import this file, never a method.
 */
import type { GraphBuilder, Value } from '../graph/builder.ts';
import type { Executor, TensorLike } from './executor.ts';

/**
 * What a segment is, for plans: one sub-layer of a transformer block, or (Skip-DiT) the fusion of a
 * block's input with its long skip, which runs before the block's first sub-layer.
 */
export interface SegmentRole {
  /** Module path of the transformer block, e.g. `down_blocks.1.attentions.0.transformer_blocks.0`. */
  block: string;
  layer: 'self-attention' | 'cross-attention' | 'feed-forward' | 'skip-fusion';
  /** Height and width of the model's input latent; the block's tokens are a grid downsampled from it. */
  latentSize?: [number, number];
  /** On the block's first sub-layer: the input that holds the block's input tokens [B, N, C]. */
  blockInput?: string;
  /**
   * On a segment without a residual: what a plan that skips the whole block answers instead of
   * running it, the input `input` as the output `output` (a skip fusion passes its tokens on).
   */
  passThrough?: { input: string; output: string };
}

/** The projections an attention core works on, each built only if the core asks for it. */
export interface AttentionParts {
  heads: number;
  query(): Value;
  keys(): Value;
  values(): Value;
  /** An additive bias on the scores, broadcastable to [B, heads, Sq, Sk] (e.g. a padding mask). */
  bias?: Value;
}

/**
 * The replaceable parts of a segment's graph. Models build their sub-layers through these; a
 * method's variant of the segment (runtime/plan.ts) supplies others, as diffusers swaps attention
 * processors per module.
 */
export interface SegmentHooks {
  /** An attention module's core: softmax(QKᵀ/√d)·V over all heads, before the output projection. */
  attend(g: GraphBuilder, parts: AttentionParts): Value;
  /** Runs a sub-layer's body on its normalised tokens h [B, N, C]; the result has h's shape. */
  body(g: GraphBuilder, h: Value, run: (h: Value) => Value): Value;
}

export const plainHooks: SegmentHooks = {
  attend: (g, p) => g.attention(p.query(), p.keys(), p.values(), p.heads, { bias: p.bias }),
  body: (_g, h, run) => run(h),
};

/** A model's long skip connections (a U-Net's down → up path, Skip-DiT's block pairs). */
export interface LongSkipDeclaration {
  /** The deepest branch a pass may be cut at (branch b keeps skips 0…b; see LongSkips). */
  maxBranch: number;
  /** The structure in words, for errors: e.g. "4 down blocks of 2/2/2/2 layers: 11 down-path outputs". */
  describe: string;
}

/** What a model declares of itself as a whole, for plans to check before any work. */
export interface ModelDeclaration {
  /** What to call it in messages: "U-Net". */
  kind: string;
  /** Every transformer block, and how far its token grid is downsampled from the latent. */
  transformerBlocks: { block: string; downsample: number }[];
  longSkips?: LongSkipDeclaration;
}

/** A pass cut at a branch, as the executor's plan answers it. */
export interface BranchPass<T> {
  branch: number;
  /** The cached feature: present → a shallow pass resuming from it; absent → a full pass that stores it. */
  reuse?: T;
  store(feature: T): void;
}

/**
 * Walks a model's long skip connections: stages of the contracting path push their outputs as
 * skips (`down`), stages of the expanding path take them last-in-first-out (`up`). Asked once per
 * pass, the executor's plan may cut the pass at branch b: a shallow pass runs only the stages that
 * make and take skips 0…b, skips the bottom, and resumes the expanding path from the feature the
 * last full pass stored where it takes skip b (DeepCache on U-Nets, Skip-Cache on Skip-DiT).
 */
export class LongSkips<T extends TensorLike> {
  /** Skips of this pass; undefined where a shallow pass did not run the stage. */
  private readonly stack: (T | undefined)[] = [];
  private readonly pass?: BranchPass<T>;

  /** `key` identifies the pass's input shapes: cached features are kept per key. */
  constructor(exec: Executor<T>, declaration: LongSkipDeclaration, key: string) {
    this.pass = exec.longSkipPass?.(declaration, key);
    if (this.pass && !(Number.isInteger(this.pass.branch) && this.pass.branch >= 0 && this.pass.branch <= declaration.maxBranch)) {
      throw new Error(`a plan cut the model at branch ${this.pass.branch}; it has branches 0 to ${declaration.maxBranch} (${declaration.describe})`);
    }
  }

  private get shallow(): boolean {
    return this.pass?.reuse !== undefined;
  }

  /** A stage of the contracting path; its output becomes the next skip. */
  async down(x: T, stage: (x: T) => Promise<T>): Promise<T> {
    if (this.shallow && this.stack.length > this.pass!.branch) {
      this.stack.push(undefined);
      return x;
    }
    const out = await stage(x);
    this.stack.push(out);
    return out;
  }

  /** The bottom of the U (a U-Net's mid block): full passes only. */
  async middle(x: T, stage: (x: T) => Promise<T>): Promise<T> {
    return this.shallow ? x : stage(x);
  }

  /** A stage of the expanding path, given the latest skip. */
  async up(x: T, stage: (x: T, skip: T) => Promise<T>): Promise<T> {
    const index = this.stack.length - 1;
    const skip = this.stack.pop();
    if (this.pass && index === this.pass.branch) {
      if (this.pass.reuse) x = this.pass.reuse;
      else this.pass.store(x);
    } else if (this.shallow && index > this.pass!.branch) {
      return x;
    }
    return stage(x, skip!);
  }

  /** The skip the next `up` stage will take (its size is what an upsampler before it must reach). */
  peek(): T {
    return this.stack.at(-1)!;
  }
}
