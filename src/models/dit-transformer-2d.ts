/**
 * diffusers DiTTransformer2DModel (class-conditional DiT), driven by its config.json; diffusers'
 * Transformer2DModel folders with norm_type "ada_norm_zero" (as facebook/DiT-XL-2-256 ships) are
 * the same model. Segments, named after diffusers' module paths: `pos_embed`, per block
 * `transformer_blocks.N.norm1` (AdaLayerNormZero: the block's own timestep + class embedding,
 * SiLU, linear → shift / scale / gate of attention and MLP) and the BasicTransformerBlock
 * sub-layers `…attn1`, `…ff`; then `proj_out` (block 0's embedding through proj_out_1 for the final
 * modulation, proj_out_2, unpatchify). The timestep embedding uses downscale_freq_shift = 1, as
 * diffusers' CombinedTimestepLabelEmbeddings does (the original DiT code divides by half, not half − 1).
 */
import { InputError } from '../errors.ts';
import type { GraphBuilder, Value } from '../graph/builder.ts';
import { shaped, type Executor, type ShapedTensor, type TensorLike } from '../runtime/executor.ts';
import type { ModelDeclaration } from '../runtime/protocol.ts';
import { cfgBool, cfgNumber, cfgOneOf, cfgOptionalInt, cfgOptionalNumber, cfgPositiveInt, type Config } from '../weights/config.ts';
import { basicTransformerBlock } from './basic-transformer-block.ts';
import { checkPositionGrid, checkPositionTableWidth, patchEmbed, timestepEmbedding, unpatchify } from './layers.ts';

export interface DiTConfig {
  heads: number;
  headDim: number;
  inChannels: number;
  outChannels: number;
  layers: number;
  attentionBias: boolean;
  sampleSize: number;
  patchSize: number;
  /** Real classes; id `numClasses` is the null class of classifier-free guidance. */
  numClasses: number;
  normAffine: boolean;
  normEps: number;
  interpolationScale: number;
}

/**
 * Reads a DiTTransformer2DModel (or Transformer2DModel with norm_type "ada_norm_zero") config.json.
 * `legacy`: the Transformer2DModel class, whose position table scale follows the sample size.
 */
export function parseDiTConfig(cfg: Config, where: string, legacy: boolean): DiTConfig {
  cfgOneOf(cfg, 'norm_type', where, ['ada_norm_zero'], 'ada_norm_zero');
  cfgOneOf(cfg, 'activation_fn', where, ['gelu-approximate'], 'gelu-approximate');
  for (const key of ['cross_attention_dim', 'num_vector_embeds', 'caption_channels']) {
    if (cfg[key] !== undefined && cfg[key] !== null) throw new InputError(`${where}: ${key}`, 'unsupported option for a class-conditional DiT', 'null', JSON.stringify(cfg[key]));
  }
  const sampleSize = cfgPositiveInt(cfg, 'sample_size', where, 32);
  const patchSize = cfgPositiveInt(cfg, 'patch_size', where, 2);
  if (sampleSize % patchSize) {
    throw new InputError(`${where}: sample_size`, `not divisible by patch_size ${patchSize}`, `a multiple of ${patchSize}`, `${sampleSize}`);
  }
  const inChannels = cfgPositiveInt(cfg, 'in_channels', where, 4);
  const heads = cfgPositiveInt(cfg, 'num_attention_heads', where, 16);
  const headDim = cfgPositiveInt(cfg, 'attention_head_dim', where, 72);
  const width = heads * headDim;
  checkPositionTableWidth(width, where, 'num_attention_heads × attention_head_dim');
  const grid = sampleSize / patchSize;
  checkPositionGrid(grid, grid, width, `${where}: sample_size`, `${sampleSize} with patch_size ${patchSize}`);
  return {
    heads,
    headDim,
    inChannels,
    outChannels: cfgOptionalInt(cfg, 'out_channels', where) ?? inChannels,
    layers: cfgPositiveInt(cfg, 'num_layers', where, 28),
    attentionBias: cfgBool(cfg, 'attention_bias', where, true),
    sampleSize,
    patchSize,
    numClasses: cfgPositiveInt(cfg, 'num_embeds_ada_norm', where, 1000),
    normAffine: cfgBool(cfg, 'norm_elementwise_affine', where, false),
    normEps: cfgNumber(cfg, 'norm_eps', where, 1e-5),
    interpolationScale: legacy ? (cfgOptionalNumber(cfg, 'interpolation_scale', where) ?? Math.max(Math.floor(sampleSize / 64), 1)) : 1,
  };
}

export class DiTTransformer2DModel {
  readonly innerDim: number;

  constructor(readonly config: DiTConfig) {
    this.innerDim = config.heads * config.headDim;
  }

  get declaration(): ModelDeclaration {
    return {
      kind: 'DiT',
      transformerBlocks: Array.from({ length: this.config.layers }, (_, i) => ({ block: `transformer_blocks.${i}`, downsample: this.config.patchSize })),
    };
  }

