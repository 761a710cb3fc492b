/**
 * transformers T5EncoderModel (T5 v1.1, as PixArt uses it): token embeddings (`shared`), pre-RMS-norm
 * blocks of self-attention and a gated-GELU feed-forward, a final RMS norm; no biases anywhere, no
 * scaling of QKᵀ. The first layer's `relative_attention_bias` turns bucketed relative positions into
 * a per-head bias that every layer adds, together with the padding mask.
 *
 * Segments, so that a 4.7 B-parameter T5-XXL never needs all its weights in one session: `shared`,
 * `encoder.block.0.layer.0.SelfAttention.relative_attention_bias` (the bias, mask included), one per
 * `encoder.block.N`, and `encoder.final_layer_norm`.
 */
import { InputError } from '../errors.ts';
import type { GraphBuilder, Value } from '../graph/builder.ts';
import type { Executor, TensorLike } from '../runtime/executor.ts';
import { cfgBool, cfgNumber, cfgPositiveInt, cfgString, type Config } from '../weights/config.ts';

export interface T5EncoderConfig {
  vocabSize: number;
  dModel: number;
  dKv: number;
  dFf: number;
  numLayers: number;
  numHeads: number;
  relativeBuckets: number;
  relativeMaxDistance: number;
  /** The feed-forward's activation, and whether it is gated (wi_0, wi_1) as in T5 v1.1. */
  activation: string;
  gated: boolean;
  layerNormEps: number;
}

/** feed_forward_proj as transformers reads it: "[gated-]ACT". */
export function parseT5EncoderConfig(cfg: Config, where: string): T5EncoderConfig {
  const proj = cfgString(cfg, 'feed_forward_proj', where, 'relu');
  const gated = proj.startsWith('gated-');
  const act = gated ? proj.slice('gated-'.length) : proj;
  // transformers maps "gated-gelu" to gelu_new (tanh); plain "gelu" stays exact.
  const activation = act === 'gelu' && gated ? 'gelu_new' : act;
  if (!['relu', 'gelu', 'gelu_new', 'silu'].includes(activation)) {
    throw new InputError(`${where}: feed_forward_proj`, 'unsupported activation', '"[gated-]relu", "[gated-]gelu", "[gated-]gelu_new" or "[gated-]silu"', proj);
  }
  if (cfgBool(cfg, 'is_decoder', where, false)) throw new InputError(`${where}: is_decoder`, 'unsupported option', 'false (an encoder)', 'true');
  // From 4 buckets (config.ts's range), each sign's half starts with at least one exact distance.
  const relativeBuckets = cfgPositiveInt(cfg, 'relative_attention_num_buckets', where, 32);
  const relativeMaxDistance = cfgPositiveInt(cfg, 'relative_attention_max_distance', where, 128);
  const maxExact = Math.floor(relativeBuckets / 4);
  if (relativeMaxDistance <= maxExact) {
    throw new InputError(`${where}: relative_attention_max_distance`, 'too small', `above the ${maxExact} exact distances of ${relativeBuckets} buckets`, String(relativeMaxDistance));
  }
  return {
    vocabSize: cfgPositiveInt(cfg, 'vocab_size', where, 32128),
    dModel: cfgPositiveInt(cfg, 'd_model', where, 512),
    dKv: cfgPositiveInt(cfg, 'd_kv', where, 64),
    dFf: cfgPositiveInt(cfg, 'd_ff', where, 2048),
    numLayers: cfgPositiveInt(cfg, 'num_layers', where, 6),
    numHeads: cfgPositiveInt(cfg, 'num_heads', where, 8),
    relativeBuckets,
    relativeMaxDistance,
    activation,
    gated,
    layerNormEps: cfgNumber(cfg, 'layer_norm_epsilon', where, 1e-6),
  };
}

/**
 * transformers' bidirectional relative-position bucket of `memory − query`: half the buckets per
 * sign, exact below half of them, logarithmic up to max_distance (float32 log as torch computes it).
 */
