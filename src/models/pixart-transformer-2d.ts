/**
 * diffusers PixArtTransformer2DModel (PixArt-α / PixArt-Σ), driven by its config.json; diffusers'
 * Transformer2DModel folders with norm_type "ada_norm_single" are the same model. Segments, named
 * after diffusers' module paths: `pos_embed` (patches plus the 2-D sin-cos table for this latent
 * size), `adaln_single` (the timestep and, for α-1024, resolution / aspect-ratio embeddings),
 * `caption_projection`, per block `transformer_blocks.N.scale_shift_table` (the block's modulation)
 * and its BasicTransformerBlock sub-layers `…attn1`, `…attn2` (over the text, with its padding
 * mask), `…ff`, then `proj_out` (final modulation, projection, unpatchify).
 */
import { InputError } from '../errors.ts';
import type { GraphBuilder, Value } from '../graph/builder.ts';
import { shaped, type Executor, type ShapedTensor, type TensorLike } from '../runtime/executor.ts';
import type { ModelDeclaration } from '../runtime/protocol.ts';
import { cfgBool, cfgNumber, cfgOneOf, cfgOptionalBool, cfgOptionalInt, cfgOptionalNumber, cfgPositiveInt, type Config } from '../weights/config.ts';
import { basicTransformerBlock } from './basic-transformer-block.ts';
import { checkPositionTableWidth, keysAndValues, patchEmbed, timestepEmbedding, unpatchify } from './layers.ts';

export interface PixArtConfig {
  heads: number;
  headDim: number;
  inChannels: number;
  outChannels: number;
  layers: number;
  crossAttentionDim: number;
  attentionBias: boolean;
  sampleSize: number;
  patchSize: number;
  normAffine: boolean;
  normEps: number;
  interpolationScale: number;
  /** α-1024's micro-conditions: resolution and aspect-ratio embeddings added to the timestep's. */
  useAdditionalConditions: boolean;
  /** Width of the text encoder's states (caption_projection's input); null: no projection. */
  captionChannels: number | null;
}

/** Reads a PixArtTransformer2DModel (or Transformer2DModel with norm_type "ada_norm_single") config.json. */
export function parsePixArtConfig(cfg: Config, where: string): PixArtConfig {
  cfgOneOf(cfg, 'norm_type', where, ['ada_norm_single'], 'ada_norm_single');
  cfgOneOf(cfg, 'activation_fn', where, ['gelu-approximate'], 'gelu-approximate');
  cfgOneOf(cfg, 'attention_type', where, ['default'], 'default');
  const refuse = (key: string, allowed: unknown[], expected: string): void => {
    const v = cfg[key];
    if (v !== undefined && !allowed.includes(v)) throw new InputError(`${where}: ${key}`, 'unsupported option', expected, JSON.stringify(v));
  };
  refuse('only_cross_attention', [false], 'false');
  refuse('double_self_attention', [false], 'false');
  refuse('use_linear_projection', [false], 'false');
  refuse('num_vector_embeds', [null], 'null');
  const sampleSize = cfgPositiveInt(cfg, 'sample_size', where, 128);
  const patchSize = cfgPositiveInt(cfg, 'patch_size', where, 2);
  if (sampleSize % patchSize) {
    throw new InputError(`${where}: sample_size`, `not divisible by patch_size ${patchSize}`, `a multiple of ${patchSize}`, `${sampleSize}`);
  }
  const heads = cfgPositiveInt(cfg, 'num_attention_heads', where, 16);
  const headDim = cfgPositiveInt(cfg, 'attention_head_dim', where, 72);
  checkPositionTableWidth(heads * headDim, where, 'num_attention_heads × attention_head_dim');
  const inChannels = cfgPositiveInt(cfg, 'in_channels', where, 4);
  // Transformer2DModel decides the micro-conditions from the sample size; PixArtTransformer2DModel may say.
  const useAdditionalConditions = cfgOptionalBool(cfg, 'use_additional_conditions', where) ?? sampleSize === 128;
  if (useAdditionalConditions && (heads * headDim) % 3) {
    throw new InputError(`${where}: use_additional_conditions`, `the inner width ${heads * headDim} does not split into the three size embeddings`,
      'num_attention_heads × attention_head_dim divisible by 3');
  }
  return {
    heads,
    headDim,
    inChannels,
    outChannels: cfgOptionalInt(cfg, 'out_channels', where) ?? inChannels,
    layers: cfgPositiveInt(cfg, 'num_layers', where, 28),
    crossAttentionDim: cfgPositiveInt(cfg, 'cross_attention_dim', where, 1152),
    attentionBias: cfgBool(cfg, 'attention_bias', where, true),
    sampleSize,
    patchSize,
    normAffine: cfgBool(cfg, 'norm_elementwise_affine', where, false),
    normEps: cfgNumber(cfg, 'norm_eps', where, 1e-6),
    interpolationScale: cfgOptionalNumber(cfg, 'interpolation_scale', where) ?? Math.max(Math.floor(sampleSize / 64), 1),
    useAdditionalConditions,
    captionChannels: cfgOptionalInt(cfg, 'caption_channels', where) ?? null,
  };
}

