/**
 * Building blocks shared by the models, written against the graph builder. Each function works
 * in the caller's parameter scope, with diffusers' submodule names (norm1, conv1, to_q, ...).
 */
import { InputError } from '../errors.ts';
import type { GraphBuilder, Value } from '../graph/builder.ts';
import { plainHooks, type SegmentHooks } from '../runtime/protocol.ts';

export interface ResnetOptions {
  groups: number;
  eps: number;
  /** Channels of the time embedding fed to time_emb_proj, or null when the block has none (VAE). */
  tembChannels: number | null;
  outputScaleFactor?: number;
}

/** diffusers ResnetBlock2D (time_embedding_norm "default"). */
export function resnetBlock2D(g: GraphBuilder, x: Value, temb: Value | null, outChannels: number, o: ResnetOptions): Value {
  const inChannels = x.shape[1];
  let h = g.silu(g.groupNorm(x, 'norm1', o.groups, o.eps));
  h = g.conv2d(h, 'conv1', outChannels, 3, { padding: 1 });
  if (temb && o.tembChannels !== null) {
    const t = g.linear(g.silu(temb), 'time_emb_proj', outChannels);
    h = g.add(h, g.reshape(t, [t.shape[0], outChannels, 1, 1]));
  }
  h = g.silu(g.groupNorm(h, 'norm2', o.groups, o.eps));
  h = g.conv2d(h, 'conv2', outChannels, 3, { padding: 1 });
  const shortcut = inChannels === outChannels ? x : g.conv2d(x, 'conv_shortcut', outChannels, 1);
  let out = g.add(shortcut, h);
  if (o.outputScaleFactor !== undefined && o.outputScaleFactor !== 1) out = g.div(out, g.scalar(o.outputScaleFactor));
  return out;
}

export interface AttentionOptions {
  heads: number;
  /** Inner width (heads × head dim); the output projects back to the query width. */
  innerDim: number;
  qkvBias: boolean;
}

/** Where an attention module's keys and values come from, built only when its core asks. */
export interface KeyValueSource {
  keys(): Value;
  values(): Value;
}

/** to_k and to_v of an Attention module over `source` (itself for self-attention, the text for cross-attention). */
export function projectedKeysValues(g: GraphBuilder, source: Value, o: AttentionOptions): KeyValueSource {
  return { keys: () => g.linear(source, 'to_k', o.innerDim, o.qkvBias), values: () => g.linear(source, 'to_v', o.innerDim, o.qkvBias) };
}

/** to_k and to_v of an Attention module (for cross-attention: constant over the denoising steps). */
export function keysAndValues(g: GraphBuilder, source: Value, o: AttentionOptions): { k: Value; v: Value } {
  const kv = projectedKeysValues(g, source, o);
  return { k: kv.keys(), v: kv.values() };
}

/**
 * diffusers Attention: to_q, the core (from the segment's hooks: softmax(QKᵀ/√d + bias)·V unless a
 * method supplies another), to_out.0. Projections the core does not use are never built. `bias`:
 * an additive attention bias broadcastable to [B, heads, Sq, Sk] (a padding mask).
 */
export function attentionModule(g: GraphBuilder, x: Value, source: KeyValueSource, o: AttentionOptions, hooks: SegmentHooks = plainHooks, bias?: Value): Value {
  const once = (make: () => Value) => {
    let v: Value | undefined;
    return () => (v ??= make());
  };
  const parts = { heads: o.heads, query: once(() => g.linear(x, 'to_q', o.innerDim, o.qkvBias)), keys: once(source.keys), values: once(source.values), bias };
  return g.linear(hooks.attend(g, parts), 'to_out.0', x.shape[x.rank - 1]);
}

/** diffusers Attention with the plain core. `context` null = self-attention. */
export function attention(g: GraphBuilder, x: Value, context: Value | null, o: AttentionOptions): Value {
  return attentionModule(g, x, projectedKeysValues(g, context ?? x, o), o);
}

/** NCHW → tokens [B, H·W, C]. */
export function toTokens(g: GraphBuilder, x: Value): Value {
  const [b, c, h, w] = x.shape;
  return g.reshape(g.transpose(x, [0, 2, 3, 1]), [b, h * w, c]);
}

/** Tokens [B, H·W, C] → NCHW. */
export function fromTokens(g: GraphBuilder, x: Value, height: number, width: number): Value {
  const [b, , c] = x.shape;
  return g.transpose(g.reshape(x, [b, height, width, c]), [0, 3, 1, 2]);
}

/**
 * Sinusoidal timestep embedding (diffusers get_timestep_embedding), computed in float32 the way
 * torch does: the frequencies are rounded to float32 at each step before exp.
 */
