/**
 * diffusers UNet2DConditionModel (SD 1.x / 2.x), driven by its config.json. The forward pass is
 * written as calls to named segments whose names are diffusers module paths:
 * `down_blocks.1.resnets.0`, `down_blocks.1.attentions.0.transformer_blocks.0.attn2`, ...
 */
import { InputError } from '../errors.ts';
import type { GraphBuilder, Value } from '../graph/builder.ts';
import type { Executor, TensorLike } from '../runtime/executor.ts';
import {
  cfgBool, cfgInt, cfgIntOrIntList, cfgNumber, cfgOneOf, cfgOptionalInt, cfgPositiveInt, cfgPositiveIntList, cfgStringList, checkDivisible, type Config,
} from '../weights/config.ts';
import { attention, fromTokens, gegluFeedForward, resnetBlock2D, timestepEmbedding, toTokens } from './layers.ts';

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
  refuse('addition_embed_type', [null], 'null');
  refuse('time_embedding_type', ['positional'], '"positional"');
  refuse('resnet_time_scale_shift', ['default'], '"default"');
  refuse('only_cross_attention', [false], 'false');
  refuse('dual_cross_attention', [false], 'false');
  refuse('center_input_sample', [false], 'false');
  refuse('encoder_hid_dim', [null], 'null');
  refuse('time_cond_proj_dim', [null], 'null');
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
  };
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

  /** Total spatial downsampling of the down path. */
  get downsampleFactor(): number {
    return 2 ** (this.config.blockOutChannels.length - 1);
  }

  /**
   * One denoiser evaluation: sample [B, C, h, w], timestep [B] (float32), encoder hidden states
   * [B, 77, D] → noise (or v) prediction [B, C, h, w].
   */
  async forward<T extends TensorLike>(exec: Executor<T>, sample: T, timestep: T, encoderHiddenStates: T): Promise<T> {
    const c = this.config;
    const n = c.blockOutChannels.length;
    const resnet = (name: string, outChannels: number, eps: number, scale = 1) =>
      (g: GraphBuilder, i: Record<string, Value>) => {
        const x = i.skip ? g.concat([i.x, i.skip], 1) : i.x;
        return { x: g.scope(name, () => resnetBlock2D(g, x, i.temb, outChannels, { groups: c.normNumGroups, eps, tembChannels: this.timeEmbedDim, outputScaleFactor: scale })) };
      };
    const transformer = async (path: string, x: T, heads: number, layers: number): Promise<T> => {
      let tokens = (await exec.run(`${path}.proj_in`, (g, i) => ({ tokens: g.scope(path, () => this.projIn(g, i.x)) }), { x })).tokens;
      for (let k = 0; k < layers; k++) {
        const block = `${path}.transformer_blocks.${k}`;
        const attnBuild = (sub: 'attn1' | 'attn2', norm: string) => (g: GraphBuilder, i: Record<string, Value>) => ({
          tokens: g.scope(block, () => {
            const h = g.layerNorm(i.tokens, norm, 1e-5);
            const a = g.scope(sub, () => attention(g, h, i.context ?? null, { heads, innerDim: h.shape[2], qkvBias: false }));
            return g.add(a, i.tokens);
          }),
        });
        tokens = (await exec.run(`${block}.attn1`, attnBuild('attn1', 'norm1'), { tokens })).tokens;
        tokens = (await exec.run(`${block}.attn2`, attnBuild('attn2', 'norm2'), { tokens, context: encoderHiddenStates })).tokens;
        tokens = (await exec.run(`${block}.ff`, (g, i) => ({
          tokens: g.scope(block, () => {
            const h = g.layerNorm(i.tokens, 'norm3', 1e-5);
            return g.add(g.scope('ff', () => gegluFeedForward(g, h)), i.tokens);
          }),
        }), { tokens })).tokens;
      }
      return (await exec.run(`${path}.proj_out`, (g, i) => ({ x: g.scope(path, () => this.projOut(g, i.tokens, i.x)) }), { tokens, x })).x;
    };

    const inPad = (c.convInKernel - 1) / 2;
    let x = (await exec.run('conv_in', (g, i) => ({ x: g.conv2d(i.sample, 'conv_in', c.blockOutChannels[0], c.convInKernel, { padding: inPad }) }), { sample })).x;
    const temb = (await exec.run('time_embedding', (g, i) => {
      const proj = timestepEmbedding(g, i.timestep, c.blockOutChannels[0], c.flipSinToCos, c.freqShift);
      return { temb: g.scope('time_embedding', () => g.linear(g.silu(g.linear(proj, 'linear_1', this.timeEmbedDim)), 'linear_2', this.timeEmbedDim)) };
    }, { timestep })).temb;

    const skips: T[] = [x];
    for (let b = 0; b < n; b++) {
      const channels = c.blockOutChannels[b];
      for (let j = 0; j < c.layersPerBlock[b]; j++) {
        const name = `down_blocks.${b}.resnets.${j}`;
        x = (await exec.run(name, resnet(name, channels, c.normEps), { x, temb })).x;
        if (c.downBlockTypes[b] === 'CrossAttnDownBlock2D') {
          x = await transformer(`down_blocks.${b}.attentions.${j}`, x, c.attentionHeads[b], c.transformerLayersPerBlock[b]);
        }
        skips.push(x);
      }
      if (b < n - 1) {
        const name = `down_blocks.${b}.downsamplers.0`;
        x = (await exec.run(name, (g, i) => ({
          x: g.scope(name, () => g.conv2d(i.x, 'conv', channels, 3, { stride: 2, padding: c.downsamplePadding })),
        }), { x })).x;
        skips.push(x);
      }
    }

    if (c.hasMidBlock) {
      const last = c.blockOutChannels[n - 1];
      x = (await exec.run('mid_block.resnets.0', resnet('mid_block.resnets.0', last, c.normEps, c.midBlockScaleFactor), { x, temb })).x;
      x = await transformer('mid_block.attentions.0', x, c.attentionHeads[n - 1], c.transformerLayersPerBlock[n - 1]);
      x = (await exec.run('mid_block.resnets.1', resnet('mid_block.resnets.1', last, c.normEps, c.midBlockScaleFactor), { x, temb })).x;
    }

    // diffusers forwards explicit upsample sizes when the latent is not a multiple of the
    // total downsampling; taking the skip's size covers both cases.
    for (let u = 0; u < n; u++) {
      const b = n - 1 - u;
      const channels = c.blockOutChannels[b];
      const layers = c.layersPerBlock[b] + 1;
      const blockSkips = skips.splice(skips.length - layers, layers);
      for (let j = 0; j < layers; j++) {
        const name = `up_blocks.${u}.resnets.${j}`;
        const skip = blockSkips.pop()!;
        x = (await exec.run(name, resnet(name, channels, c.normEps), { x, skip, temb })).x;
        if (c.upBlockTypes[u] === 'CrossAttnUpBlock2D') {
          x = await transformer(`up_blocks.${u}.attentions.${j}`, x, c.attentionHeads[b], c.transformerLayersPerBlock[b]);
        }
      }
      if (u < n - 1) {
        const name = `up_blocks.${u}.upsamplers.0`;
        const [height, width] = skips[skips.length - 1].dims.slice(2);
        x = (await exec.run(name, (g, i) => ({
          x: g.scope(name, () => g.conv2d(g.resizeNearest(i.x, height, width), 'conv', channels, 3, { padding: 1 })),
        }), { x })).x;
      }
    }

    const outPad = (c.convOutKernel - 1) / 2;
    return (await exec.run('conv_out', (g, i) => {
      const h = g.silu(g.groupNorm(i.x, 'conv_norm_out', c.normNumGroups, c.normEps));
      return { sample: g.conv2d(h, 'conv_out', c.outChannels, c.convOutKernel, { padding: outPad }) };
    }, { x })).sample;
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
