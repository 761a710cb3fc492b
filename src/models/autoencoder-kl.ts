/**
 * diffusers AutoencoderKL (the SD VAE). Two segments: `encoder` (encoder + quant_conv → the
 * latent distribution's mean and std) and `decoder` (post_quant_conv + decoder → image).
 * Scaling by `scaling_factor` is the pipeline's job, as in diffusers.
 */
import { InputError } from '../errors.ts';
import type { GraphBuilder, Value } from '../graph/builder.ts';
import type { Executor, TensorLike } from '../runtime/executor.ts';
import { cfgBool, cfgNumber, cfgOneOf, cfgOptionalNumber, cfgPositiveInt, cfgPositiveIntList, cfgStringList, checkDivisible, type Config } from '../weights/config.ts';
import { attention, fromTokens, resnetBlock2D, toTokens } from './layers.ts';

export interface AutoencoderKLConfig {
  inChannels: number;
  outChannels: number;
  latentChannels: number;
  blockOutChannels: number[];
  layersPerBlock: number;
  normNumGroups: number;
  scalingFactor: number;
  shiftFactor: number | null;
  useQuantConv: boolean;
  usePostQuantConv: boolean;
  midBlockAddAttention: boolean;
}

const RESNET_EPS = 1e-6;

export function parseAutoencoderKLConfig(cfg: Config, where: string): AutoencoderKLConfig {
  const blockOutChannels = cfgPositiveIntList(cfg, 'block_out_channels', where, [64]);
  const checkTypes = (key: string, allowed: string): void => {
    const types = cfgStringList(cfg, key, where, new Array<string>(blockOutChannels.length).fill(allowed));
    if (types.length !== blockOutChannels.length) {
      throw new InputError(`${where}: ${key}`, 'wrong number of blocks', `${blockOutChannels.length}`, `${types.length}`);
    }
    for (const t of types) if (t !== allowed) throw new InputError(`${where}: ${key}`, 'unsupported block type', allowed, t);
  };
  checkTypes('down_block_types', 'DownEncoderBlock2D');
  checkTypes('up_block_types', 'UpDecoderBlock2D');
  cfgOneOf(cfg, 'act_fn', where, ['silu'], 'silu');
  const normNumGroups = cfgPositiveInt(cfg, 'norm_num_groups', where, 32);
  checkDivisible(where, 'norm_num_groups', normNumGroups, blockOutChannels, 'block_out_channels');
  return {
    inChannels: cfgPositiveInt(cfg, 'in_channels', where, 3),
    outChannels: cfgPositiveInt(cfg, 'out_channels', where, 3),
    latentChannels: cfgPositiveInt(cfg, 'latent_channels', where, 4),
    blockOutChannels,
    layersPerBlock: cfgPositiveInt(cfg, 'layers_per_block', where, 1),
    normNumGroups,
    scalingFactor: cfgNumber(cfg, 'scaling_factor', where, 0.18215),
    shiftFactor: cfgOptionalNumber(cfg, 'shift_factor', where) ?? null,
    useQuantConv: cfgBool(cfg, 'use_quant_conv', where, true),
    usePostQuantConv: cfgBool(cfg, 'use_post_quant_conv', where, true),
    midBlockAddAttention: cfgBool(cfg, 'mid_block_add_attention', where, true),
  };
}

export class AutoencoderKL {
  constructor(readonly config: AutoencoderKLConfig) {}

  /** Pixel-to-latent size ratio. */
  get downsampleFactor(): number {
    return 2 ** (this.config.blockOutChannels.length - 1);
  }

  /** image [B, 3, H, W] in [-1, 1] → latent distribution mean and std [B, C, H/f, W/f]. */
  async encode<T extends TensorLike>(exec: Executor<T>, image: T): Promise<{ mean: T; std: T }> {
    const out = await exec.run('encoder', (g, i) => this.buildEncoder(g, i.image), { image });
    return { mean: out.mean, std: out.std };
  }