export function timestepEmbedding(g: GraphBuilder, timesteps: Value, dim: number, flipSinToCos: boolean, freqShift: number): Value {
  if (dim % 2 === 1) throw new Error(`odd timestep embedding width ${dim} is not supported`);
  const half = dim / 2;
  const lnMax = Math.fround(-Math.log(10000));
  const divisor = Math.fround(half - freqShift);
  // exp on the host, correctly rounded as torch's float32 exp is: one ulp less or more of a
  // frequency moves timestep 999's angle by 1e-4.
  const freqs = new Float32Array(half);
  for (let i = 0; i < half; i++) freqs[i] = Math.exp(Math.fround(Math.fround(lnMax * i) / divisor));
  // Float32 at any precision, as diffusers does: float16 angles of timestep 999 are off by up to 0.25.
  return g.float32(() => {
    const args = g.mul(g.reshape(timesteps, [timesteps.shape[0], 1]), g.constant(freqs, [1, half], 'freqs'));
    return g.concat(flipSinToCos ? [g.cos(args), g.sin(args)] : [g.sin(args), g.cos(args)], -1);
  });
}

/** Refuses, naming the config fields, an inner width that sincosPositionTable cannot split into four. */
export function checkPositionTableWidth(width: number, where: string, fields: string): void {
  if (width % 4) throw new InputError(`${where}: ${fields}`, 'no 2-D sin-cos position table of this width', 'a multiple of 4', String(width));
}

/**
 * Values of the largest sin-cos position table built (1 GiB as float32): a grid that needs more
 * needs attention scores far past any machine's memory, and a table this size cannot even be held.
 */
const MAX_POSITION_TABLE = 2 ** 28;

/** Refuses, naming `what`, an h×w patch grid whose position table of `dim` channels would pass that, before anything builds it. */
export function checkPositionGrid(h: number, w: number, dim: number, what: string, found: string): void {
  if (h * w * dim > MAX_POSITION_TABLE) {
    throw new InputError(what, `too large: a ${h}×${w} grid of patches, whose position table alone holds ${h * w * dim} values`,
      `at most ${MAX_POSITION_TABLE} (h·w·${dim})`, found);
  }
}

/**
 * diffusers get_2d_sincos_pos_embed for an h×w grid of patches: per token (row-major), the first
 * half of the channels encodes its column and the second half its row, each as [sin | cos] over
 * frequencies 1/10000^(k/(D/4)). Grid coordinates are float32 as diffusers makes them
 * (index / (size / base_size) / interpolation_scale); the rest in float64, rounded at the end.
 */
export function sincosPositionTable(dim: number, h: number, w: number, baseSize: number, interpolationScale: number): Float32Array {
  if (dim % 4) throw new Error(`2-D sin-cos position table: width ${dim} is not a multiple of 4`);
  const quarter = dim / 4;
  const coordinate = (i: number, size: number) => Math.fround(Math.fround(i / Math.fround(size / baseSize)) / interpolationScale);
  const omega = Array.from({ length: quarter }, (_, k) => 1 / 10000 ** (k / quarter));
  const table = new Float32Array(h * w * dim);
  for (let row = 0; row < h; row++) {
    for (let col = 0; col < w; col++) {
      const at = (row * w + col) * dim;
      for (const [half, pos] of [[0, coordinate(col, w)], [1, coordinate(row, h)]] as const) {
        for (let k = 0; k < quarter; k++) {
          table[at + half * 2 * quarter + k] = Math.sin(pos * omega[k]);
          table[at + half * 2 * quarter + quarter + k] = Math.cos(pos * omega[k]);
        }
      }
    }
  }
  return table;
}

/** diffusers PatchEmbed: p×p patches through a strided conv (`proj`) to tokens [B, h·w, D], plus the position table. */
export function patchEmbed(g: GraphBuilder, latent: Value, o: { patchSize: number; dim: number; baseSize: number; interpolationScale: number }): Value {
  const [, , height, width] = latent.shape;
  const [h, w] = [height / o.patchSize, width / o.patchSize];
  const tokens = toTokens(g, g.conv2d(latent, 'proj', o.dim, o.patchSize, { stride: o.patchSize }));
  return g.add(tokens, g.constant(sincosPositionTable(o.dim, h, w, o.baseSize, o.interpolationScale), [1, h * w, o.dim], 'pos_embed'));
}

/** Patch tokens [B, h·w, p·p·C] → [B, C, h·p, w·p] (diffusers' einsum "nhwpqc->nchpwq"). */
export function unpatchify(g: GraphBuilder, x: Value, h: number, w: number, patchSize: number, channels: number): Value {
  const batch = x.shape[0];
  const grid = g.reshape(x, [batch, h, w, patchSize, patchSize, channels]);
  return g.reshape(g.transpose(grid, [0, 5, 1, 3, 2, 4]), [batch, channels, h * patchSize, w * patchSize]);
}
