/**
 * Writes a diffusers pipeline folder with seeded random weights for a built-in preset, so that
 * benchmarks run the real architecture at real size without downloading a checkpoint.
 * Weights are stored as F16 (half the disk) and computed in float32 after loading.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ParamSource } from '../graph/builder.ts';
import { AutoencoderKL, parseAutoencoderKLConfig } from '../models/autoencoder-kl.ts';
import { ClipTextModel, parseClipTextConfig } from '../models/clip-text.ts';
import { transformerFromConfig } from '../models/components.ts';
import { OfficialDiT } from '../models/official-dit.ts';
import { PRESET_NAMES, PRESETS, TRANSFORMER_PRESETS } from '../models/presets.ts';
import { InputError } from '../errors.ts';
import { T5EncoderModel, parseT5EncoderConfig } from '../models/t5-encoder.ts';
import { UNet2DConditionModel, parseUNetConfig } from '../models/unet2d-condition.ts';
import { DryExecutor } from '../runtime/dry-executor.ts';
import { shaped } from '../runtime/executor.ts';
import { Rng } from '../util/rng.ts';
import { float32ToFloat16 } from '../graph/half.ts';
import { writeSafetensors, writeShardedSafetensors, type TensorToWrite } from '../weights/safetensors-write.ts';
import { own } from '../util/own.ts';
import { makeFolder } from '../util/files.ts';

/** Records every parameter a forward pass asks for. */
function recordingParams(): { source: ParamSource; shapes: Map<string, number[]> } {
  const shapes = new Map<string, number[]>();
  return { shapes, source: { param: (name, shape) => (shapes.set(name, shape), { name, shape, dtype: 'F32' }) } };
}

/** PyTorch-like init scale: U(-1/√fan_in, 1/√fan_in) for weights, norms at 1, biases small. */
function randomValues(name: string, shape: number[], rng: Rng): Float32Array {
  const size = shape.reduce((a, b) => a * b, 1);
  const values = new Float32Array(size);
  const isNorm = /norm/.test(name) && name.endsWith('.weight');
  if (isNorm) values.fill(1);
  else {
    const fanIn = shape.length > 1 ? size / shape[0] : shape[0];
    const bound = (name.endsWith('.bias') ? 0.1 : 1) / Math.sqrt(fanIn);
    for (let i = 0; i < size; i++) values[i] = (rng.uniform() * 2 - 1) * bound;
  }
  return values;
}

function randomTensor(name: string, shape: number[], rng: Rng): TensorToWrite {
  return { dtype: 'F16', shape, data: float32ToFloat16(randomValues(name, shape, rng)) };
}

export type ComponentName = 'unet' | 'vae' | 'text_encoder' | 'tokenizer' | 'scheduler';

const CLASS: Record<'unet' | 'vae' | 'text_encoder', [string, string, string]> = {
  unet: ['diffusers', 'UNet2DConditionModel', 'diffusion_pytorch_model.safetensors'],
  vae: ['diffusers', 'AutoencoderKL', 'diffusion_pytorch_model.safetensors'],
  text_encoder: ['transformers', 'CLIPTextModel', 'model.safetensors'],
};

/** The real CLIP BPE vocabulary with SD 1.5's tokenizer settings (see tools/reference/README.md). */
const CLIP_TOKENIZER = path.resolve(import.meta.dirname, '../../assets/clip-tokenizer');
/** The real T5 SentencePiece vocabulary as PixArt's folders ship it (spiece.model, see tools/reference/README.md). */
const T5_TOKENIZER = path.resolve(import.meta.dirname, '../../assets/t5-tokenizer');

/** Refuses before minutes of writing that a full disk would stop halfway. */
function refuseWithoutDiskSpace(dir: string, bytes: number): void {
  const { bavail, bsize } = fs.statfsSync(dir);
  const free = bavail * bsize;
  if (free < bytes * 1.05) {
    throw new InputError('--cache', `no room for the random weights in ${dir}`, `${(bytes / 1e9).toFixed(1)} GB free`, `${(free / 1e9).toFixed(1)} GB`);
  }
}

/**
 * Adds components to `dir`/model_index.json, keeping the ones already there: the benchmarks fill
 * one cache folder piece by piece (a transformer alone first, a whole pipeline later).
 */