export function relativePositionBucket(relative: number, buckets: number, maxDistance: number): number {
  const half = Math.floor(buckets / 2); // an odd count leaves its last bucket unused, as in transformers
  const base = relative > 0 ? half : 0;
  const distance = Math.abs(relative);
  const maxExact = Math.floor(half / 2);
  if (distance < maxExact) return base + distance;
  const logRatio = Math.fround(Math.fround(Math.log(Math.fround(distance / maxExact))) / Math.fround(Math.log(maxDistance / maxExact)));
  const large = maxExact + Math.trunc(Math.fround(logRatio * (half - maxExact)));
  return base + Math.min(large, half - 1);
}

export class T5EncoderModel {
  constructor(readonly config: T5EncoderConfig) {}

  /**
   * input_ids int64 [B, L], attention_mask int64 [B, L] (1 = token, 0 = padding) → the final
   * hidden states [B, L, d_model].
   */
  async forward<T extends TensorLike>(exec: Executor<T>, inputIds: T, attentionMask: T): Promise<T> {
    const c = this.config;
    const length = inputIds.dims[1];
    let hidden = (await exec.run('shared', (g, i) => ({ hidden: g.gather(g.param('shared.weight', [c.vocabSize, c.dModel]), i.input_ids) }),
      { input_ids: inputIds })).hidden;
    const bias = (await exec.run('encoder.block.0.layer.0.SelfAttention.relative_attention_bias', (g, i) => ({ bias: this.attentionBias(g, i.mask, length) }),
      { mask: attentionMask })).bias;
    for (let l = 0; l < c.numLayers; l++) {
      hidden = (await exec.run(`encoder.block.${l}`, (g, i) => ({ hidden: g.scope(`encoder.block.${l}`, () => this.block(g, i.hidden, i.bias)) }),
        { hidden, bias })).hidden;
    }
    return (await exec.run('encoder.final_layer_norm', (g, i) => ({ hidden: g.rmsNorm(i.hidden, 'encoder.final_layer_norm', c.layerNormEps) }),
      { hidden })).hidden;
  }

  /** The relative-position bias [1, H, L, L] plus the padding mask, float32 min where a key is padding: [B, H, L, L]. */
  private attentionBias(g: GraphBuilder, mask: Value, length: number): Value {
    const c = this.config;
    const buckets = new BigInt64Array(length * length);
    for (let q = 0; q < length; q++) {
      for (let k = 0; k < length; k++) buckets[q * length + k] = BigInt(relativePositionBucket(k - q, c.relativeBuckets, c.relativeMaxDistance));
    }
    const table = g.param('encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight', [c.relativeBuckets, c.numHeads]);
    const perPosition = g.gather(table, g.constant(buckets, [length, length], 'buckets')); // [L, L, H]
    const position = g.reshape(g.transpose(perPosition, [2, 0, 1]), [1, c.numHeads, length, length]);
    const batch = mask.shape[0];
    const padding = g.mul(g.sub(g.scalar(1), g.cast(mask, 'float32')), g.scalar(-3.4028234663852886e38));
    return g.add(position, g.reshape(padding, [batch, 1, 1, length]));
  }

  /** T5Block: layer.0 self-attention, layer.1 feed-forward, each pre-norm with a residual. */
  private block(g: GraphBuilder, x: Value, bias: Value): Value {
    const c = this.config;
    const inner = c.numHeads * c.dKv;
    const attended = g.scope('layer.0', () => {
      const h = g.rmsNorm(x, 'layer_norm', c.layerNormEps);
      return g.scope('SelfAttention', () => {
        const [q, k, v] = ['q', 'k', 'v'].map((p) => g.linear(h, p, inner, false));
        return g.linear(g.attention(q, k, v, c.numHeads, { scale: 1, bias }), 'o', c.dModel, false);
      });
    });
    const mid = g.add(x, attended);
    const fed = g.scope('layer.1', () => {
      const h = g.rmsNorm(mid, 'layer_norm', c.layerNormEps);
      return g.scope('DenseReluDense', () => {
        const hidden = c.gated
          ? g.mul(g.activation(c.activation, g.linear(h, 'wi_0', c.dFf, false)), g.linear(h, 'wi_1', c.dFf, false))
          : g.activation(c.activation, g.linear(h, 'wi', c.dFf, false));
        return g.linear(hidden, 'wo', c.dModel, false);
      });
    });
    return g.add(mid, fed);
  }
}
