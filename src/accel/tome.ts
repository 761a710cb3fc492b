/**
 * ToMe for Stable Diffusion (Bolya & Hoffman, arXiv 2303.17604; tomesd v0.1.3), knob names as
 * tomesd's apply_patch. In every transformer block that runs at a downsampling ≤ max_downsample,
 * the tokens are split into dst (one per sy×sx cell: its top-left token, or a random one with
 * use_rand) and src (the rest); r = ⌊N·ratio⌋ src tokens (at most all of them, so the ratio is
 * capped at 1 − 1/(sx·sy)) merge into their most similar dst before self-attention (and, if asked,
 * cross-attention and the MLP), and are unmerged by copy after it. The similarity metric is the
 * block's input (declared by the model on the block's first sub-layer). The merge math is in
 * tome-merge.ts, inside the segment graphs; here it becomes a variant of each merged sub-layer
 * whose `body` hook merges before and unmerges after.
 *
 * Randomness: our own stream, seeded by `seed`, one draw per merged block per model call in
 * forward order; off for an odd batch (no CFG), as tomesd does.
 */
import { InputError } from '../errors.ts';
import type { TensorLike } from '../runtime/executor.ts';
import type { ModelDeclaration } from '../runtime/protocol.ts';
import type { Accelerator, PlanContext, RunHooks, SegmentCall } from '../runtime/plan.ts';
import { Rng } from '../util/rng.ts';
import type { MethodDefinition } from './method.ts';
import { matchTokens, mergeTokens, unmergeTokens } from './tome-merge.ts';

export type TomeParams = {
  ratio: number;
  max_downsample: number;
  sx: number;
  sy: number;
  use_rand: boolean;
  merge_attn: boolean;
  merge_crossattn: boolean;
  merge_mlp: boolean;
  seed: number;
};

const TOME_DEFAULTS: TomeParams = {
  ratio: 0.5, max_downsample: 1, sx: 2, sy: 2, use_rand: true, merge_attn: true, merge_crossattn: false, merge_mlp: false, seed: 0,
};

/**
 * tomesd's partition of an h×w token grid: in each full sy×sx cell the token at `choice[cell]`
 * (row-major within the cell) is dst; every other token, edge leftovers included, is src.
 * Both lists ascend.
 */
export function partitionTokens(h: number, w: number, sx: number, sy: number, choice: (cell: number) => number): { src: number[]; dst: number[] } {
  const isDst = new Uint8Array(h * w);
  const [rows, cols] = [Math.floor(h / sy), Math.floor(w / sx)];
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) {
      const c = choice(i * cols + j);
      isDst[(i * sy + Math.floor(c / sx)) * w + j * sx + (c % sx)] = 1;
    }
  }
  const src: number[] = [];
  const dst: number[] = [];
  for (let t = 0; t < h * w; t++) (isDst[t] ? dst : src).push(t);
  return { src, dst };
}

const MERGES = { 'self-attention': 'merge_attn', 'cross-attention': 'merge_crossattn', 'feed-forward': 'merge_mlp' } as const;

