/**
 * diffusers UNet2DConditionModel (SD 1.x / 2.x / SDXL), driven by its config.json. The forward pass
 * is written as calls to named segments whose names are diffusers module paths:
 * `down_blocks.1.resnets.0`, `down_blocks.1.attentions.0.transformer_blocks.0.attn2`, ...
 * SDXL's micro-conditioning (`addition_embed_type: "text_time"`) is the `add_embedding` segment.
 * For acceleration methods it declares (runtime/protocol.ts) its transformer sub-layers (role,
 * residual, attention core), its down → up skips (LongSkips) and itself (`declaration`).
 */
import { InputError } from '../errors.ts';
import type { GraphBuilder, Value } from '../graph/builder.ts';
import { shaped, type Executor, type ShapedTensor, type TensorLike } from '../runtime/executor.ts';
import { LongSkips, type ModelDeclaration } from '../runtime/protocol.ts';
import { basicTransformerBlock } from './basic-transformer-block.ts';
import {
  cfgBool, cfgInt, cfgIntOrIntList, cfgNumber, cfgOneOf, cfgOptionalInt, cfgPositiveInt, cfgPositiveIntList, cfgStringList, checkDivisible, type Config,
} from '../weights/config.ts';
import { fromTokens, keysAndValues, resnetBlock2D, timestepEmbedding, toTokens } from './layers.ts';

const DOWN_TYPES = ['CrossAttnDownBlock2D', 'DownBlock2D'] as const;
const UP_TYPES = ['CrossAttnUpBlock2D', 'UpBlock2D'] as const;

export interface UNet2DConditionConfig {
  sampleSize: number;
  inChannels: number;
  outChannels: number;
  blockOutChannels: number[];
  downBlockTypes: (typeof DOWN_TYPES)[number][];
  upBlockTypes: (typeof UP_TYPES)[number][];
  hasMidBlock: boolean;
  layersPerBlock: number[];
  crossAttentionDim: number[];
  /** Heads per down block (diffusers' attention_head_dim, which counts heads for SD). */
  attentionHeads: number[];
  transformerLayersPerBlock: number[];
  normNumGroups: number;
  normEps: number;
  useLinearProjection: boolean;
  upcastAttention: boolean;
  flipSinToCos: boolean;
  freqShift: number;
  downsamplePadding: number;
  midBlockScaleFactor: number;
  convInKernel: number;
  convOutKernel: number;
  /**
   * SDXL's `addition_embed_type: "text_time"`: sinusoidal embeddings (width `timeEmbedDim`) of the
   * time ids, concatenated after the pooled text embeddings, through `add_embedding` (a
   * TimestepEmbedding with `inputDim` inputs) and added to the time embedding. null = none.
   */
  addition: { type: 'text_time'; timeEmbedDim: number; inputDim: number } | null;
  /**
   * LCM's guidance embedding width (`time_cond_proj_dim`): a [B, width] condition projected by
   * time_embedding.cond_proj (no bias) and added to the sinusoidal timestep embedding. null = none.
   */
  timeCondProjDim: number | null;
}

/** Precomputed cross-attention keys and values by attn2 module path (see crossAttentionKV). */
export type CrossAttentionKV<T> = Map<string, { k: T; v: T }>;

/** What the transformer blocks attend to, and the latent size their token grids come from. */
interface TextInput<T> {
  states: T;
  kv?: CrossAttentionKV<T>;
  latentSize: [number, number];
}

/**
 * Extra conditioning for the U-Net: SDXL's `added_cond_kwargs` (required with addition_embed_type
 * "text_time") and LCM's `timestep_cond` (required with time_cond_proj_dim).
 */
export interface AddedConditioning<T> {
  /** Pooled, projected text embeddings of text_encoder_2: float32 [B, P]. */
  textEmbeds?: T;
  /** Micro-conditioning ids, e.g. (original h, w, crop top, left, target h, w): float32 [B, K]. */
  timeIds?: T;
  /** The guidance-scale embedding of a guidance-distilled (LCM) U-Net: float32 [B, time_cond_proj_dim]. */
  timestepCond?: T;
}

