/**
 * `diffuse inspect`: what a pipeline folder (or a built-in preset) holds — components, configs,
 * parameter counts and dtypes — and the segment list of each model with MACs per segment.
 */
import * as path from 'node:path';
import { InputError } from '../errors.ts';
import { calflopsMacs, fullMacs, zeroMacs, addMacs, type MacCount, type ParamSource } from '../graph/builder.ts';
import { AutoencoderKL, parseAutoencoderKLConfig } from '../models/autoencoder-kl.ts';
import { ClipTextModel, ClipTextModelWithProjection, parseClipTextConfig } from '../models/clip-text.ts';
import { loadT5Encoder, loadTextEncoder, loadTransformer, loadUNet, loadVae, transformerFromConfig, type DiffusionTransformer } from '../models/components.ts';
import { PixArtTransformer2DModel } from '../models/pixart-transformer-2d.ts';
import { PRESETS, PRESET_NAMES, TRANSFORMER_PRESETS } from '../models/presets.ts';
import { T5EncoderModel, parseT5EncoderConfig } from '../models/t5-encoder.ts';
import { UNet2DConditionModel, parseUNetConfig } from '../models/unet2d-condition.ts';
import { DryExecutor, shapeOnlyParams } from '../runtime/dry-executor.ts';
import { shaped, type SegmentReport } from '../runtime/executor.ts';
import { getComponent, readComponentConfig, readPipelineFolder, type PipelineFolder, type WeightSet } from '../weights/diffusers-folder.ts';
import { own } from '../util/own.ts';
import { modelFolder } from '../pipelines/reference-model.ts';

export interface InspectOptions {
  preset?: string;
  /** Image size in pixels; default: the denoiser's sample_size times the VAE factor. */
  width?: number;
  height?: number;
  batch: number;
  json: boolean;
}

interface ModelReport {
  component: string;
  className: string;
  configFile: string;
  config: Record<string, unknown>;
  parameters: number;
  dtypes: Record<string, number>;
  input: string;
  segments: SegmentReport[];
  macs: MacCount;
}

interface ModelParts {
  unet?: { model: UNet2DConditionModel; params: ParamSource; weights?: WeightSet };
  transformer?: { model: DiffusionTransformer; params: ParamSource; weights?: WeightSet; className: string };
  t5?: { model: T5EncoderModel; params: ParamSource; weights?: WeightSet };
  vae?: { model: AutoencoderKL; params: ParamSource; weights?: WeightSet };
  textEncoder?: { model: ClipTextModel; params: ParamSource; weights?: WeightSet };
  textEncoder2?: { model: ClipTextModel; params: ParamSource; weights?: WeightSet };
}

function dtypeCounts(weights: WeightSet | undefined, parameters: number): Record<string, number> {
  if (!weights) return { 'F32 (preset, no weights)': parameters };
  const counts: Record<string, number> = {};
  for (const name of weights.names()) {
    const info = weights.info(name);
    counts[info.dtype] = (counts[info.dtype] ?? 0) + info.shape.reduce((a, b) => a * b, 1);
  }
  return counts;
}

async function report(
  component: string,
  className: string,
  configFile: string,
  config: Record<string, unknown>,
  params: ParamSource,
  weights: WeightSet | undefined,
  input: string,
  run: (exec: DryExecutor) => Promise<unknown>,
): Promise<ModelReport> {
  const exec = new DryExecutor(params);
  await run(exec);
  const macs = zeroMacs();
  for (const s of exec.calls) addMacs(macs, s.macs);
  // Each parameter once, however many segments use it (DiT's final layer reuses block 0's embedding).
  const sizes = Object.assign({}, ...exec.calls.map((s) => s.parameterSizes)) as Record<string, number>;
  const parameters = Object.values(sizes).reduce((n, k) => n + k, 0);
  return { component, className, configFile, config, parameters, dtypes: dtypeCounts(weights, parameters), input, segments: exec.calls, macs };
}