/** One model call's merges, per block: the partition and the matching, as graph inputs of the merged sub-layers. */
function tokenMerging<T extends TensorLike>(p: TomeParams, context: PlanContext<T>): RunHooks<T> {
  const rng = new Rng(p.seed);
  const fixed = new Map<string, { src: number[]; dst: number[] }>();
  const indexTensors = new Map<string, T>();
  const indices = (values: number[]): T => {
    const key = values.join(',');
    let t = indexTensors.get(key);
    if (!t) indexTensors.set(key, (t = context.ops.indices(values)));
    return t;
  };
  /** The block's merge at this call, from its input tokens [B, N, C] (undefined: the block runs unmerged). */
  const plan = (tokens: T, latent: [number, number]): { src: number[]; dst: number[]; r: number } | undefined => {
    const [batch, n] = tokens.dims;
    // tomesd infers the block's downsampling from its token count.
    const downsample = Math.ceil(Math.sqrt(Math.floor((latent[0] * latent[1]) / n)));
    if (downsample > p.max_downsample) return undefined;
    const [h, w] = [Math.ceil(latent[0] / downsample), Math.ceil(latent[1] / downsample)];
    let r = Math.floor(n * p.ratio);
    if (r <= 0) return undefined;
    let split: { src: number[]; dst: number[] };
    if (p.use_rand && batch % 2 === 0) {
      split = partitionTokens(h, w, p.sx, p.sy, () => Math.min(p.sx * p.sy - 1, Math.floor(rng.uniform() * p.sx * p.sy)));
    } else {
      const key = `${h}x${w}`;
      split = fixed.get(key) ?? partitionTokens(h, w, p.sx, p.sy, () => 0);
      fixed.set(key, split);
    }
    r = Math.min(r, split.src.length);
    return r > 0 ? { ...split, r } : undefined;
  };
  const blocks = new Map<string, Record<string, T> | undefined>();
  let merged = 0;
  return {
    async variant(s: SegmentCall<T>) {
      const { role } = s;
      if (role.layer === 'skip-fusion') return undefined; // tokens merge inside a block's sub-layers only
      if (role.blockInput && role.latentSize) {
        // The block's first sub-layer: its input is the similarity metric of the whole block.
        const tokens = s.inputs[role.blockInput];
        const m = plan(tokens, role.latentSize);
        let matching: Record<string, T> | undefined;
        if (m) {
          merged++;
          const [src, dst] = [indices(m.src), indices(m.dst)];
          const match = await context.exec.run(`${role.block}.tome_match`, (g, i) => ({ ...matchTokens(g, i.tokens, i.src, i.dst, m.r) }),
            { tokens, src, dst }, { unbatched: ['src', 'dst'], variant: `r${m.r}` });
          matching = { ...match, src, dst };
        }
        blocks.set(role.block, matching);
      }
      const matching = blocks.get(role.block);
      if (!matching || !p[MERGES[role.layer]]) return undefined;
      return {
        name: 'tome',
        inputs: matching,
        unbatched: ['src', 'dst'],
        hooks: ({ src, dst, ...m }, inner) => {
          const match = { unmerged: m.unmerged, merged: m.merged, into: m.into };
          return { body: (g, h, run) => unmergeTokens(g, inner.body(g, mergeTokens(g, h, src, dst, match), run), src, dst, match) };
        },
      };
    },
    stats: () => ({ mergedBlocks: merged }),
    summary: () => (merged ? `${merged} transformer-block runs with merged tokens` : undefined),
  };
}

export function tome(p: TomeParams): Accelerator {
  const merges = p.merge_attn || p.merge_crossattn || p.merge_mlp;
  return {
    name: 'tome',
    claims: { 'token-merge': 'merge tokens' },
    check: (model) => checkTomeApplies(p, model),
    begin: merges ? (context) => tokenMerging(p, context) : undefined,
  };
}

/**
 * Refuses ToMe where it would change nothing: no transformer block at a downsampling ≤
 * max_downsample (SDXL's first level has none, so the default max_downsample 1 does nothing there).
 */
function checkTomeApplies(p: TomeParams, model: ModelDeclaration, where = 'accel tome:max_downsample'): void {
  const downsamples = model.transformerBlocks.map((b) => b.downsample);
  if (!downsamples.some((d) => d <= p.max_downsample)) {
    const least = Math.min(...downsamples);
    throw new InputError(where, `no transformer block of this ${model.kind} runs at a downsampling ≤ ${p.max_downsample}, so ToMe would change nothing`,
      downsamples.length ? `max_downsample ≥ ${least} (its first transformer blocks run at 1/${least} of the latent)` : `a ${model.kind} with transformer blocks`);
  }
}

export const TOME: MethodDefinition<TomeParams> = {
  name: 'tome',
  abbreviation: 'TM',
  paper: 'ToMe for SD (arXiv 2303.17604), tomesd v0.1.3',
  knobs: {
    ratio: { type: 'number', min: 0, max: 1, maxExclusive: true, doc: 'share of tokens merged; capped at 1 − 1/(sx·sy)' },
    max_downsample: { type: 'int', min: 1, max: 8, doc: 'merge in blocks at most this much downsampled (1, 2, 4 or 8)' },
    sx: { type: 'int', min: 1, max: 64, doc: 'dst stride along x' },
    sy: { type: 'int', min: 1, max: 64, doc: 'dst stride along y' },
    use_rand: { type: 'bool', doc: 'random dst within each sy×sx cell (off for an odd batch)' },
    merge_attn: { type: 'bool', doc: 'merge around self-attention' },
    merge_crossattn: { type: 'bool', doc: 'merge around cross-attention' },
    merge_mlp: { type: 'bool', doc: 'merge around the feed-forward' },
    seed: { type: 'int', min: 0, max: 2 ** 32 - 1, doc: 'seed of the use_rand stream' },
  },
  defaults: TOME_DEFAULTS,
  create: tome,
};
