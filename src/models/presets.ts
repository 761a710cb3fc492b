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

/** A diffusion-transformer checkpoint's configs: the transformer, its text encoder (T5 for PixArt, none for DiT), the VAE. */
export interface TransformerPreset {
  description: string;
  /** The diffusers pipeline class and the transformer's class, as the folder's model_index.json names them. */
  pipeline: 'PixArtAlphaPipeline' | 'PixArtSigmaPipeline' | 'DiTPipeline';
  transformerClass: string;
  transformer: Config;
  /** T5EncoderModel config.json (PixArt); undefined for DiT. */
  textEncoder?: Config;
  /** T5 tokens per prompt the pipeline pads to (PixArt-α 120, PixArt-Σ 300). */
  maxSequenceLength?: number;
  vae: Config;
  /** The scheduler_config.json its pipeline ships (whole-run counts need the calls' timesteps). */
  scheduler?: Config;
}

/** google/t5-v1_1-xxl's encoder, as PixArt folders ship it (4.76 B parameters). */
const T5_XXL: Config = {
  d_ff: 10240, d_kv: 64, d_model: 4096, feed_forward_proj: 'gated-gelu', layer_norm_epsilon: 1e-6, num_heads: 64, num_layers: 24,
  relative_attention_max_distance: 128, relative_attention_num_buckets: 32, vocab_size: 32128,
};

/** PixArt-alpha/PixArt-XL-2-*-MS transformer config.json (diffusers' older Transformer2DModel). */
const PIXART_TRANSFORMER: Config = {
  activation_fn: 'gelu-approximate', attention_bias: true, attention_head_dim: 72, caption_channels: 4096, cross_attention_dim: 1152,
  in_channels: 4, norm_elementwise_affine: false, norm_eps: 1e-6, norm_type: 'ada_norm_single', num_attention_heads: 16,
  num_embeds_ada_norm: 1000, num_layers: 28, out_channels: 8, patch_size: 2, sample_size: 128, upcast_attention: false,
};

/** facebook/DiT-XL-2-* transformer config.json. */
const DIT_XL_2: Config = {
  activation_fn: 'gelu-approximate', attention_bias: true, attention_head_dim: 72, in_channels: 4, norm_elementwise_affine: false,
  norm_type: 'ada_norm_zero', num_attention_heads: 16, num_embeds_ada_norm: 1000, num_layers: 28, out_channels: 8, patch_size: 2, sample_size: 32,
};

/** PixArt-α's and PixArt-Σ's scheduler_config.json (DPM-Solver++ 2M on DDPM's linear betas). */
const PIXART_SCHEDULER: Config = {
  _class_name: 'DPMSolverMultistepScheduler', algorithm_type: 'dpmsolver++', beta_start: 0.0001, beta_end: 0.02, beta_schedule: 'linear',
  num_train_timesteps: 1000, solver_order: 2, solver_type: 'midpoint', lower_order_final: true, prediction_type: 'epsilon', steps_offset: 0,
  thresholding: false, use_karras_sigmas: false, trained_betas: null,
};

/** DiT's scheduler as diffusers' conversion writes it (facebook/DiT-XL-2-256), which `diffuse convert` writes too. */
export const DIT_SCHEDULER: Config = {
  _class_name: 'DDIMScheduler', beta_start: 0.0001, beta_end: 0.02, beta_schedule: 'linear', num_train_timesteps: 1000,
  clip_sample: false, set_alpha_to_one: true, steps_offset: 0, prediction_type: 'epsilon',
};

/** Skip-DiT's DiT-XL/2 with long skips ("DiT-skip" in its DiT_models), in the authors' layout. */
const SKIP_DIT_XL_2: Config = {
  _class_name: 'DiT_skip', input_size: 32, patch_size: 2, in_channels: 4, hidden_size: 1152, depth: 28, num_heads: 16, mlp_ratio: 4, num_classes: 1000, learn_sigma: true,
};

export const TRANSFORMER_PRESETS: Record<string, TransformerPreset> = {
  'pixart-alpha-1024': {
    description: 'PixArt-α 1024 (PixArt-alpha/PixArt-XL-2-1024-MS)', pipeline: 'PixArtAlphaPipeline', transformerClass: 'Transformer2DModel',
    transformer: PIXART_TRANSFORMER, textEncoder: T5_XXL, maxSequenceLength: 120, vae: { ...SD_VAE, sample_size: 1024 }, scheduler: PIXART_SCHEDULER,
  },
  'pixart-alpha-512': {
    description: 'PixArt-α 512 (PixArt-alpha/PixArt-XL-2-512x512)', pipeline: 'PixArtAlphaPipeline', transformerClass: 'Transformer2DModel',
    transformer: { ...PIXART_TRANSFORMER, sample_size: 64 }, textEncoder: T5_XXL, maxSequenceLength: 120, vae: { ...SD_VAE, sample_size: 512 }, scheduler: PIXART_SCHEDULER,
  },
  'pixart-sigma-1024': {
    description: 'PixArt-Σ 1024 (PixArt-alpha/PixArt-Sigma-XL-2-1024-MS)', pipeline: 'PixArtSigmaPipeline', transformerClass: 'PixArtTransformer2DModel',
    transformer: { ...PIXART_TRANSFORMER, interpolation_scale: 2, use_additional_conditions: false }, textEncoder: T5_XXL, maxSequenceLength: 300,
    vae: { ...SD_VAE, sample_size: 1024, scaling_factor: 0.13025 }, scheduler: PIXART_SCHEDULER,
  },
  'dit-xl-2-256': {
    description: 'DiT-XL/2 256 (facebook/DiT-XL-2-256)', pipeline: 'DiTPipeline', transformerClass: 'Transformer2DModel',
    transformer: DIT_XL_2, vae: { ...SD_VAE, sample_size: 256 }, scheduler: DIT_SCHEDULER,
  },
  'skip-dit-xl-2-256': {
    description: 'Skip-DiT-XL/2 256 (OpenSparseLLMs/Skip-DiT, class-to-image)', pipeline: 'DiTPipeline', transformerClass: 'DiT_skip',
    transformer: SKIP_DIT_XL_2, vae: { ...SD_VAE, sample_size: 256 }, scheduler: DIT_SCHEDULER,
  },
  'dit-xl-2-512': {
    description: 'DiT-XL/2 512 (facebook/DiT-XL-2-512)', pipeline: 'DiTPipeline', transformerClass: 'Transformer2DModel',
    transformer: { ...DIT_XL_2, sample_size: 64 }, vae: { ...SD_VAE, sample_size: 512 }, scheduler: DIT_SCHEDULER,
  },
};

/** Every preset name, U-Net and transformer, for messages. */
export const PRESET_NAMES: readonly string[] = [...Object.keys(PRESETS), ...Object.keys(TRANSFORMER_PRESETS)];