  /**
   * One denoiser evaluation: sample [B, C, h, w], timestep [B] (float32), class labels int64 [B]
   * (the null class `numClasses` for the unconditional half) → [B, out_channels, h, w].
   */
  async forward<T extends TensorLike>(exec: Executor<T>, sample: T, timestep: T, classLabels: T): Promise<T> {
    const c = this.config;
    const [batch, channels, height, width] = sample.dims;
    if (channels !== c.inChannels || height % c.patchSize || width % c.patchSize) {
      throw new InputError('DiTTransformer2DModel.forward: sample', `latents must have ${c.inChannels} channels and a size divisible by patch_size ${c.patchSize}`,
        `[B, ${c.inChannels}, k·${c.patchSize}, k·${c.patchSize}]`, `[${sample.dims.join(', ')}]`);
    }
    if (classLabels.dims.length !== 1 || classLabels.dims[0] !== batch || classLabels.type !== 'int64') {
      throw new InputError('DiTTransformer2DModel.forward: classLabels', 'wrong tensor', `int64 [${batch}]`, `${classLabels.type} [${classLabels.dims.join(', ')}]`);
    }
    const [h, w] = [height / c.patchSize, width / c.patchSize];
    const dim = this.innerDim;
    // Every block embeds the timestep and class with its own weights; the first segment hands both
    // on as outputs, so on a GPU they are uploaded once per call rather than once per block.
    const embedded = await exec.run('pos_embed', (g, i) => ({
      tokens: g.scope('pos_embed', () => patchEmbed(g, i.sample, { patchSize: c.patchSize, dim, baseSize: c.sampleSize / c.patchSize, interpolationScale: c.interpolationScale })),
      timestep: i.timestep,
      class_labels: i.class_labels,
    }), { sample, timestep, class_labels: classLabels });
    let tokens = embedded.tokens;
    [timestep, classLabels] = [embedded.timestep, embedded.class_labels];
    for (let b = 0; b < c.layers; b++) {
      const block = `transformer_blocks.${b}`;
      const m = await exec.run(`${block}.norm1`, (g, i) => g.scope(`${block}.norm1`, () => {
        const emb = g.linear(g.silu(this.conditioning(g, i.timestep, i.class_labels)), 'linear', 6 * dim);
        return Object.fromEntries(['shiftMsa', 'scaleMsa', 'gateMsa', 'shiftMlp', 'scaleMlp', 'gateMlp']
          .map((name, k) => [name, g.reshape(g.slice(emb, 1, k * dim, (k + 1) * dim), [emb.shape[0], 1, dim])]));
      }), { timestep, class_labels: classLabels });
      tokens = await basicTransformerBlock(exec, block, tokens, {
        norm: 'ada_norm_zero', heads: c.heads, qkvBias: c.attentionBias, normEps: c.normEps, normAffine: c.normAffine, feedForward: 'gelu-approximate',
        modulation: { shiftMsa: m.shiftMsa, scaleMsa: m.scaleMsa, gateMsa: m.gateMsa, shiftMlp: m.shiftMlp, scaleMlp: m.scaleMlp, gateMlp: m.gateMlp },
        latentSize: [height, width],
      });
    }
    return (await exec.run('proj_out', (g, i) => {
      const conditioning = g.scope('transformer_blocks.0.norm1', () => this.conditioning(g, i.timestep, i.class_labels));
      const both = g.linear(g.silu(conditioning), 'proj_out_1', 2 * dim);
      const [shift, scale] = [0, 1].map((k) => g.reshape(g.slice(both, 1, k * dim, (k + 1) * dim), [both.shape[0], 1, dim]));
      const normed = g.add(g.mul(g.layerNormPlain(i.tokens, 1e-6), g.add(scale, g.scalar(1))), shift);
      const out = g.linear(normed, 'proj_out_2', c.patchSize * c.patchSize * c.outChannels);
      return { sample: unpatchify(g, out, h, w, c.patchSize, c.outChannels) };
    }, { tokens, timestep, class_labels: classLabels })).sample;
  }

  /** CombinedTimestepLabelEmbeddings (`emb`): the timestep's embedding (256, cos first, shift 1) plus the class's. */
  private conditioning(g: GraphBuilder, timestep: Value, labels: Value): Value {
    const c = this.config;
    const dim = this.innerDim;
    return g.scope('emb', () => {
      const t = g.scope('timestep_embedder', () => g.linear(g.silu(g.linear(timestepEmbedding(g, timestep, 256, true, 1), 'linear_1', dim)), 'linear_2', dim));
      const y = g.gather(g.param('class_embedder.embedding_table.weight', [c.numClasses + 1, dim]), labels);
      return g.add(t, y);
    });
  }

  /** A forward pass on shapes alone: `batch` rows, latent h × w. */
  forwardShapes(exec: Executor<ShapedTensor>, o: { batch: number; latentHeight: number; latentWidth: number }): Promise<ShapedTensor> {
    const c = this.config;
    return this.forward(exec, shaped([o.batch, c.inChannels, o.latentHeight, o.latentWidth]), shaped([o.batch]), shaped([o.batch], 'int64'));
  }
}
