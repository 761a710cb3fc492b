/**
 * diffusers BasicTransformerBlock (models/attention.py), shared by the U-Net's Transformer2DModels
 * (norm_type "layer_norm"), PixArt ("ada_norm_single") and DiT ("ada_norm_zero"). Each sub-layer is
 * one residual segment — `<block>.attn1`, `<block>.attn2`, `<block>.ff` — that declares itself to
 * plans (runtime/protocol.ts): its role, its value before the residual add (after the output
 * projection and before any gate, so a cached value is gated afresh), its attention core and its
 * token-wise body built through the segment's hooks.
 */
import type { GraphBuilder, Value } from '../graph/builder.ts';
import type { Executor, TensorLike } from '../runtime/executor.ts';
import type { SegmentHooks, SegmentRole } from '../runtime/protocol.ts';
import { attentionModule, projectedKeysValues, type KeyValueSource } from './layers.ts';

export type BlockNorm = 'layer_norm' | 'ada_norm_single' | 'ada_norm_zero';

/** The adaptive norms' shift, scale and gate of the self-attention (msa) and feed-forward (mlp), each [B, 1, D]. */
export interface Modulation<T> {
  shiftMsa: T;
  scaleMsa: T;
  gateMsa: T;
  shiftMlp: T;
  scaleMlp: T;
  gateMlp: T;
}

export interface BlockOptions<T> {
  norm: BlockNorm;
  heads: number;
  /** Biases on to_q, to_k, to_v (diffusers' attention_bias). */
  qkvBias: boolean;
  normEps: number;
  /** Whether the block's plain LayerNorms have weights (norm_elementwise_affine; "layer_norm" always). */
  normAffine: boolean;
  feedForward: 'geglu' | 'gelu-approximate';
  /** Required by the adaptive norms. */
  modulation?: Modulation<T>;
  /**
   * Cross-attention (attn2) over `context`, or over its precomputed keys and values, with an
   * optional additive bias [B, 1, 1, S] (a padding mask); absent: the block has no attn2.
   */
  cross?: { context?: T; kv?: { k: T; v: T }; bias?: T };
  /** The model input's latent size, which the block's token grid is downsampled from. */
  latentSize?: [number, number];
}

/** diffusers FeedForward: GEGLU (SD) or GELU with the tanh approximation (PixArt, DiT); net.0.proj then net.2. */
function feedForward(g: GraphBuilder, x: Value, kind: BlockOptions<TensorLike>['feedForward'], mult = 4): Value {
  const dim = x.shape[x.rank - 1];
  const inner = dim * mult;
  if (kind === 'gelu-approximate') {
    const hidden = g.geluTanh(g.linear(x, 'net.0.proj', inner, false), g.param('net.0.proj.bias', [inner]));
    return g.linear(hidden, 'net.2', dim);
  }
  // Two half-width products instead of one product and a Split: no copy of the wide output,
  // and ORT fuses the gate's bias and GELU into its MatMul.
  const hidden = g.linearRows(x, 'net.0.proj', inner * 2, 0, inner);
  const gate = g.linearRows(x, 'net.0.proj', inner * 2, inner, 2 * inner);
  return g.linear(g.mul(hidden, g.gelu(gate)), 'net.2', dim);
}

