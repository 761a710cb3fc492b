/**
 * ToMe for Stable Diffusion (Bolya & Hoffman, arXiv 2303.17604; tomesd v0.1.3), knob names as
 * tomesd's apply_patch. In every transformer block that runs at a downsampling ≤ max_downsample,
 * the tokens are split into dst (one per sy×sx cell: its top-left token, or a random one with
 * use_rand) and src (the rest); r = ⌊N·ratio⌋ src tokens (at most all of them, so the ratio is
 * capped at 1 − 1/(sx·sy)) merge into their most similar dst before self-attention (and, if asked,
 * cross-attention and the MLP), and are unmerged by copy after it. The similarity metric is the
 * block's input. The merge math is in tome-merge.ts, inside the segment graphs.
 *
 * Randomness: our own stream, seeded by `seed`, one draw per merged block per model call in
 * forward order; off for an odd batch (no CFG), as tomesd does.
 */
import { InputError } from '../errors.ts';
import { Rng } from '../util/rng.ts';
import type { Accelerator, TokenMergeRequest, TokenMergePlan } from './plan.ts';

export interface TomeParams {
  ratio: number;
  max_downsample: number;
  sx: number;
  sy: number;
  use_rand: boolean;
  merge_attn: boolean;
  merge_crossattn: boolean;
  merge_mlp: boolean;
  seed: number;
}

export const TOME_DEFAULTS: TomeParams = {
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

export function tome(p: TomeParams): Accelerator {
  const rng = new Rng(p.seed);
  const fixed = new Map<string, { src: number[]; dst: number[] }>();
  return {
    name: 'tome',
    cfgActive: () => true,
    decide: () => 'compute',
    tokenMerge(q: TokenMergeRequest): TokenMergePlan | undefined {
      if (!p.merge_attn && !p.merge_crossattn && !p.merge_mlp) return undefined;
      // tomesd infers the block's downsampling from its token count.
      const downsample = Math.ceil(Math.sqrt(Math.floor((q.latentHeight * q.latentWidth) / q.tokens)));
      if (downsample > p.max_downsample) return undefined;
      const [h, w] = [Math.ceil(q.latentHeight / downsample), Math.ceil(q.latentWidth / downsample)];
      let r = Math.floor(q.tokens * p.ratio);
      if (r <= 0) return undefined;
      let split: { src: number[]; dst: number[] };
      if (p.use_rand && q.batch % 2 === 0) {
        split = partitionTokens(h, w, p.sx, p.sy, () => Math.min(p.sx * p.sy - 1, Math.floor(rng.uniform() * p.sx * p.sy)));
      } else {
        const key = `${h}x${w}`;
        split = fixed.get(key) ?? partitionTokens(h, w, p.sx, p.sy, () => 0);
        fixed.set(key, split);
      }
      r = Math.min(r, split.src.length);
      if (r <= 0) return undefined;
      return { ...split, r, attn: p.merge_attn, cross: p.merge_crossattn, mlp: p.merge_mlp };
    },
  };
}

/**
 * Refuses ToMe where it would change nothing: no transformer block at a downsampling ≤
 * max_downsample (SDXL's first level has none, so the default max_downsample 1 does nothing there).
 * `levels`: the level of every transformer block (its resolution is the latent's / 2^level).
 */
export function checkTomeApplies(p: TomeParams, levels: number[], where = '--accel tome:max_downsample'): void {
  const reachable = levels.filter((l) => 2 ** l <= p.max_downsample);
  if (reachable.length === 0) {
    const least = 2 ** Math.min(...levels);
    throw new InputError(where, `no transformer block of this U-Net runs at a downsampling ≤ ${p.max_downsample}, so ToMe would change nothing`,
      levels.length ? `max_downsample ≥ ${least} (its first transformer blocks run at 1/${least} of the latent)` : 'a U-Net with transformer blocks');
  }
}