  /** latents [B, C, h, w] (already divided by scaling_factor) → image [B, 3, h·f, w·f] in about [-1, 1]. */
  async decode<T extends TensorLike>(exec: Executor<T>, latents: T): Promise<T> {
    return (await exec.run('decoder', (g, i) => ({ sample: this.buildDecoder(g, i.latents) }), { latents })).sample;
  }

  private resnet(g: GraphBuilder, x: Value, outChannels: number): Value {
    return resnetBlock2D(g, x, null, outChannels, { groups: this.config.normNumGroups, eps: RESNET_EPS, tembChannels: null });
  }

  private midBlock(g: GraphBuilder, x: Value): Value {
    const channels = x.shape[1];
    return g.scope('mid_block', () => {
      let h = g.scope('resnets.0', () => this.resnet(g, x, channels));
      if (this.config.midBlockAddAttention) {
        h = g.scope('attentions.0', () => {
          const [, , height, width] = h.shape;
          const normed = toTokens(g, g.groupNorm(h, 'group_norm', this.config.normNumGroups, RESNET_EPS));
          const a = attention(g, normed, null, { heads: 1, innerDim: channels, qkvBias: true });
          return g.add(fromTokens(g, a, height, width), h);
        });
      }
      return g.scope('resnets.1', () => this.resnet(g, h, channels));
    });
  }

  private buildEncoder(g: GraphBuilder, image: Value): Record<string, Value> {
    const c = this.config;
    let x = g.scope('encoder', () => {
      let h = g.conv2d(image, 'conv_in', c.blockOutChannels[0], 3, { padding: 1 });
      c.blockOutChannels.forEach((channels, b) => {
        for (let j = 0; j < c.layersPerBlock; j++) h = g.scope(`down_blocks.${b}.resnets.${j}`, () => this.resnet(g, h, channels));
        if (b < c.blockOutChannels.length - 1) {
          // diffusers pads right and bottom by one, then a stride-2 convolution without padding.
          h = g.scope(`down_blocks.${b}.downsamplers.0`, () => g.conv2d(g.pad2d(h, 0, 1, 0, 1), 'conv', channels, 3, { stride: 2 }));
        }
      });
      h = this.midBlock(g, h);
      h = g.silu(g.groupNorm(h, 'conv_norm_out', c.normNumGroups, RESNET_EPS));
      return g.conv2d(h, 'conv_out', 2 * c.latentChannels, 3, { padding: 1 });
    });
    if (c.useQuantConv) x = g.conv2d(x, 'quant_conv', 2 * c.latentChannels, 1);
    const [mean, logvar] = g.split(x, 1, [c.latentChannels, c.latentChannels]);
    const clamped = g.clip(logvar, -30, 20);
    return { mean, std: g.exp(g.mul(clamped, g.scalar(0.5))) };
  }

  private buildDecoder(g: GraphBuilder, latents: Value): Value {
    const c = this.config;
    const z = c.usePostQuantConv ? g.conv2d(latents, 'post_quant_conv', c.latentChannels, 1) : latents;
    return g.scope('decoder', () => {
      const reversed = [...c.blockOutChannels].reverse();
      let h = g.conv2d(z, 'conv_in', reversed[0], 3, { padding: 1 });
      h = this.midBlock(g, h);
      reversed.forEach((channels, u) => {
        for (let j = 0; j <= c.layersPerBlock; j++) h = g.scope(`up_blocks.${u}.resnets.${j}`, () => this.resnet(g, h, channels));
        if (u < reversed.length - 1) {
          const [, , height, width] = h.shape;
          h = g.scope(`up_blocks.${u}.upsamplers.0`, () => g.conv2d(g.resizeNearest(h, height * 2, width * 2), 'conv', channels, 3, { padding: 1 }));
        }
      });
      h = g.silu(g.groupNorm(h, 'conv_norm_out', c.normNumGroups, RESNET_EPS));
      return g.conv2d(h, 'conv_out', c.outChannels, 3, { padding: 1 });
    });
  }
}