/** Runs one block: tokens [B, N, D] → [B, N, D]. */
export async function basicTransformerBlock<T extends TensorLike>(exec: Executor<T>, block: string, tokens: T, o: BlockOptions<T>): Promise<T> {
  const role = (layer: SegmentRole['layer']): SegmentRole => ({ block, layer, latentSize: o.latentSize });
  const attention = (h: Value) => ({ heads: o.heads, innerDim: h.shape[2], qkvBias: o.qkvBias });
  const ada = o.norm !== 'layer_norm';
  const m = o.modulation;
  if (ada && !m) throw new Error(`${block}: norm_type ${o.norm} needs the block's modulation`);
  // LayerNorm `name` (plain or affine), shifted and scaled by the modulation inputs under the adaptive norms.
  const norm = (g: GraphBuilder, x: Value, name: string, i: Record<string, Value>, eps = o.normEps, affine = o.normAffine): Value => {
    const normed = affine ? g.layerNorm(x, name, eps) : g.layerNormPlain(x, eps);
    return ada ? g.add(g.mul(normed, g.add(i.scale, g.scalar(1))), i.shift) : normed;
  };
  const modulated = (shift?: T, scale?: T, gate?: T): Record<string, T> => (shift && scale && gate ? { shift, scale, gate } : {});

  // Self-attention; AdaLayerNormZero has its own LayerNorm (no weights, eps 1e-6) as norm1.norm.
  tokens = await sublayer(exec, block, 'attn1', tokens, modulated(m?.shiftMsa, m?.scaleMsa, m?.gateMsa), { ...role('self-attention'), blockInput: 'tokens' },
    (g, x, i) => (o.norm === 'ada_norm_zero' ? norm(g, x, 'norm1.norm', i, 1e-6, false) : norm(g, x, 'norm1', i)),
    (g, h, _i, hooks) => attentionModule(g, h, projectedKeysValues(g, h, attention(h)), attention(h), hooks));

  if (o.cross) {
    const { context, kv, bias } = o.cross;
    const inputs: Record<string, T> = { ...(kv ? { k: kv.k, v: kv.v } : { context: context! }), ...(bias ? { bias } : {}) };
    const source = (g: GraphBuilder, h: Value, i: Record<string, Value>): KeyValueSource =>
      (kv ? { keys: () => i.k, values: () => i.v } : projectedKeysValues(g, i.context, attention(h)));
    // PixArt's ada_norm_single block attends from the un-normalised tokens.
    tokens = await sublayer(exec, block, 'attn2', tokens, inputs, role('cross-attention'),
      (g, x) => (o.norm === 'ada_norm_single' ? x : o.normAffine ? g.layerNorm(x, 'norm2', o.normEps) : g.layerNormPlain(x, o.normEps)),
      (g, h, i, hooks) => attentionModule(g, h, source(g, h, i), attention(h), hooks, i.bias));
  }

  const ffNorm = o.norm === 'ada_norm_single' ? 'norm2' : 'norm3';
  return sublayer(exec, block, 'ff', tokens, modulated(m?.shiftMlp, m?.scaleMlp, m?.gateMlp), role('feed-forward'),
    (g, x, i) => norm(g, x, ffNorm, i), (g, h) => feedForward(g, h, o.feedForward));
}

/**
 * One sub-layer (`module`) of the block: tokens + [gate ·] body(norm(tokens)), the body run through
 * the hooks. The body's output, before the gate and the residual add, is a second output (`value`)
 * that plans may cache. Also the shape of the official DiT layout's blocks (official-dit.ts).
 */
export async function sublayer<T extends TensorLike>(exec: Executor<T>, block: string, module: string, tokens: T, extra: Record<string, T>, role: SegmentRole,
  normed: (g: GraphBuilder, x: Value, i: Record<string, Value>) => Value,
  body: (g: GraphBuilder, h: Value, i: Record<string, Value>, hooks: SegmentHooks) => Value): Promise<T> {
  const gated = 'gate' in extra;
  return (await exec.run(`${block}.${module}`, (g, i, hooks) => g.scope(block, () => {
    const h = normed(g, i.tokens, i);
    const value = hooks.body(g, h, (h) => g.scope(module, () => body(g, h, i, hooks)));
    return { tokens: g.add(gated ? g.mul(i.gate, value) : value, i.tokens), value };
  }), { tokens, ...extra }, { residual: { value: 'value', residual: 'tokens', result: 'tokens', ...(gated ? { gate: 'gate' } : {}) }, role })).tokens;
}