/** α-1024's micro-conditions for a batch: resolution (height, width) [B, 2] and aspect ratio (height / width) [B, 1]. */
export interface SizeConditioning<T> {
  resolution: T;
  aspectRatio: T;
}

/** Text conditioning: the encoder's states [B, S, C], its padding mask (int64 [B, S], 1 = token), and precomputed cross-attention K/V. */
export interface TextConditioning<T> {
  states: T;
  mask: T;
  kv?: Map<string, { k: T; v: T; bias: T }>;
}

export class PixArtTransformer2DModel {
  readonly innerDim: number;

  constructor(readonly config: PixArtConfig) {
    this.innerDim = config.heads * config.headDim;
  }

  get declaration(): ModelDeclaration {
    return {
      kind: 'PixArt transformer',
      transformerBlocks: Array.from({ length: this.config.layers }, (_, i) => ({ block: `transformer_blocks.${i}`, downsample: this.config.patchSize })),
    };
  }

  /** Checks a latent size against the patch size. */
  private checkLatent(sample: TensorLike): void {
    const [, channels, h, w] = sample.dims;
    const p = this.config.patchSize;
    if (channels !== this.config.inChannels || h % p || w % p) {
      throw new InputError('PixArtTransformer2DModel.forward: sample', `latents must have ${this.config.inChannels} channels and a size divisible by patch_size ${p}`,
        `[B, ${this.config.inChannels}, k·${p}, k·${p}]`, `[${sample.dims.join(', ')}]`);
    }
  }

  /**
   * The caption projection and every block's cross-attention keys and values for a prompt batch,
   * with its padding bias: they depend on the prompt alone, so a pipeline computes them once.
   */
  async crossAttentionKV<T extends TensorLike>(exec: Executor<T>, states: T, mask: T): Promise<Map<string, { k: T; v: T; bias: T }>> {
    const c = this.config;
    const blocks = Array.from({ length: c.layers }, (_, i) => `transformer_blocks.${i}.attn2`);
    const out = await exec.run('cross_attention_kv', (g, i) => {
      const context = this.projectCaption(g, i.states);
      const result: Record<string, Value> = { bias: this.maskBias(g, i.mask) };
      for (const path of blocks) {
        const { k, v } = g.scope(path, () => keysAndValues(g, context, { heads: c.heads, innerDim: this.innerDim, qkvBias: c.attentionBias }));
        Object.assign(result, { [`${path}.k`]: k, [`${path}.v`]: v });
      }
      return result;
    }, { states, mask });
    return new Map(blocks.map((path) => [path, { k: out[`${path}.k`], v: out[`${path}.v`], bias: out.bias }]));
  }

  /** diffusers' encoder_attention_mask → bias: (1 − mask) · −10000, [B, 1, 1, S]. */
  private maskBias(g: GraphBuilder, mask: Value): Value {
    const [batch, length] = mask.shape;
    return g.reshape(g.mul(g.sub(g.scalar(1), g.cast(mask, 'float32')), g.scalar(-10000)), [batch, 1, 1, length]);
  }

  private projectCaption(g: GraphBuilder, states: Value): Value {
    if (this.config.captionChannels === null) return states;
    return g.scope('caption_projection', () => g.linear(g.geluTanh(g.linear(states, 'linear_1', this.innerDim)), 'linear_2', this.innerDim));
  }