function addToModelIndex(dir: string, className: string, components: Record<string, [string, string]>): void {
  const file = path.join(dir, 'model_index.json');
  const old = fs.existsSync(file) ? JSON.parse(fs.readFileSync(file, 'utf8')) : {};
  fs.writeFileSync(file, JSON.stringify({ ...old, _class_name: className, _diffusers_version: '0.40.0', ...components }, null, 2));
}

/** SD 1.5's published scheduler_config.json. */
const SD15_SCHEDULER = {
  _class_name: 'PNDMScheduler', beta_end: 0.012, beta_schedule: 'scaled_linear', beta_start: 0.00085, num_train_timesteps: 1000,
  prediction_type: 'epsilon', set_alpha_to_one: false, skip_prk_steps: true, steps_offset: 1, trained_betas: null, clip_sample: false,
};

/**
 * Creates (once) `dir` holding the chosen components of `preset` with seeded random weights; with
 * `tokenizer` and `scheduler` it is a complete StableDiffusionPipeline folder.
 */
export async function ensureRandomPipelineFolder(dir: string, presetName: string, components: ComponentName[], seed = 0): Promise<string> {
  const preset = own(PRESETS, presetName);
  if (!preset) throw new Error(`unknown preset ${presetName}`);
  // The cache folder must take files before minutes of weight generation, not after.
  makeFolder(dir);
  const index: Record<string, [string, string]> = {};
  for (const component of components) {
    if (component === 'tokenizer') {
      index.tokenizer = ['transformers', 'CLIPTokenizer'];
      fs.cpSync(CLIP_TOKENIZER, path.join(dir, 'tokenizer'), { recursive: true });
      continue;
    }
    if (component === 'scheduler') {
      index.scheduler = ['diffusers', SD15_SCHEDULER._class_name];
      makeFolder(path.join(dir, 'scheduler'));
      fs.writeFileSync(path.join(dir, 'scheduler', 'scheduler_config.json'), JSON.stringify(SD15_SCHEDULER, null, 2));
      continue;
    }
    const [library, className, file] = CLASS[component];
    index[component] = [library, className];
    const componentDir = path.join(dir, component);
    const weightsFile = path.join(componentDir, file);
    if (fs.existsSync(weightsFile)) continue;
    const config = component === 'unet' ? preset.unet : component === 'vae' ? preset.vae : preset.textEncoder;
    if (component === 'vae') {
      await writeRandomVae(componentDir, config, presetName, seed);
      continue;
    }
    const { source, shapes } = recordingParams();
    const exec = new DryExecutor(source);
    if (component === 'unet') {
      const unet = new UNet2DConditionModel(parseUNetConfig(config, presetName));
      const te2 = preset.textEncoder2 && parseClipTextConfig(preset.textEncoder2, presetName);
      const addedShapes = unet.addedConditioningShapes(1, te2 ? te2.projectionDim : undefined);
      const added = addedShapes ? { textEmbeds: shaped(addedShapes.textEmbeds), timeIds: shaped(addedShapes.timeIds) } : undefined;
      await unet.forward(exec, shaped([1, 4, 64, 64]), shaped([1]), shaped([1, 77, unet.config.crossAttentionDim[0]]), added);
    } else {
      await new ClipTextModel(parseClipTextConfig(config, presetName)).forward(exec, shaped([1, 77], 'int64'));
    }
    const rng = new Rng(seed);
    const tensors: Record<string, TensorToWrite> = {};
    for (const [name, shape] of shapes) tensors[name] = randomTensor(name, shape, rng);
    makeFolder(componentDir);
    const configJson = { _class_name: className, ...config };
    fs.writeFileSync(path.join(componentDir, 'config.json'), JSON.stringify(configJson, null, 2));
    writeSafetensors(weightsFile, tensors);
  }
  addToModelIndex(dir, 'StableDiffusionPipeline', index);
  return dir;
}

/** A VAE folder (config.json and weights) with seeded random weights, F16. */
async function writeRandomVae(componentDir: string, config: Record<string, unknown>, presetName: string, seed: number): Promise<void> {
  const { source, shapes } = recordingParams();
  const exec = new DryExecutor(source);
  const vae = new AutoencoderKL(parseAutoencoderKLConfig(config, presetName));
  await vae.encode(exec, shaped([1, 3, 64, 64]));
  await vae.decode(exec, shaped([1, 4, 8, 8]));
  const rng = new Rng(seed);
  const tensors: Record<string, TensorToWrite> = {};
  for (const [name, shape] of shapes) tensors[name] = randomTensor(name, shape, rng);
  makeFolder(componentDir);
  fs.writeFileSync(path.join(componentDir, 'config.json'), JSON.stringify({ _class_name: 'AutoencoderKL', ...config }, null, 2));
  writeSafetensors(path.join(componentDir, 'diffusion_pytorch_model.safetensors'), tensors);
}

