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
  /** SDXL's second text encoder (a CLIPTextModelWithProjection), absent for SD 1.x / 2.x. */
  textEncoder2?: Config;
}

/** stabilityai/stable-diffusion-xl-base-1.0's config.json files (keys that are null there left out). */
const SDXL_UNET: Config = {
  act_fn: 'silu',
  addition_embed_type: 'text_time',
  addition_embed_type_num_heads: 64,
  addition_time_embed_dim: 256,
  attention_head_dim: [5, 10, 20],
  block_out_channels: [320, 640, 1280],
  center_input_sample: false,
  class_embeddings_concat: false,
  conv_in_kernel: 3,
  conv_out_kernel: 3,
  cross_attention_dim: 2048,
  down_block_types: ['DownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D'],
  downsample_padding: 1,
  dual_cross_attention: false,
  flip_sin_to_cos: true,
  freq_shift: 0,
  in_channels: 4,
  layers_per_block: 2,
  mid_block_scale_factor: 1,
  mid_block_type: 'UNetMidBlock2DCrossAttn',
  norm_eps: 1e-5,
  norm_num_groups: 32,
  only_cross_attention: false,
  out_channels: 4,
  projection_class_embeddings_input_dim: 2816,
  resnet_out_scale_factor: 1.0,
  resnet_skip_time_act: false,
  resnet_time_scale_shift: 'default',
  sample_size: 128,
  time_embedding_type: 'positional',
  transformer_layers_per_block: [1, 2, 10],
  up_block_types: ['CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'UpBlock2D'],
  use_linear_projection: true,
};

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
  sdxl: {
    description: 'Stable Diffusion XL base 1.0 (stabilityai/stable-diffusion-xl-base-1.0)',
    unet: SDXL_UNET,
    // The SDXL VAE has the SD architecture; only its scaling factor differs (force_upcast: fp16 overflows).
    vae: { ...SD_VAE, sample_size: 1024, scaling_factor: 0.13025, force_upcast: true },
    // CLIP ViT-L/14's text model (as SD 1.5), used without its final norm (hidden_states[-2]).
    textEncoder: {
      hidden_act: 'quick_gelu', hidden_size: 768, intermediate_size: 3072, max_position_embeddings: 77,
      num_attention_heads: 12, num_hidden_layers: 12, vocab_size: 49408, layer_norm_eps: 1e-5, eos_token_id: 2,
      projection_dim: 768,
    },
    // OpenCLIP ViT-bigG/14's text model with its projection (pooled text_embeds [B, 1280]).
    textEncoder2: {
      hidden_act: 'gelu', hidden_size: 1280, intermediate_size: 5120, max_position_embeddings: 77,
      num_attention_heads: 20, num_hidden_layers: 32, vocab_size: 49408, layer_norm_eps: 1e-5, eos_token_id: 2,
      projection_dim: 1280,
    },
  },
};