/** Reads and validates a UNet2DConditionModel config.json; unsupported options are refused by name. */
export function parseUNetConfig(cfg: Config, where: string): UNet2DConditionConfig {
  const blockOutChannels = cfgPositiveIntList(cfg, 'block_out_channels', where, [320, 640, 1280, 1280]);
  const n = blockOutChannels.length;
  const downBlockTypes = cfgStringList(cfg, 'down_block_types', where);
  const upBlockTypes = cfgStringList(cfg, 'up_block_types', where);
  const checkTypes = (key: string, types: string[], allowed: readonly string[]): void => {
    if (types.length !== n) throw new InputError(`${where}: ${key}`, 'wrong number of blocks', `${n} (one per block_out_channels entry)`, `${types.length}`);
    for (const t of types) if (!allowed.includes(t)) throw new InputError(`${where}: ${key}`, 'unsupported block type', allowed.join(' or '), t);
  };
  checkTypes('down_block_types', downBlockTypes, DOWN_TYPES);
  checkTypes('up_block_types', upBlockTypes, UP_TYPES);
  const midBlockType = cfg.mid_block_type ?? 'UNetMidBlock2DCrossAttn';
  if (midBlockType !== null && midBlockType !== 'UNetMidBlock2DCrossAttn') {
    throw new InputError(`${where}: mid_block_type`, 'unsupported mid block', 'UNetMidBlock2DCrossAttn or null', String(midBlockType));
  }
  const refuse = (key: string, allowed: unknown[], expected: string): void => {
    const v = cfg[key];
    if (v !== undefined && !allowed.includes(v)) throw new InputError(`${where}: ${key}`, 'unsupported option', expected, JSON.stringify(v));
  };
  refuse('num_attention_heads', [null], 'null (diffusers counts heads in attention_head_dim for this model)');
  refuse('class_embed_type', [null], 'null');
  refuse('addition_embed_type', [null, 'text_time'], 'null or "text_time"');
  refuse('time_embedding_type', ['positional'], '"positional"');
  refuse('resnet_time_scale_shift', ['default'], '"default"');
  refuse('only_cross_attention', [false], 'false');
  refuse('dual_cross_attention', [false], 'false');
  refuse('center_input_sample', [false], 'false');
  refuse('encoder_hid_dim', [null], 'null');
  refuse('timestep_post_act', [null], 'null');
  refuse('class_embeddings_concat', [false], 'false');
  refuse('attention_type', ['default'], '"default"');
  refuse('time_embedding_dim', [null], 'null');
  refuse('time_embedding_act_fn', [null], 'null');
  refuse('resnet_skip_time_act', [false], 'false');
  refuse('resnet_out_scale_factor', [1], '1.0');
  refuse('cross_attention_norm', [null], 'null');
  refuse('mid_block_only_cross_attention', [null, false], 'null or false');
  refuse('num_class_embeds', [null], 'null');
  refuse('encoder_hid_dim_type', [null], 'null');
  refuse('reverse_transformer_layers_per_block', [null], 'null');
  cfgOneOf(cfg, 'act_fn', where, ['silu'], 'silu');
  const convInKernel = cfgOddKernel(cfg, 'conv_in_kernel', where);
  const convOutKernel = cfgOddKernel(cfg, 'conv_out_kernel', where);
  const normNumGroups = cfgPositiveInt(cfg, 'norm_num_groups', where, 32);
  checkDivisible(where, 'norm_num_groups', normNumGroups, blockOutChannels, 'block_out_channels');
  const attentionHeads = cfgIntOrIntList(cfg, 'attention_head_dim', where, n, 8);
  blockOutChannels.forEach((channels, b) => {
    if (channels % attentionHeads[b]) {
      throw new InputError(`${where}: attention_head_dim`, `block ${b} has ${channels} channels, not divisible into ${attentionHeads[b]} heads`,
        `a head count dividing block_out_channels[${b}]`, `${attentionHeads[b]}`);
    }
  });
  let addition: UNet2DConditionConfig['addition'] = null;
  if (cfg.addition_embed_type === 'text_time') {
    const timeEmbedDim = cfgPositiveInt(cfg, 'addition_time_embed_dim', where);
    if (timeEmbedDim % 2) {
      throw new InputError(`${where}: addition_time_embed_dim`, 'unsupported option', 'an even width', `${timeEmbedDim}`);
    }
    addition = { type: 'text_time', timeEmbedDim, inputDim: cfgPositiveInt(cfg, 'projection_class_embeddings_input_dim', where) };
  }
  return {
    sampleSize: cfgOptionalInt(cfg, 'sample_size', where) ?? 64,
    inChannels: cfgPositiveInt(cfg, 'in_channels', where, 4),
    outChannels: cfgPositiveInt(cfg, 'out_channels', where, 4),
    blockOutChannels,
    downBlockTypes: downBlockTypes as UNet2DConditionConfig['downBlockTypes'],
    upBlockTypes: upBlockTypes as UNet2DConditionConfig['upBlockTypes'],
    hasMidBlock: midBlockType !== null,
    layersPerBlock: cfgIntOrIntList(cfg, 'layers_per_block', where, n, 2),
    crossAttentionDim: cfgIntOrIntList(cfg, 'cross_attention_dim', where, n, 1280),
    attentionHeads,
    transformerLayersPerBlock: cfgIntOrIntList(cfg, 'transformer_layers_per_block', where, n, 1),
    normNumGroups,
    normEps: cfgNumber(cfg, 'norm_eps', where, 1e-5),
    useLinearProjection: cfgBool(cfg, 'use_linear_projection', where, false),
    upcastAttention: cfgBool(cfg, 'upcast_attention', where, false),
    flipSinToCos: cfgBool(cfg, 'flip_sin_to_cos', where, true),
    freqShift: cfgNumber(cfg, 'freq_shift', where, 0),
    downsamplePadding: cfgInt(cfg, 'downsample_padding', where, 1),
    midBlockScaleFactor: cfgNumber(cfg, 'mid_block_scale_factor', where, 1),
    convInKernel,
    convOutKernel,
    addition,
    timeCondProjDim: cfg.time_cond_proj_dim === undefined || cfg.time_cond_proj_dim === null ? null : guidanceEmbedWidth(cfg, where),
  };
}