  /**
   * One denoiser evaluation: sample [B, C, h, w], timestep [B] (float32), the text → the noise
   * prediction with the learned variance [B, out_channels, h, w]. `sizes` is required when the
   * config uses the additional conditions (α-1024), refused otherwise.
   */
  async forward<T extends TensorLike>(exec: Executor<T>, sample: T, timestep: T, text: TextConditioning<T>, sizes?: SizeConditioning<T>): Promise<T> {
    const c = this.config;
    this.checkLatent(sample);
    if (c.useAdditionalConditions !== (sizes !== undefined)) {
      throw new InputError('PixArtTransformer2DModel.forward: sizes', c.useAdditionalConditions
        ? 'this model takes resolution and aspect-ratio conditions (config use_additional_conditions)' : 'this model takes no size conditions',
      c.useAdditionalConditions ? '{ resolution, aspectRatio }' : 'undefined', sizes ? 'sizes' : 'undefined');
    }
    const [, , height, width] = sample.dims;
    const [h, w] = [height / c.patchSize, width / c.patchSize];
    const dim = this.innerDim;
    let tokens = (await exec.run('pos_embed', (g, i) => ({
      tokens: g.scope('pos_embed', () => patchEmbed(g, i.sample, { patchSize: c.patchSize, dim, baseSize: c.sampleSize / c.patchSize, interpolationScale: c.interpolationScale })),
    }), { sample })).tokens;
    const { modulation, embedded } = await exec.run('adaln_single', (g, i) => g.scope('adaln_single', () => this.adaLayerNormSingle(g, i)),
      { timestep, ...(sizes ? { resolution: sizes.resolution, aspect_ratio: sizes.aspectRatio } : {}) });
    let cross: { context?: T; bias?: T } = {};
    if (!text.kv) {
      cross = await exec.run('caption_projection', (g, i) => ({ context: this.projectCaption(g, i.states), bias: this.maskBias(g, i.mask) }),
        { states: text.states, mask: text.mask });
    }
    for (let b = 0; b < c.layers; b++) {
      const block = `transformer_blocks.${b}`;
      const m = await exec.run(`${block}.scale_shift_table`, (g, i) => {
        const table = g.reshape(g.param(`${block}.scale_shift_table`, [6, dim]), [1, 6, dim]);
        const all = g.add(table, g.reshape(i.modulation, [i.modulation.shape[0], 6, dim]));
        return Object.fromEntries(['shiftMsa', 'scaleMsa', 'gateMsa', 'shiftMlp', 'scaleMlp', 'gateMlp'].map((name, k) => [name, g.slice(all, 1, k, k + 1)]));
      }, { modulation });
      const kv = text.kv?.get(`${block}.attn2`);
      tokens = await basicTransformerBlock(exec, block, tokens, {
        norm: 'ada_norm_single', heads: c.heads, qkvBias: c.attentionBias, normEps: c.normEps, normAffine: c.normAffine, feedForward: 'gelu-approximate',
        modulation: { shiftMsa: m.shiftMsa, scaleMsa: m.scaleMsa, gateMsa: m.gateMsa, shiftMlp: m.shiftMlp, scaleMlp: m.scaleMlp, gateMlp: m.gateMlp },
        cross: kv ? { kv, bias: kv.bias } : cross, latentSize: [height, width],
      });
    }
    return (await exec.run('proj_out', (g, i) => {
      const table = g.reshape(g.param('scale_shift_table', [2, dim]), [1, 2, dim]);
      const both = g.add(table, g.reshape(i.embedded, [i.embedded.shape[0], 1, dim]));
      const [shift, scale] = [g.slice(both, 1, 0, 1), g.slice(both, 1, 1, 2)];
      const normed = g.add(g.mul(g.layerNormPlain(i.tokens, 1e-6), g.add(scale, g.scalar(1))), shift);
      const out = g.linear(normed, 'proj_out', c.patchSize * c.patchSize * c.outChannels);
      return { sample: unpatchify(g, out, h, w, c.patchSize, c.outChannels) };
    }, { tokens, embedded })).sample;
  }

  /**
   * AdaLayerNormSingle: the timestep's sinusoidal embedding (256, cos first) through
   * timestep_embedder, plus for α-1024 the resolution and aspect-ratio embeddings (each D/3 wide);
   * `modulation` = linear(silu(·)) [B, 6D], `embedded` the embedding itself [B, D].
   */
  private adaLayerNormSingle(g: GraphBuilder, i: Record<string, Value>): { modulation: Value; embedded: Value } {
    const dim = this.innerDim;
    const mlp = (x: Value, name: string, out: number) => g.scope(name, () => g.linear(g.silu(g.linear(x, 'linear_1', out)), 'linear_2', out));
    let embedded = g.scope('emb', () => {
      const t = mlp(timestepEmbedding(g, i.timestep, 256, true, 0), 'timestep_embedder', dim);
      if (!this.config.useAdditionalConditions) return t;
      const batch = i.timestep.shape[0];
      const size = dim / 3;
      const flat = (x: Value) => g.reshape(x, [x.size]);
      const resolution = g.reshape(mlp(timestepEmbedding(g, flat(i.resolution), 256, true, 0), 'resolution_embedder', size), [batch, 2 * size]);
      const aspect = mlp(timestepEmbedding(g, flat(i.aspect_ratio), 256, true, 0), 'aspect_ratio_embedder', size);
      return g.add(t, g.concat([resolution, aspect], 1));
    });
    embedded = g.reshape(embedded, [embedded.shape[0], dim]);
    return { modulation: g.linear(g.silu(embedded), 'linear', 6 * dim), embedded };
  }

  /**
   * A forward pass on shapes alone, e.g. for MAC counts: `batch` rows, latent h × w, `tokens` text
   * tokens (default 120, PixArt-α's) as wide as the caption projection takes.
   */
  forwardShapes(exec: Executor<ShapedTensor>, o: { batch: number; latentHeight: number; latentWidth: number; tokens?: number; textChannels?: number }): Promise<ShapedTensor> {
    const c = this.config;
    const [tokens, channels] = [o.tokens ?? 120, o.textChannels ?? c.captionChannels ?? c.crossAttentionDim];
    const sizes = c.useAdditionalConditions ? { resolution: shaped([o.batch, 2]), aspectRatio: shaped([o.batch, 1]) } : undefined;
    return this.forward(exec, shaped([o.batch, c.inChannels, o.latentHeight, o.latentWidth]), shaped([o.batch]),
      { states: shaped([o.batch, tokens, channels]), mask: shaped([o.batch, tokens], 'int64') }, sizes);
  }
}
