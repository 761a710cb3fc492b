/**
 * transformers CLIPTextModel: token + position embeddings, pre-LN encoder layers with a causal
 * mask, final LayerNorm. One segment, `text_model`, returning the final hidden states, the
 * penultimate layer's hidden states (before the final norm, as `hidden_states[-2]`) and the
 * pooled (end-of-text) state.
 *
 * CLIPTextModelWithProjection (SDXL's text_encoder_2) adds a second segment, `text_projection`:
 * a Linear without bias from the pooled state to `text_embeds` [B, projection_dim]. Its weight is
 * `text_projection.weight` at the top level, next to `text_model.*`, in transformers 4.x and 5.x.
 */
import type { GraphBuilder, Value } from '../graph/builder.ts';
import type { Executor, TensorLike } from '../runtime/executor.ts';
import { InputError } from '../errors.ts';
import { cfgInt, cfgNumber, cfgOneOf, cfgPositiveInt, type Config } from '../weights/config.ts';

export interface ClipTextConfig {
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  maxPositions: number;
  hiddenAct: 'quick_gelu' | 'gelu';
  layerNormEps: number;
  eosTokenId: number;
  /** Output width of text_projection (CLIPTextModelWithProjection only; transformers' default 512). */
  projectionDim: number;
}

export function parseClipTextConfig(cfg: Config, where: string): ClipTextConfig {
  const config: ClipTextConfig = {
    vocabSize: cfgPositiveInt(cfg, 'vocab_size', where, 49408),
    hiddenSize: cfgPositiveInt(cfg, 'hidden_size', where, 512),
    intermediateSize: cfgPositiveInt(cfg, 'intermediate_size', where, 2048),
    numLayers: cfgPositiveInt(cfg, 'num_hidden_layers', where, 12),
    numHeads: cfgPositiveInt(cfg, 'num_attention_heads', where, 8),
    maxPositions: cfgPositiveInt(cfg, 'max_position_embeddings', where, 77),
    hiddenAct: cfgOneOf(cfg, 'hidden_act', where, ['quick_gelu', 'gelu'] as const, 'quick_gelu'),
    layerNormEps: cfgNumber(cfg, 'layer_norm_eps', where, 1e-5),
    eosTokenId: cfgInt(cfg, 'eos_token_id', where, 2),
    projectionDim: cfgPositiveInt(cfg, 'projection_dim', where, 512),
  };
  if (config.hiddenSize % config.numHeads) {
    throw new InputError(`${where}: num_attention_heads`, `hidden_size ${config.hiddenSize} is not divisible into heads`,
      'a divisor of hidden_size', `${config.numHeads}`);
  }
  return config;
}

export interface ClipTextOutputs<T> {
  lastHiddenState: T;
  penultimateHiddenState: T;
  pooled: T;
  /** text_projection(pooled) [B, projection_dim]: only from a CLIPTextModelWithProjection. */
  textEmbeds?: T;
}

export class ClipTextModel {
  /** True for CLIPTextModelWithProjection: forward also returns `textEmbeds`. */
  readonly hasProjection: boolean = false;

  constructor(readonly config: ClipTextConfig) {}

  /** The width of `textEmbeds` (the projection's), undefined without a projection. */
  get textEmbedsWidth(): number | undefined {
    return this.hasProjection ? this.config.projectionDim : undefined;
  }

  /** input_ids: int64 [B, L] with L ≤ max_position_embeddings. */
  async forward<T extends TensorLike>(exec: Executor<T>, inputIds: T): Promise<ClipTextOutputs<T>> {
    const out = await exec.run('text_model', (g, i) => this.build(g, i.input_ids), { input_ids: inputIds });
    return { lastHiddenState: out.last_hidden_state, penultimateHiddenState: out.penultimate_hidden_state, pooled: out.pooled };
  }

  private build(g: GraphBuilder, ids: Value): Record<string, Value> {
    const c = this.config;
    const length = ids.shape[1];
    let h = g.scope('embeddings', () => {
      const tokens = g.gather(g.param('token_embedding.weight', [c.vocabSize, c.hiddenSize]), ids);
      const positions = g.slice(g.param('position_embedding.weight', [c.maxPositions, c.hiddenSize]), 0, 0, length);
      return g.add(tokens, positions);
    });
    // Additive causal mask with torch.finfo(float32).min above the diagonal, as transformers builds it.
    const mask = new Float32Array(length * length);
    for (let r = 0; r < length; r++) for (let k = r + 1; k < length; k++) mask[r * length + k] = -3.4028234663852886e38;
    const causal = g.constant(mask, [1, 1, length, length], 'causal_mask');
    let penultimate = h;
    for (let l = 0; l < c.numLayers; l++) {
      if (l === c.numLayers - 1) penultimate = h;
      h = g.scope(`encoder.layers.${l}`, () => {
        const normed = g.layerNorm(h, 'layer_norm1', c.layerNormEps);
        const attn = g.scope('self_attn', () => {
          const q = g.linear(normed, 'q_proj', c.hiddenSize);
          const k = g.linear(normed, 'k_proj', c.hiddenSize);
          const v = g.linear(normed, 'v_proj', c.hiddenSize);
          return g.linear(g.attention(q, k, v, c.numHeads, { bias: causal, kind: 'plain' }), 'out_proj', c.hiddenSize);
        });
        const mid = g.add(h, attn);
        const normed2 = g.layerNorm(mid, 'layer_norm2', c.layerNormEps);
        const ff = g.scope('mlp', () => g.linear(g.activation(c.hiddenAct, g.linear(normed2, 'fc1', c.intermediateSize)), 'fc2', c.hiddenSize));
        return g.add(mid, ff);
      });
    }
    const last = g.layerNorm(h, 'final_layer_norm', c.layerNormEps);
    // transformers pools at the first end-of-text token; legacy configs (eos id 2) at the highest id.
    const eosPosition = c.eosTokenId === 2
      ? g.argmax(ids, 1)
      : g.argmax(g.cast(g.equal(ids, g.constant(BigInt64Array.from([BigInt(c.eosTokenId)]), [1], 'eos')), 'int32'), 1);
    return { last_hidden_state: last, penultimate_hidden_state: penultimate, pooled: g.gatherRows(last, eosPosition) };
  }
}

/** transformers CLIPTextModelWithProjection: CLIPTextModel plus `text_projection` on the pooled state. */
export class ClipTextModelWithProjection extends ClipTextModel {
  override readonly hasProjection: boolean = true;

  override async forward<T extends TensorLike>(exec: Executor<T>, inputIds: T): Promise<Required<ClipTextOutputs<T>>> {
    const out = await super.forward(exec, inputIds);
    const dim = this.config.projectionDim;
    const projected = await exec.run('text_projection', (g, i) => ({ text_embeds: g.linear(i.pooled, 'text_projection', dim, false) }),
      { pooled: out.pooled });
    return { ...out, textEmbeds: projected.text_embeds };
  }
}