/** time_cond_proj_dim: the guidance embedding has width/2 frequencies, spaced by 1/(width/2 − 1). */
function guidanceEmbedWidth(cfg: Config, where: string): number {
  const width = cfgPositiveInt(cfg, 'time_cond_proj_dim', where);
  if (width < 4) throw new InputError(`${where}: time_cond_proj_dim`, 'too small for the guidance embedding', 'null, or at least 4', `${width}`);
  return width;
}

/** Kernel sizes must be odd so that "same" padding exists. */
function cfgOddKernel(cfg: Config, key: string, where: string): number {
  const k = cfgPositiveInt(cfg, key, where, 3);
  if (k % 2 === 0) throw new InputError(`${where}: ${key}`, 'wrong value', 'an odd kernel size', `${k}`);
  return k;
}

export class UNet2DConditionModel {
  readonly timeEmbedDim: number;

  constructor(readonly config: UNet2DConditionConfig) {
    this.timeEmbedDim = config.blockOutChannels[0] * 4;
  }

  /** Outputs of the down path after conv_in: one per resnet(+attention) layer and one per downsampler. */
  private get downPathOutputs(): number {
    const c = this.config;
    return c.layersPerBlock.reduce((a, b) => a + b, 0) + c.blockOutChannels.length - 1;
  }

  /**
   * What methods may rely on: the transformer blocks and their downsampling, and the down → up
   * skips. Skip 0 is conv_in's output, then the down path's outputs in order; branch b keeps skips
   * 0…b, so the deepest branch cuts out the mid block alone (there is none below it without one).
   */
  get declaration(): ModelDeclaration {
    const c = this.config;
    const outputs = this.downPathOutputs;
    return {
      kind: 'U-Net',
      transformerBlocks: this.crossAttentionLayers().map((l) => ({ block: l.path.replace(/\.attn2$/, ''), downsample: 2 ** l.level })),
      longSkips: {
        maxBranch: c.hasMidBlock ? outputs : outputs - 1,
        describe: `${c.blockOutChannels.length} down blocks of ${c.layersPerBlock.join('/')} layers: ${outputs} down-path outputs${c.hasMidBlock ? '' : ', no mid block'}`,
      },
    };
  }