export async function inspect(dir: string | undefined, o: InspectOptions): Promise<string> {
  let folder: PipelineFolder | undefined;
  const parts: ModelParts = {};
  const configs: Record<string, { file: string; config: Record<string, unknown> }> = {};
  let pipeline = '';
  // T5 tokens per prompt for PixArt (its pipeline's max_sequence_length).
  let tokens = 120;
  const transformerPreset = o.preset === undefined ? undefined : own(TRANSFORMER_PRESETS, o.preset);
  if (transformerPreset) {
    const preset = transformerPreset;
    const where = `preset ${o.preset}`;
    pipeline = preset.pipeline;
    tokens = preset.maxSequenceLength ?? tokens;
    parts.transformer = { model: transformerFromConfig(preset.transformerClass, preset.transformer, where), params: shapeOnlyParams, className: preset.transformerClass };
    parts.vae = { model: new AutoencoderKL(parseAutoencoderKLConfig(preset.vae, where)), params: shapeOnlyParams };
    configs.transformer = { file: where, config: preset.transformer };
    configs.vae = { file: where, config: preset.vae };
    if (preset.textEncoder) {
      parts.t5 = { model: new T5EncoderModel(parseT5EncoderConfig(preset.textEncoder, where)), params: shapeOnlyParams };
      configs.text_encoder = { file: where, config: preset.textEncoder };
    }
  } else if (o.preset !== undefined) {
    const preset = own(PRESETS, o.preset);
    if (!preset) throw new InputError('--preset', 'unknown preset', PRESET_NAMES.join(' or '), o.preset);
    pipeline = preset.textEncoder2 ? 'StableDiffusionXLPipeline' : 'StableDiffusionPipeline';
    parts.unet = { model: new UNet2DConditionModel(parseUNetConfig(preset.unet, `preset ${o.preset} unet`)), params: shapeOnlyParams };
    parts.vae = { model: new AutoencoderKL(parseAutoencoderKLConfig(preset.vae, `preset ${o.preset} vae`)), params: shapeOnlyParams };
    parts.textEncoder = { model: new ClipTextModel(parseClipTextConfig(preset.textEncoder, `preset ${o.preset} text_encoder`)), params: shapeOnlyParams };
    configs.unet = { file: `preset ${o.preset}`, config: preset.unet };
    configs.vae = { file: `preset ${o.preset}`, config: preset.vae };
    configs.text_encoder = { file: `preset ${o.preset}`, config: preset.textEncoder };
    if (preset.textEncoder2) {
      const config = parseClipTextConfig(preset.textEncoder2, `preset ${o.preset} text_encoder_2`);
      parts.textEncoder2 = { model: new ClipTextModelWithProjection(config), params: shapeOnlyParams };
      configs.text_encoder_2 = { file: `preset ${o.preset}`, config: preset.textEncoder2 };
    }
  } else {
    if (dir === undefined) throw new InputError('inspect', 'no model given', 'a diffusers folder or --preset NAME');
    folder = readPipelineFolder(modelFolder(dir));
    pipeline = folder.className;
    if (folder.className === 'PixArtSigmaPipeline') tokens = 300;
    const has = (c: string) => folder!.components[c] != null;
    if (has('unet')) parts.unet = loadUNet(folder);
    if (has('transformer')) parts.transformer = { ...loadTransformer(folder), className: getComponent(folder, 'transformer').className };
    if (has('vae')) parts.vae = loadVae(folder);
    if (has('text_encoder')) {
      if (getComponent(folder, 'text_encoder').className === 'T5EncoderModel') parts.t5 = loadT5Encoder(folder);
      else parts.textEncoder = loadTextEncoder(folder);
    }
    if (has('text_encoder_2')) parts.textEncoder2 = loadTextEncoder(folder, 'text_encoder_2');
    for (const c of ['unet', 'transformer', 'vae', 'text_encoder', 'text_encoder_2']) {
      if (has(c)) {
        const { config, where } = readComponentConfig(folder, c);
        configs[c] = { file: where, config };
      }
    }
  }

  const factor = parts.vae?.model.downsampleFactor ?? 8;
  const nativeSize = (parts.unet?.model.config.sampleSize ?? parts.transformer?.model.config.sampleSize ?? 64) * factor;
  const width = o.width ?? nativeSize;
  const height = o.height ?? nativeSize;
  const batch = o.batch;
  for (const [flag, value] of [['--size', width], ['--size', height], ['--batch', batch]] as const) {
    if (!Number.isInteger(value) || value <= 0) throw new InputError(flag, 'wrong value', 'a positive integer', `${value}`);
  }
  const reports: ModelReport[] = [];
  if (parts.unet) {
    const unet = parts.unet.model;
    if (width % factor || height % factor) {
      throw new InputError('--size', `width and height must be multiples of the VAE factor ${factor}`, undefined, `${width}x${height}`);
    }
    const [h, w] = [height / factor, width / factor];
    // SDXL: pooled text embeddings as wide as text_encoder_2's projection, and the time ids.
    const te2 = parts.textEncoder2?.model;
    const textEmbedsDim = te2?.textEmbedsWidth;
    reports.push(await report('unet', 'UNet2DConditionModel', configs.unet.file, configs.unet.config, parts.unet.params, parts.unet.weights,
      `sample [${batch}, ${unet.config.inChannels}, ${h}, ${w}]`,
      (exec) => unet.forwardShapes(exec, { batch, latentHeight: h, latentWidth: w, textEmbedsDim })));
  }
  if (parts.transformer) {
    const transformer = parts.transformer.model;
    const unit = factor * transformer.config.patchSize;
    if (width % unit || height % unit) {
      throw new InputError('--size', `width and height must be multiples of ${unit} (VAE factor ${factor} × patch size ${transformer.config.patchSize})`, undefined, `${width}x${height}`);
    }
    const [h, w] = [height / factor, width / factor];
    const text = transformer instanceof PixArtTransformer2DModel ? `, text [${batch}, ${tokens}]` : `, class_labels [${batch}]`;
    reports.push(await report('transformer', parts.transformer.className, configs.transformer.file, configs.transformer.config, parts.transformer.params,
      parts.transformer.weights, `sample [${batch}, ${transformer.config.inChannels}, ${h}, ${w}]${text}`,
      (exec) => transformer.forwardShapes(exec, { batch, latentHeight: h, latentWidth: w, tokens })));
  }
  if (parts.t5) {
    const t5 = parts.t5.model;
    reports.push(await report('text_encoder', 'T5EncoderModel', configs.text_encoder.file, configs.text_encoder.config, parts.t5.params, parts.t5.weights,
      `input_ids [${batch}, ${tokens}]`, (exec) => t5.forward(exec, shaped([batch, tokens], 'int64'), shaped([batch, tokens], 'int64'))));
  }
  if (parts.vae) {
    const vae = parts.vae.model;
    const f = vae.downsampleFactor;
    reports.push(await report('vae', 'AutoencoderKL', configs.vae.file, configs.vae.config, parts.vae.params, parts.vae.weights,
      `image [${batch}, 3, ${height}, ${width}]`,
      async (exec) => {
        await vae.encode(exec, shaped([batch, vae.config.inChannels, height, width]));
        await vae.decode(exec, shaped([batch, vae.config.latentChannels, height / f, width / f]));
      }));
  }
  if (parts.textEncoder) {
    const te = parts.textEncoder.model;
    reports.push(await report('text_encoder', 'CLIPTextModel', configs.text_encoder.file, configs.text_encoder.config, parts.textEncoder.params,
      parts.textEncoder.weights, `input_ids [${batch}, ${te.config.maxPositions}]`,
      (exec) => te.forward(exec, shaped([batch, te.config.maxPositions], 'int64'))));
  }
  if (parts.textEncoder2) {
    const te = parts.textEncoder2.model;
    reports.push(await report('text_encoder_2', te.hasProjection ? 'CLIPTextModelWithProjection' : 'CLIPTextModel', configs.text_encoder_2.file,
      configs.text_encoder_2.config, parts.textEncoder2.params, parts.textEncoder2.weights, `input_ids [${batch}, ${te.config.maxPositions}]`,
      (exec) => te.forward(exec, shaped([batch, te.config.maxPositions], 'int64'))));
  }
  for (const p of [parts.unet, parts.transformer, parts.t5, parts.vae, parts.textEncoder, parts.textEncoder2]) p?.weights?.close();

  if (o.json) {
    return JSON.stringify({
      source: folder?.dir ?? `preset ${o.preset}`,
      pipeline,
      components: folder?.components,
      size: { width, height, batch },
      models: reports.map((r) => ({ ...r, macsFull: fullMacs(r.macs), macsCalflops: calflopsMacs(r.macs) })),
    }, null, 2);
  }
  return formatText(folder, o, reports);
}

