/**
 * Opens one component of a diffusers pipeline folder as a model: checks its class is one we
 * implement, parses its config, and binds its safetensors weights.
 */
import { InputError } from '../errors.ts';
import { joinPath } from '../io/files.ts';
import type { ParamSource } from '../graph/builder.ts';
import { getComponent, openComponentWeights, readComponentConfig, type PipelineFolder, type WeightSet } from '../weights/diffusers-folder.ts';
import { weightParams } from '../weights/params.ts';
import { AutoencoderKL, parseAutoencoderKLConfig } from './autoencoder-kl.ts';
import { ClipTextModel, ClipTextModelWithProjection, parseClipTextConfig } from './clip-text.ts';
import { DiTTransformer2DModel, parseDiTConfig } from './dit-transformer-2d.ts';
import { OFFICIAL_DIT_CLASSES, OfficialDiT, parseOfficialDiTConfig } from './official-dit.ts';
import { PixArtTransformer2DModel, parsePixArtConfig } from './pixart-transformer-2d.ts';
import { T5EncoderModel, parseT5EncoderConfig } from './t5-encoder.ts';
import { UNet2DConditionModel, parseUNetConfig } from './unet2d-condition.ts';

export interface LoadedComponent<M> {
  model: M;
  params: ParamSource;
  weights: WeightSet;
  configFile: string;
}

export interface LoadOptions {
  /** Weight file variant, e.g. "fp16" for `*.fp16.safetensors`. */
  variant?: string;
}

function open<M>(
  folder: PipelineFolder,
  component: string,
  classes: string[],
  make: (config: Record<string, unknown>, where: string) => M,
  options: LoadOptions,
  prefixes?: string[],
): LoadedComponent<M> {
  const entry = getComponent(folder, component);
  if (!classes.includes(entry.className)) {
    throw new InputError(`${joinPath(folder.dir, 'model_index.json')}: ${component}`, 'unsupported component class',
      classes.join(' or '), entry.className);
  }
  const { config, where } = readComponentConfig(folder, component);
  const model = make(config, where);
  const weights = openComponentWeights(entry.dir, { variant: options.variant });
  try {
    return { model, weights, configFile: where, params: weightParams(weights, { configFile: where, prefixes }) };
  } catch (err) {
    weights.close();
    throw err;
  }
}

/**
 * Runs a pipeline loader that opens components through `track`: if it throws, every component
 * opened so far is closed again (a failed load leaves no file open).
 */
export function closingOnFailure<T>(load: (track: <C extends { weights: WeightSet }>(component: C) => C) => T): T {
  const opened: WeightSet[] = [];
  try {
    return load((component) => {
      opened.push(component.weights);
      return component;
    });
  } catch (err) {
    for (const weights of opened) weights.close();
    throw err;
  }
}

export function loadUNet(folder: PipelineFolder, options: LoadOptions = {}): LoadedComponent<UNet2DConditionModel> {
  return open(folder, 'unet', ['UNet2DConditionModel'], (c, w) => new UNet2DConditionModel(parseUNetConfig(c, w)), options);
}

export function loadVae(folder: PipelineFolder, options: LoadOptions = {}): LoadedComponent<AutoencoderKL> {
  return open(folder, 'vae', ['AutoencoderKL'], (c, w) => new AutoencoderKL(parseAutoencoderKLConfig(c, w)), options);
}

/**
 * A CLIP text encoder: `text_encoder` (CLIPTextModel), or SDXL's `text_encoder_2`
 * (CLIPTextModelWithProjection: the model is then a ClipTextModelWithProjection, `hasProjection`
 * is true and its outputs include `textEmbeds`). transformers 4.x saves the encoder's keys under
 * `text_model.`, 5.x's CLIPTextModel without (its CLIPTextModelWithProjection keeps the prefix);
 * `text_projection.weight` is top-level in both: every form is accepted.
 */
export function loadTextEncoder(folder: PipelineFolder, component = 'text_encoder', options: LoadOptions = {}): LoadedComponent<ClipTextModel> {
  const entry = getComponent(folder, component);
  return open(folder, component, ['CLIPTextModel', 'CLIPTextModelWithProjection'], (c, w) => {
    const config = parseClipTextConfig(c, w);
    return entry.className === 'CLIPTextModelWithProjection' ? new ClipTextModelWithProjection(config) : new ClipTextModel(config);
  }, options, ['', 'text_model.']);
}

export type DiffusionTransformer = PixArtTransformer2DModel | DiTTransformer2DModel | OfficialDiT;

const NORM_TYPES: Record<string, string> = { ada_norm_single: 'PixArt', ada_norm_zero: 'DiT' };

/** A diffusion transformer from its class name (model_index.json's) and config.json alone. */
export function transformerFromConfig(className: string, c: Record<string, unknown>, where: string): DiffusionTransformer {
  if (className === 'PixArtTransformer2DModel') return new PixArtTransformer2DModel(parsePixArtConfig(c, where));
  if (className === 'DiTTransformer2DModel') return new DiTTransformer2DModel(parseDiTConfig(c, where, false));
  if ((OFFICIAL_DIT_CLASSES as readonly string[]).includes(className)) return new OfficialDiT(parseOfficialDiTConfig(c, where));
  const normType = c.norm_type;
  if (normType === 'ada_norm_single') return new PixArtTransformer2DModel(parsePixArtConfig(c, where));
  if (normType === 'ada_norm_zero') return new DiTTransformer2DModel(parseDiTConfig(c, where, true));
  throw new InputError(`${where}: norm_type`, 'unsupported Transformer2DModel', Object.entries(NORM_TYPES).map(([k, v]) => `"${k}" (${v})`).join(' or '), JSON.stringify(normType));
}

/**
 * A diffusion transformer: PixArtTransformer2DModel, DiTTransformer2DModel, or diffusers' older
 * Transformer2DModel, which is either of them by its norm_type (ada_norm_single: PixArt,
 * ada_norm_zero: DiT) as diffusers remaps it.
 */
export function loadTransformer(folder: PipelineFolder, options: LoadOptions = {}): LoadedComponent<DiffusionTransformer> {
  const { className } = getComponent(folder, 'transformer');
  return open(folder, 'transformer', ['PixArtTransformer2DModel', 'DiTTransformer2DModel', 'Transformer2DModel', ...OFFICIAL_DIT_CLASSES],
    (c, w) => transformerFromConfig(className, c, w), options);
}

/** A T5EncoderModel text encoder (PixArt); transformers 4.x and 5.x key layouts, one file or shards. */
export function loadT5Encoder(folder: PipelineFolder, component = 'text_encoder', options: LoadOptions = {}): LoadedComponent<T5EncoderModel> {
  return open(folder, component, ['T5EncoderModel'], (c, w) => new T5EncoderModel(parseT5EncoderConfig(c, w)), options);
}