  /** Total spatial downsampling of the down path. */
  get downsampleFactor(): number {
    return 2 ** (this.config.blockOutChannels.length - 1);
  }

  /**
   * Shapes of the `added` conditioning a forward pass takes at batch `batch`, or null when the
   * config has none. SDXL base has 6 time ids; `textEmbedsDim` (text_encoder_2's projection_dim)
   * decides the count where known (the SDXL refiner has 5), else 6 is assumed.
   */
  addedConditioningShapes(batch: number, textEmbedsDim?: number): { textEmbeds: number[]; timeIds: number[] } | null {
    const a = this.config.addition;
    if (!a) return null;
    const timeIds = textEmbedsDim === undefined ? 6 : (a.inputDim - textEmbedsDim) / a.timeEmbedDim;
    const width = textEmbedsDim ?? a.inputDim - 6 * a.timeEmbedDim;
    if (!Number.isInteger(timeIds) || timeIds <= 0 || width <= 0) {
      throw new InputError('unet config: projection_class_embeddings_input_dim',
        `does not split into text embeddings${textEmbedsDim === undefined ? '' : ` of width ${textEmbedsDim}`} plus time ids of width ${a.timeEmbedDim}`,
        textEmbedsDim === undefined ? `more than 6 × ${a.timeEmbedDim}` : `${textEmbedsDim} + K × ${a.timeEmbedDim}`, `${a.inputDim}`);
    }
    return { textEmbeds: [batch, width], timeIds: [batch, timeIds] };
  }

  /** Checks `added` against the config and the batch: each part present exactly when the config asks for it. */
  private checkAdded<T extends TensorLike>(batch: number, added: AddedConditioning<T> | undefined): void {
    const a = this.config.addition;
    const where = 'UNet2DConditionModel.forward: added';
    const wrongTensor = (name: string, t: T, width: string) => {
      if (t.dims.length !== 2 || t.dims[0] !== batch || t.type !== 'float32' || (width !== 'N' && t.dims[1] !== Number(width))) {
        throw new InputError(`${where}.${name}`, 'wrong tensor', `float32 [${batch}, ${width}] (batch of the sample)`, `${t.type} [${t.dims.join(', ')}]`);
      }
    };
    const projDim = this.config.timeCondProjDim;
    if (projDim === null && added?.timestepCond !== undefined) {
      throw new InputError(`${where}.timestepCond`, 'this U-Net takes no guidance embedding (config time_cond_proj_dim is null)', 'undefined', 'a tensor');
    }
    if (projDim !== null) {
      if (added?.timestepCond === undefined) {
        throw new InputError(`${where}.timestepCond`, 'missing: a guidance-distilled (LCM) U-Net (config time_cond_proj_dim) needs the guidance embedding', `[B, ${projDim}]`, 'undefined');
      }
      wrongTensor('timestepCond', added.timestepCond, String(projDim));
    }
    if (!a) {
      if (added?.textEmbeds !== undefined || added?.timeIds !== undefined) {
        throw new InputError(where, 'this U-Net takes no added conditioning (config addition_embed_type is null)', 'undefined',
          'textEmbeds/timeIds');
      }
      return;
    }
    if (added === undefined || added.textEmbeds === undefined || added.timeIds === undefined) {
      throw new InputError(where, 'missing conditioning: config addition_embed_type "text_time" (SDXL) needs the pooled text ' +
        'embeddings and the time ids', '{ textEmbeds: [B, P], timeIds: [B, K] }', added === undefined ? 'undefined' : 'an incomplete object');
    }
    const { textEmbeds, timeIds } = added;
    wrongTensor('textEmbeds', textEmbeds, 'N');
    wrongTensor('timeIds', timeIds, 'N');
    const width = textEmbeds.dims[1] + timeIds.dims[1] * a.timeEmbedDim;
    if (width !== a.inputDim) {
      throw new InputError(where, `textEmbeds width ${textEmbeds.dims[1]} + ${timeIds.dims[1]} time ids × addition_time_embed_dim ` +
        `${a.timeEmbedDim} = ${width} does not match projection_class_embeddings_input_dim`, `${a.inputDim}`, `${width}`);
    }
  }