const giga = (n: number) => (n / 1e9).toFixed(3);
const millions = (n: number) => (n / 1e6).toFixed(2) + 'M';

function formatText(folder: PipelineFolder | undefined, o: InspectOptions, reports: ModelReport[]): string {
  const lines: string[] = [];
  if (folder) {
    lines.push(`${folder.className} at ${folder.dir}${folder.diffusersVersion ? ` (diffusers ${folder.diffusersVersion})` : ''}`);
    lines.push('components:');
    for (const [name, c] of Object.entries(folder.components)) {
      lines.push(`  ${name.padEnd(16)} ${c ? `${c.library}.${c.className}  ${path.relative(folder.dir, c.dir)}/` : '(absent)'}`);
    }
  } else {
    lines.push(`preset ${o.preset}: ${(own(PRESETS, o.preset!) ?? own(TRANSFORMER_PRESETS, o.preset!))!.description} (built-in configs, no weights)`);
  }
  for (const r of reports) {
    lines.push('', `== ${r.component}: ${r.className}  (${r.configFile})`);
    lines.push(`config: ${Object.entries(r.config).filter(([k]) => !k.startsWith('_')).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(' ')}`);
    lines.push(`parameters: ${millions(r.parameters)} used; stored ${Object.entries(r.dtypes).map(([d, n]) => `${d} ${millions(n)}`).join(', ')}`);
    lines.push(`segments at ${r.input} (GMACs; "calflops" omits the attention core QKᵀ/AV):`);
    lines.push(`  ${'segment'.padEnd(58)} ${'calflops'.padStart(10)} ${'full'.padStart(10)} ${'params'.padStart(9)}  output`);
    for (const s of r.segments) {
      const out = Object.entries(s.outputShapes).map(([k, d]) => `${k}[${d.join(',')}]`).join(' ');
      lines.push(`  ${s.name.padEnd(58)} ${giga(calflopsMacs(s.macs)).padStart(10)} ${giga(fullMacs(s.macs)).padStart(10)} ${millions(s.parameters).padStart(9)}  ${out}`);
    }
    lines.push(`total ${r.component}: ${giga(calflopsMacs(r.macs))} GMACs counted like calflops, ${giga(fullMacs(r.macs))} GMACs full ` +
      `(conv ${giga(r.macs.conv)}, linear ${giga(r.macs.linear)}, attention core ${giga(r.macs.attention)}) in ${r.segments.length} segments`);
  }
  return lines.join('\n');
}
