/**
 * Building blocks shared by the models, written against the graph builder. Each function works
 * in the caller's parameter scope, with diffusers' submodule names (norm1, conv1, to_q, ...).
 */
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
 * diffusers Attention: to_q, the core (from the segment's hooks: softmax(QKᵀ/√d)·V unless a
 * method supplies another), to_out.0. Projections the core does not use are never built.
 */
export function attentionModule(g: GraphBuilder, x: Value, source: KeyValueSource, o: AttentionOptions, hooks: SegmentHooks = plainHooks): Value {
  const once = (make: () => Value) => {
    let v: Value | undefined;
    return () => (v ??= make());
  };
  const parts = { heads: o.heads, query: once(() => g.linear(x, 'to_q', o.innerDim, o.qkvBias)), keys: once(source.keys), values: once(source.values) };
  return g.linear(hooks.attend(g, parts), 'to_out.0', x.shape[x.rank - 1]);
}

/** diffusers Attention with the plain core. `context` null = self-attention. */
export function attention(g: GraphBuilder, x: Value, context: Value | null, o: AttentionOptions): Value {
  return attentionModule(g, x, projectedKeysValues(g, context ?? x, o), o);
}

/** diffusers FeedForward with GEGLU (the SD transformer blocks): net.0.proj then net.2. */
export function gegluFeedForward(g: GraphBuilder, x: Value, mult = 4): Value {
  const dim = x.shape[x.rank - 1];
  const inner = dim * mult;
  // Two half-width products instead of one product and a Split: no copy of the wide output,
  // and ORT fuses the gate's bias and GELU into its MatMul.
  const hidden = g.linearRows(x, 'net.0.proj', inner * 2, 0, inner);
  const gate = g.linearRows(x, 'net.0.proj', inner * 2, inner, 2 * inner);
  return g.linear(g.mul(hidden, g.gelu(gate)), 'net.2', dim);
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
  const exponent = new Float32Array(half);
  for (let i = 0; i < half; i++) exponent[i] = Math.fround(Math.fround(lnMax * i) / divisor);
  const freqs = g.exp(g.constant(exponent, [1, half], 'freq_exponent'));
  const args = g.mul(g.reshape(timesteps, [timesteps.shape[0], 1]), freqs);
  const sin = g.sin(args);
  const cos = g.cos(args);
  return g.concat(flipSinToCos ? [cos, sin] : [sin, cos], -1);
}