  /**
   * Every cross-attention module (attn2) in forward order, with its width, head count and level
   * (the resolution it runs at is the latent's divided by 2^level).
   */
  crossAttentionLayers(): { path: string; channels: number; heads: number; level: number }[] {
    const c = this.config;
    const n = c.blockOutChannels.length;
    const layers: { path: string; channels: number; heads: number; level: number }[] = [];
    const add = (attention: string, b: number) => {
      for (let k = 0; k < c.transformerLayersPerBlock[b]; k++) {
        layers.push({ path: `${attention}.transformer_blocks.${k}.attn2`, channels: c.blockOutChannels[b], heads: c.attentionHeads[b], level: b });
      }
    };
    for (let b = 0; b < n; b++) {
      if (c.downBlockTypes[b] === 'CrossAttnDownBlock2D') for (let j = 0; j < c.layersPerBlock[b]; j++) add(`down_blocks.${b}.attentions.${j}`, b);
    }
    if (c.hasMidBlock) add('mid_block.attentions.0', n - 1);
    for (let u = 0; u < n; u++) {
      const b = n - 1 - u;
      if (c.upBlockTypes[u] === 'CrossAttnUpBlock2D') for (let j = 0; j <= c.layersPerBlock[b]; j++) add(`up_blocks.${u}.attentions.${j}`, b);
    }
    return layers;
  }

  /**
   * The keys and values of every cross-attention for a prompt batch: they depend on the prompt
   * alone, so a pipeline computes them once (segment `cross_attention_kv`) instead of every call.
   */
  async crossAttentionKV<T extends TensorLike>(exec: Executor<T>, encoderHiddenStates: T): Promise<CrossAttentionKV<T>> {
    const layers = this.crossAttentionLayers();
    const out = await exec.run('cross_attention_kv', (g, i) => {
      const result: Record<string, Value> = {};
      for (const l of layers) {
        const { k, v } = g.scope(l.path, () => keysAndValues(g, i.context, { heads: l.heads, innerDim: l.channels, qkvBias: false }));
        result[`${l.path}.k`] = k;
        result[`${l.path}.v`] = v;
      }
      return result;
    }, { context: encoderHiddenStates });
    return new Map(layers.map((l) => [l.path, { k: out[`${l.path}.k`], v: out[`${l.path}.v`] }]));
  }