/**
 * Creates (once) `dir` holding a DiT preset (diffusers' DiT or the authors' Skip-DiT) as a whole
 * DiTPipeline folder with seeded random weights: transformer, VAE, DiT's DDIM scheduler.
 */
export async function ensureRandomDiTFolder(dir: string, presetName: string, seed = 0): Promise<string> {
  const preset = own(TRANSFORMER_PRESETS, presetName);
  if (!preset || preset.pipeline !== 'DiTPipeline') throw new Error(`${presetName} is not a DiT preset`);
  await ensureRandomTransformerFolder(dir, presetName, seed);
  const vaeDir = path.join(dir, 'vae');
  if (!fs.existsSync(path.join(vaeDir, 'diffusion_pytorch_model.safetensors'))) await writeRandomVae(vaeDir, preset.vae, presetName, seed + 1);
  makeFolder(path.join(dir, 'scheduler'));
  fs.writeFileSync(path.join(dir, 'scheduler', 'scheduler_config.json'), JSON.stringify(preset.scheduler, null, 2));
  addToModelIndex(dir, 'DiTPipeline', {
    transformer: [preset.transformerClass.startsWith('DiT') ? 'diffusion.ts' : 'diffusers', preset.transformerClass],
    vae: ['diffusers', 'AutoencoderKL'], scheduler: ['diffusers', 'DDIMScheduler'],
  });
  return dir;
}

/**
 * Creates (once) `dir` holding a transformer preset's transformer with seeded random weights (F16),
 * as a diffusers folder with that component only: enough to time its forward pass.
 */
export async function ensureRandomTransformerFolder(dir: string, presetName: string, seed = 0): Promise<string> {
  const preset = own(TRANSFORMER_PRESETS, presetName);
  if (!preset) throw new Error(`unknown transformer preset ${presetName}`);
  // The cache folder must take files before minutes of weight generation, not after.
  makeFolder(dir);
  const componentDir = path.join(dir, 'transformer');
  const weightsFile = path.join(componentDir, 'diffusion_pytorch_model.safetensors');
  if (!fs.existsSync(weightsFile)) {
    const { source, shapes } = recordingParams();
    const model = transformerFromConfig(preset.transformerClass, preset.transformer, presetName);
    // The authors' DiT layout runs at its configured size only.
    const latent = model instanceof OfficialDiT ? model.config.sampleSize : 16;
    await model.forwardShapes(new DryExecutor(source), { batch: 1, latentHeight: latent, latentWidth: latent, tokens: 8 });
    const rng = new Rng(seed);
    const tensors: Record<string, TensorToWrite> = {};
    for (const [name, shape] of shapes) tensors[name] = randomTensor(name, shape, rng);
    makeFolder(componentDir);
    fs.writeFileSync(path.join(componentDir, 'config.json'), JSON.stringify({ _class_name: preset.transformerClass, ...preset.transformer }, null, 2));
    writeSafetensors(weightsFile, tensors);
  }
  addToModelIndex(dir, preset.pipeline, { transformer: ['diffusers', preset.transformerClass] });
  return dir;
}

/**
 * Creates (once) `dir` holding a PixArt preset's T5 text encoder with seeded random weights, as the
 * Hub ships it: float32 (or F16) in shards of at most 5 GB with a model.safetensors.index.json. Each
 * tensor is made when it is written, so a 19 GB T5-XXL never sits in memory.
 */
