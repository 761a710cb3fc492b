/**
 * Built-in configs of well-known checkpoints, as their diffusers config.json files say, so that
 * `inspect --preset` and MAC counts work without any weights.
 */
import type { Config } from '../weights/config.ts';

const SD_UNET_COMMON: Config = {
  act_fn: 'silu',
  block_out_channels: [320, 640, 1280, 1280],
  center_input_sample: false,
  down_block_types: ['CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'DownBlock2D'],
  downsample_padding: 1,
  flip_sin_to_cos: true,
  freq_shift: 0,
  in_channels: 4,
  layers_per_block: 2,
  mid_block_scale_factor: 1,
  norm_eps: 1e-5,
  norm_num_groups: 32,
  out_channels: 4,
  up_block_types: ['UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D'],
};

const SD_VAE: Config = {
  act_fn: 'silu',
  block_out_channels: [128, 256, 512, 512],
  down_block_types: ['DownEncoderBlock2D', 'DownEncoderBlock2D', 'DownEncoderBlock2D', 'DownEncoderBlock2D'],
  in_channels: 3,
  latent_channels: 4,
  layers_per_block: 2,
  norm_num_groups: 32,
  out_channels: 3,
  scaling_factor: 0.18215,
  up_block_types: ['UpDecoderBlock2D', 'UpDecoderBlock2D', 'UpDecoderBlock2D', 'UpDecoderBlock2D'],
};

export interface Preset {
  description: string;
  unet: Config;
  vae: Config;
  textEncoder: Config;
}

export const PRESETS: Record<string, Preset> = {
  sd15: {
    description: 'Stable Diffusion 1.5 (runwayml/stable-diffusion-v1-5)',
    unet: { ...SD_UNET_COMMON, attention_head_dim: 8, cross_attention_dim: 768, sample_size: 64 },
    vae: { ...SD_VAE, sample_size: 512 },
    textEncoder: {
      hidden_act: 'quick_gelu', hidden_size: 768, intermediate_size: 3072, max_position_embeddings: 77,
      num_attention_heads: 12, num_hidden_layers: 12, vocab_size: 49408, layer_norm_eps: 1e-5, eos_token_id: 2,
    },
  },
  sd21: {
    description: 'Stable Diffusion 2.1 (stabilityai/stable-diffusion-2-1, 768² v-prediction)',
    unet: {
      ...SD_UNET_COMMON, attention_head_dim: [5, 10, 20, 20], cross_attention_dim: 1024, sample_size: 96,
      use_linear_projection: true, upcast_attention: true,
    },
    vae: { ...SD_VAE, sample_size: 768 },
    textEncoder: {
      hidden_act: 'gelu', hidden_size: 1024, intermediate_size: 4096, max_position_embeddings: 77,
      num_attention_heads: 16, num_hidden_layers: 23, vocab_size: 49408, layer_norm_eps: 1e-5, eos_token_id: 2,
    },
  },
};