  /**
   * One denoiser evaluation: sample [B, C, h, w], timestep [B] (float32), encoder hidden states
   * [B, 77, D] → noise (or v) prediction [B, C, h, w]. `added` (SDXL: pooled text embeddings and
   * time ids) is required when the config's addition_embed_type is "text_time", refused otherwise.
   */
  async forward<T extends TensorLike>(exec: Executor<T>, sample: T, timestep: T, encoderHiddenStates: T,
    added?: AddedConditioning<T>, crossKV?: CrossAttentionKV<T>): Promise<T> {
    const c = this.config;
    this.checkAdded(sample.dims[0], added);
    const n = c.blockOutChannels.length;
    const resnet = (name: string, outChannels: number, scale = 1) => (g: GraphBuilder, i: Record<string, Value>) => {
      const x = i.skip ? g.concat([i.x, i.skip], 1) : i.x;
      return { x: g.scope(name, () => resnetBlock2D(g, x, i.temb, outChannels, { groups: c.normNumGroups, eps: c.normEps, tembChannels: this.timeEmbedDim, outputScaleFactor: scale })) };
    };
    const text = { states: encoderHiddenStates, kv: crossKV, latentSize: [sample.dims[2], sample.dims[3]] as [number, number] };
    const transformer = (path: string, x: T, heads: number, layers: number) => this.transformer2d(exec, path, x, heads, layers, text);

    const skips = new LongSkips(exec, this.declaration.longSkips!, sample.dims.join(','));
    const inPad = (c.convInKernel - 1) / 2;
    let x = await skips.down(sample, async (sample) =>
      (await exec.run('conv_in', (g, i) => ({ x: g.conv2d(i.sample, 'conv_in', c.blockOutChannels[0], c.convInKernel, { padding: inPad }) }), { sample })).x);
    // TimestepEmbedding: linear_1, SiLU, linear_2 (time_embedding and add_embedding alike).
    const mlp = (g: GraphBuilder, input: Value) => g.linear(g.silu(g.linear(input, 'linear_1', this.timeEmbedDim)), 'linear_2', this.timeEmbedDim);
    // LCM: the guidance embedding, through cond_proj, joins the timestep's before the MLP.
    const cond = added?.timestepCond;
    let temb = (await exec.run('time_embedding', (g, i) => {
      let proj = timestepEmbedding(g, i.timestep, c.blockOutChannels[0], c.flipSinToCos, c.freqShift);
      if (i.cond) proj = g.add(proj, g.scope('time_embedding', () => g.linear(i.cond, 'cond_proj', c.blockOutChannels[0], false)));
      return { temb: g.scope('time_embedding', () => mlp(g, proj)) };
    }, { timestep, ...(cond ? { cond } : {}) })).temb;
    const addition = c.addition;
    if (addition && added?.textEmbeds && added.timeIds) {
      // add_time_proj (no parameters) over the flattened ids, [text_embeds, time embeds] → add_embedding, summed into temb.
      temb = (await exec.run('add_embedding', (g, i) => {
        const [batch, count] = i.time_ids.shape;
        const flat = g.reshape(i.time_ids, [batch * count]);
        const proj = g.reshape(timestepEmbedding(g, flat, addition.timeEmbedDim, c.flipSinToCos, c.freqShift), [batch, count * addition.timeEmbedDim]);
        const aug = g.scope('add_embedding', () => mlp(g, g.concat([i.text_embeds, proj], -1)));
        return { temb: g.add(i.temb, aug) };
      }, { temb, text_embeds: added.textEmbeds, time_ids: added.timeIds })).temb;
    }

    // Every resnet(+attention) layer and downsampler of the down path makes a skip.
    for (let b = 0; b < n; b++) {
      const channels = c.blockOutChannels[b];
      for (let j = 0; j < c.layersPerBlock[b]; j++) {
        x = await skips.down(x, async (x) => {
          const name = `down_blocks.${b}.resnets.${j}`;
          x = (await exec.run(name, resnet(name, channels), { x, temb })).x;
          return c.downBlockTypes[b] === 'CrossAttnDownBlock2D' ? transformer(`down_blocks.${b}.attentions.${j}`, x, c.attentionHeads[b], c.transformerLayersPerBlock[b]) : x;
        });
      }
      if (b < n - 1) {
        const name = `down_blocks.${b}.downsamplers.0`;
        x = await skips.down(x, async (x) => (await exec.run(name, (g, i) => ({
          x: g.scope(name, () => g.conv2d(i.x, 'conv', channels, 3, { stride: 2, padding: c.downsamplePadding })),
        }), { x })).x);
      }
    }

    if (c.hasMidBlock) {
      const last = c.blockOutChannels[n - 1];
      x = await skips.middle(x, async (x) => {
        x = (await exec.run('mid_block.resnets.0', resnet('mid_block.resnets.0', last, c.midBlockScaleFactor), { x, temb })).x;
        x = await transformer('mid_block.attentions.0', x, c.attentionHeads[n - 1], c.transformerLayersPerBlock[n - 1]);
        return (await exec.run('mid_block.resnets.1', resnet('mid_block.resnets.1', last, c.midBlockScaleFactor), { x, temb })).x;
      });
    }

    // Each up resnet takes one skip, deepest first; a block's upsampler follows its last resnet.
    // diffusers forwards explicit upsample sizes when the latent is not a multiple of the total
    // downsampling; taking the next skip's size covers both cases.
    for (let u = 0; u < n; u++) {
      const b = n - 1 - u;
      const channels = c.blockOutChannels[b];
      for (let j = 0; j < c.layersPerBlock[b] + 1; j++) {
        x = await skips.up(x, async (x, skip) => {
          const name = `up_blocks.${u}.resnets.${j}`;
          x = (await exec.run(name, resnet(name, channels), { x, skip, temb })).x;
          if (c.upBlockTypes[u] === 'CrossAttnUpBlock2D') {
            x = await transformer(`up_blocks.${u}.attentions.${j}`, x, c.attentionHeads[b], c.transformerLayersPerBlock[b]);
          }
          if (j < c.layersPerBlock[b] || u === n - 1) return x;
          const upsampler = `up_blocks.${u}.upsamplers.0`;
          const [height, width] = skips.peek().dims.slice(2);
          return (await exec.run(upsampler, (g, i) => ({
            x: g.scope(upsampler, () => g.conv2d(g.resizeNearest(i.x, height, width), 'conv', channels, 3, { padding: 1 })),
          }), { x }, { depends: `${height}x${width}` })).x;
        });
      }
    }

    const outPad = (c.convOutKernel - 1) / 2;
    return (await exec.run('conv_out', (g, i) => {
      const h = g.silu(g.groupNorm(i.x, 'conv_norm_out', c.normNumGroups, c.normEps));
      return { sample: g.conv2d(h, 'conv_out', c.outChannels, c.convOutKernel, { padding: outPad }) };
    }, { x })).sample;
  }