export async function ensureRandomTextEncoderFolder(dir: string, presetName: string, dtype: 'F32' | 'F16', seed = 0): Promise<string> {
  const preset = own(TRANSFORMER_PRESETS, presetName);
  const config = preset?.textEncoder;
  if (!preset || !config) throw new Error(`preset ${presetName} has no T5 text encoder`);
  // The cache folder must take files before minutes of weight generation, not after.
  makeFolder(dir);
  const componentDir = path.join(dir, 'text_encoder');
  const index = path.join(componentDir, 'model.safetensors.index.json');
  if (!fs.existsSync(index)) {
    const { source, shapes } = recordingParams();
    await new T5EncoderModel(parseT5EncoderConfig(config, presetName)).forward(new DryExecutor(source), shaped([1, 8], 'int64'), shaped([1, 8], 'int64'));
    const bytes = [...shapes.values()].reduce((sum, shape) => sum + shape.reduce((a, b) => a * b, 1) * (dtype === 'F32' ? 4 : 2), 0);
    refuseWithoutDiskSpace(dir, bytes);
    const tensors: Record<string, TensorToWrite> = {};
    [...shapes].forEach(([name, shape], i) => {
      const values = () => randomValues(name, shape, new Rng(seed * 100_003 + i));
      tensors[name] = { dtype, shape, data: dtype === 'F32' ? values : () => float32ToFloat16(values()) };
    });
    makeFolder(componentDir);
    fs.writeFileSync(path.join(componentDir, 'config.json'), JSON.stringify({ _class_name: 'T5EncoderModel', architectures: ['T5EncoderModel'], ...config }, null, 2));
    writeShardedSafetensors(componentDir, 'model', tensors, 5e9);
  }
  addToModelIndex(dir, preset.pipeline, { text_encoder: ['transformers', 'T5EncoderModel'] });
  return dir;
}

/**
 * Creates (once) `dir` holding a PixArt preset as a whole pipeline folder with seeded random
 * weights: transformer and VAE, the T5-XXL text encoder (F16, 9.5 GB), the real T5 vocabulary and
 * PixArt's DPM-Solver scheduler.
 */
export async function ensureRandomPixArtFolder(dir: string, presetName: string, seed = 0): Promise<string> {
  const preset = own(TRANSFORMER_PRESETS, presetName);
  if (!preset || preset.pipeline === 'DiTPipeline' || !preset.scheduler) throw new Error(`${presetName} is not a PixArt preset`);
  await ensureRandomTransformerFolder(dir, presetName, seed);
  await ensureRandomTextEncoderFolder(dir, presetName, 'F16', seed);
  const vaeDir = path.join(dir, 'vae');
  if (!fs.existsSync(path.join(vaeDir, 'diffusion_pytorch_model.safetensors'))) await writeRandomVae(vaeDir, preset.vae, presetName, seed + 1);
  fs.cpSync(T5_TOKENIZER, path.join(dir, 'tokenizer'), { recursive: true });
  makeFolder(path.join(dir, 'scheduler'));
  fs.writeFileSync(path.join(dir, 'scheduler', 'scheduler_config.json'), JSON.stringify(preset.scheduler, null, 2));
  addToModelIndex(dir, preset.pipeline, {
    tokenizer: ['transformers', 'T5Tokenizer'], vae: ['diffusers', 'AutoencoderKL'], scheduler: ['diffusers', String(preset.scheduler._class_name)],
  });
  return dir;
}

/** Refuses a preset that has no random-weight pipeline (unknown names, SDXL), before any work. */
export function checkRandomPreset(presetName: string): void {
  if (own(PRESETS, presetName)?.textEncoder2) {
    throw new InputError('--preset', 'SDXL presets have no random-weight pipeline yet (two text encoders)', 'sd15 or sd21, a PixArt or DiT preset, or --dry-run', presetName);
  }
  if (!own(PRESETS, presetName) && !own(TRANSFORMER_PRESETS, presetName)) throw new InputError('--preset', 'unknown preset', PRESET_NAMES.join(', '), presetName);
}

/**
 * Any preset as a whole pipeline folder with seeded random weights in `cache`/`presetName`, made
 * once: what `bench --preset` runs (a timing at the real architecture's size, not an image).
 */
export async function ensureRandomPresetFolder(cache: string, presetName: string): Promise<string> {
  checkRandomPreset(presetName);
  const dir = path.join(cache, presetName);
  if (own(PRESETS, presetName)) return ensureRandomPipelineFolder(dir, presetName, ['unet', 'vae', 'text_encoder', 'tokenizer', 'scheduler']);
  return own(TRANSFORMER_PRESETS, presetName)!.pipeline === 'DiTPipeline' ? ensureRandomDiTFolder(dir, presetName) : ensureRandomPixArtFolder(dir, presetName);
}