  /** diffusers Transformer2DModel: proj_in, the BasicTransformerBlocks, proj_out plus the input. */
  private async transformer2d<T extends TensorLike>(exec: Executor<T>, path: string, x: T, heads: number, layers: number, text: TextInput<T>): Promise<T> {
    let tokens = (await exec.run(`${path}.proj_in`, (g, i) => ({ tokens: g.scope(path, () => this.projIn(g, i.x)) }), { x })).tokens;
    for (let k = 0; k < layers; k++) {
      const block = `${path}.transformer_blocks.${k}`;
      const kv = text.kv?.get(`${block}.attn2`);
      tokens = await basicTransformerBlock(exec, block, tokens, {
        norm: 'layer_norm', heads, qkvBias: false, normEps: 1e-5, normAffine: true, feedForward: 'geglu',
        cross: kv ? { kv } : { context: text.states }, latentSize: text.latentSize,
      });
    }
    return (await exec.run(`${path}.proj_out`, (g, i) => ({ x: g.scope(path, () => this.projOut(g, i.tokens, i.x)) }), { tokens, x })).x;
  }

  /** A forward pass on shapes alone: `batch` rows of a latentHeight × latentWidth latent, 77 text tokens. */
  forwardShapes(exec: Executor<ShapedTensor>, o: { batch: number; latentHeight: number; latentWidth: number; textEmbedsDim?: number }): Promise<ShapedTensor> {
    const c = this.config;
    const addedShapes = this.addedConditioningShapes(o.batch, o.textEmbedsDim);
    const cond = c.timeCondProjDim === null ? {} : { timestepCond: shaped([o.batch, c.timeCondProjDim]) };
    const added = addedShapes || c.timeCondProjDim !== null
      ? { ...(addedShapes ? { textEmbeds: shaped(addedShapes.textEmbeds), timeIds: shaped(addedShapes.timeIds) } : {}), ...cond } : undefined;
    return this.forward(exec, shaped([o.batch, c.inChannels, o.latentHeight, o.latentWidth]), shaped([o.batch]), shaped([o.batch, 77, c.crossAttentionDim[0]]), added);
  }

  /** Transformer2DModel input: GroupNorm, proj_in (1×1 conv or Linear), to tokens. */
  private projIn(g: GraphBuilder, x: Value): Value {
    const channels = x.shape[1];
    const h = g.groupNorm(x, 'norm', this.config.normNumGroups, 1e-6);
    if (this.config.useLinearProjection) return g.linear(toTokens(g, h), 'proj_in', channels);
    return toTokens(g, g.conv2d(h, 'proj_in', channels, 1));
  }

  /** Transformer2DModel output: proj_out back to NCHW plus the block's input. */
  private projOut(g: GraphBuilder, tokens: Value, residual: Value): Value {
    const [, channels, height, width] = residual.shape;
    const out = this.config.useLinearProjection
      ? fromTokens(g, g.linear(tokens, 'proj_out', channels), height, width)
      : g.conv2d(fromTokens(g, tokens, height, width), 'proj_out', channels, 1);
    return g.add(out, residual);
  }
}
