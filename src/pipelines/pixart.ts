/**
 * Text-to-image for PixArt-α and PixArt-Σ folders, step for step as diffusers' PixArtAlphaPipeline
 * / PixArtSigmaPipeline: T5 prompt embeddings with their padding masks (the unconditional half from
 * the negative prompt, "" by default, padded to the same length), classifier-free guidance, the
 * learned variance dropped, the α-1024 micro-conditions, resolution binning (generate at the
 * trained size nearest in aspect ratio, then resize and centre-crop the image back), VAE decode.
 *
 * Prompts are lower-cased and stripped, which is what diffusers does when its `clean_caption`
 * cannot run (it needs the Python packages bs4 and ftfy; with them it also rewrites URLs, HTML,
 * quotes and much else — that cleaning is not reproduced here).
 *
 * img2img (src/pipelines/img2img.ts) as diffusers' Stable Diffusion img2img does it, at the
 * generated size: diffusers has no PixArt img2img pipeline.
 */
import * as ort from 'onnxruntime-node';
import { InputError, checkAborted, describe } from '../errors.ts';
import type { AutoencoderKL } from '../models/autoencoder-kl.ts';
import { closingOnFailure, loadT5Encoder, loadTransformer, loadVae, type LoadedComponent } from '../models/components.ts';
import { PixArtTransformer2DModel } from '../models/pixart-transformer-2d.ts';
import type { T5EncoderModel } from '../models/t5-encoder.ts';
import type { Executor, ShapedTensor } from '../runtime/executor.ts';
import { checkLoadOptions, OrtExecutor, withFullPrecision, retainSessionsFor, type RuntimeOptions, transfers, transfersSince } from '../runtime/ort-executor.ts';
import { T5Tokenizer } from '../tokenizers/t5-unigram.ts';
import { getComponent, type PipelineFolder } from '../weights/diffusers-folder.ts';
import {
  Acceleration, Generations, halfFloatsFor, BatchNoise, checkLatents, checkRequestOptions, folderScheduler, optionNames, PROMPT_OPTIONS, seedWarnings, concat, decodeImages, floats, guide, intOption, keyValueTensors, LIMITS, list, macsSince, numberOption, seconds, seedOf,
  type GenerationResult, type PromptRequest,
} from './common.ts';
import { pipelineClasses, pipelineDefaults } from './families.ts';
import { imageDefaultSize, img2imgOf, scheduleStart, startingLatents } from './img2img.ts';
import { checkPositionGrid } from '../models/layers.ts';
import { refuseOverMemory } from './memory.ts';
import { RESOLUTION_BINS } from './pixart-resolution-bins.ts';

export interface PixArtRequest extends PromptRequest {
  /** T5 tokens per prompt; default 120 for α, 300 for Σ. */
  maxSequenceLength?: number;
  /** Generate at the nearest trained size and resize back (default true, as diffusers); starting latents are at the generated size. */
  resolutionBinning?: boolean;
}

/** The transformer's MACs include the caption projection and cross-attention keys/values. */
export interface PixArtResult extends GenerationResult {
  /** The size the transformer ran at (the binned size with resolution binning). */
  generated: { width: number; height: number };
  timings: { textEncoding: number; imageEncoding?: number; denoising: number; decoding: number };
}

/** Python's str.strip(): str.isspace() characters, which JavaScript's trim() draws differently (U+001C–U+001F, U+0085 in; U+FEFF out). */
export function pythonStrip(text: string): string {
  const space = /[\t\n\v\f\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]/;
  let [start, end] = [0, text.length];
  while (start < end && space.test(text[start])) start++;
  while (end > start && space.test(text[end - 1])) end--;
  return text.slice(start, end);
}

/** The binned [height, width] for a requested size: the table's entry nearest in aspect ratio. */
export function binResolution(height: number, width: number, sampleSize: number): [number, number] {
  const bins = RESOLUTION_BINS[sampleSize];
  if (!bins) {
    throw new InputError('resolutionBinning', `PixArt has no resolution bins for transformer sample_size ${sampleSize}`,
      `sample_size 32, 64, 128 or 256, or no resolution binning`, `${sampleSize}`);
  }
  const ratio = height / width;
  let best = bins[0];
  for (const bin of bins) if (Math.abs(bin[0] - ratio) < Math.abs(best[0] - ratio)) best = bin;
  return [best[1], best[2]];
}

/**
 * diffusers' resize_and_crop_tensor on a planar [3, H, W] image: scale by the larger of the two
 * ratios (bilinear, half-pixel centres, no antialiasing, as torch's interpolate), then crop the centre.
 */
export function resizeAndCrop(image: Float32Array, height: number, width: number, toHeight: number, toWidth: number): Float32Array {
  if (height === toHeight && width === toWidth) return image;
  const ratio = Math.max(toHeight / height, toWidth / width);
  const [rh, rw] = [Math.trunc(height * ratio), Math.trunc(width * ratio)];
  const [top, left] = [Math.floor((rh - toHeight) / 2), Math.floor((rw - toWidth) / 2)];
  // torch's scale for a given output size is in / out, in float32.
  const [sy, sx] = [Math.fround(height / rh), Math.fround(width / rw)];
  const source = (o: number, scale: number, size: number): [number, number, number] => {
    const x = Math.max(Math.fround(Math.fround((o + 0.5) * scale) - 0.5), 0);
    const i0 = Math.min(Math.floor(x), size - 1);
    const i1 = Math.min(i0 + 1, size - 1);
    return [i0, i1, Math.fround(x - i0)];
  };
  const out = new Float32Array(3 * toHeight * toWidth);
  for (let y = 0; y < toHeight; y++) {
    const [y0, y1, fy] = source(y + top, sy, height);
    for (let x = 0; x < toWidth; x++) {
      const [x0, x1, fx] = source(x + left, sx, width);
      for (let c = 0; c < 3; c++) {
        const p = (r: number, k: number) => image[c * height * width + r * width + k];
        const upper = (1 - fx) * p(y0, x0) + fx * p(y0, x1);
        const lower = (1 - fx) * p(y1, x0) + fx * p(y1, x1);
        out[c * toHeight * toWidth + y * toWidth + x] = (1 - fy) * upper + fy * lower;
      }
    }
  }
  return out;
}

export class PixArtPipeline {
  private readonly transformerExec: OrtExecutor;
  private readonly textExec: OrtExecutor;
  /** Whether the T5 sessions stay (false for a T5-XXL on this machine: each block's session is released after its run). */
  private readonly textRetained: boolean;
  private readonly vaeExec: OrtExecutor;
  private readonly generations: Generations;

  constructor(
    readonly folder: PipelineFolder,
    readonly transformer: LoadedComponent<PixArtTransformer2DModel>,
    readonly textEncoder: LoadedComponent<T5EncoderModel>,
    readonly tokenizer: T5Tokenizer,
    readonly vae: LoadedComponent<AutoencoderKL>,
    options: RuntimeOptions,
  ) {
    this.transformerExec = new OrtExecutor(transformer.params, options);
    // T5-XXL is 19 GB as float32: run it one block's session at a time rather than hold it all.
    this.textRetained = retainSessionsFor(textEncoder.weights.float32Bytes());
    this.textExec = new OrtExecutor(textEncoder.params, withFullPrecision(options), { retainSessions: this.textRetained });
    this.vaeExec = new OrtExecutor(vae.params, withFullPrecision(options));
    this.generations = new Generations([this.transformerExec, this.textExec, this.vaeExec]);
  }

  /** α's default is 120 tokens, Σ's 300 (their pipelines' max_sequence_length). */
  get defaultMaxSequenceLength(): number {
    return this.folder.className === 'PixArtSigmaPipeline' ? 300 : 120;
  }

  /** Pixel size the transformer was trained at (sample_size × VAE factor). */
  get defaultSize(): number {
    return this.transformer.model.config.sampleSize * this.vae.model.downsampleFactor;
  }

  /** T5 states and masks for prompts (lower-cased and stripped), `maxLength` tokens each. */
  private async encode(prompts: string[], maxLength: number, warnings: string[]): Promise<{ states: Float32Array; mask: BigInt64Array; width: number }> {
    const ids = new BigInt64Array(prompts.length * maxLength);
    const mask = new BigInt64Array(prompts.length * maxLength);
    prompts.forEach((prompt, i) => {
      const text = pythonStrip(prompt.toLowerCase());
      const encoded = this.tokenizer.encode(text, maxLength);
      const full = this.tokenizer.encodeUntruncated(text).length;
      const warning = `prompt truncated to ${maxLength} tokens (maxSequenceLength): ${full - maxLength} tokens dropped from "${prompt.slice(0, 40)}…"`;
      if (full > maxLength && !warnings.includes(warning)) warnings.push(warning);
      ids.set(encoded.ids.map(BigInt), i * maxLength);
      mask.set(encoded.mask.map(BigInt), i * maxLength);
    });
    const dims = [prompts.length, maxLength];
    const out = await this.textEncoder.model.forward(this.textExec, new ort.Tensor('int64', ids, dims), new ort.Tensor('int64', mask, dims));
    const [states, width] = [await floats(out), out.dims[2]];
    this.textExec.freeOutputs();
    return { states, mask, width };
  }

  /** Runs after any generation already begun on this pipeline. */
  generate(request: PixArtRequest): Promise<PixArtResult> {
    return this.generations.run(() => this.generateNow(request), request.signal);
  }

  /**
   * Every refusal `generate` would make before its first model call (options, sizes, accelerations,
   * memory), made without running a model: the request's warnings, or the InputError. A sweep asks
   * this of every setting before it runs the first.
   */
  check(request: PixArtRequest): Promise<string[]> {
    return this.generations.run(async () => (await this.generateNow(request, true)).warnings);
  }

  private async generateNow(request: PixArtRequest, checksOnly: true): Promise<{ warnings: string[] }>;
  private async generateNow(request: PixArtRequest, checksOnly?: false): Promise<PixArtResult>;
  private async generateNow(request: PixArtRequest, checksOnly = false): Promise<PixArtResult | { warnings: string[] }> {
    checkRequestOptions(request, [...PROMPT_OPTIONS, ...optionNames<PixArtRequest, PromptRequest>({ maxSequenceLength: true, resolutionBinning: true })], this.folder.className);
    const warnings: string[] = [];
    const model = this.transformer.model;
    const c = model.config;
    const prompts = list(request.prompt, 'prompt');
    const defaults = pipelineDefaults(this.folder.className);
    const steps = intOption(request.steps, defaults.steps, 'steps', 1, LIMITS.steps);
    const guidance = numberOption(request.guidanceScale, defaults.guidanceScale, 'guidanceScale', -LIMITS.guidanceScale, LIMITS.guidanceScale);
    const perPrompt = intOption(request.imagesPerPrompt, 1, 'imagesPerPrompt', 1, LIMITS.imagesPerPrompt);
    const maxLength = intOption(request.maxSequenceLength, this.defaultMaxSequenceLength, 'maxSequenceLength', 1, LIMITS.maxSequenceLength);
    const factor = this.vae.model.downsampleFactor;
    const unit = factor * c.patchSize;
    const img2img = img2imgOf(request);
    const fromImage = img2img && imageDefaultSize(img2img.image, unit);
    const width = intOption(request.width, fromImage?.width ?? this.defaultSize, 'width', 1, LIMITS.size);
    const height = intOption(request.height, fromImage?.height ?? this.defaultSize, 'height', 1, LIMITS.size);
    const binning = request.resolutionBinning ?? true;
    if (typeof binning !== 'boolean') throw new InputError('resolutionBinning', 'wrong value', 'true or false', describe(binning));
    const [genHeight, genWidth] = binning ? binResolution(height, width, c.sampleSize) : [height, width];
    if (genWidth % unit || genHeight % unit) {
      throw new InputError('width/height', `must be multiples of ${unit} (VAE factor ${factor} × patch size ${c.patchSize})`, undefined, `${genWidth}x${genHeight}`);
    }
    checkPositionGrid(genHeight / unit, genWidth / unit, model.innerDim, 'width/height', `${genWidth}x${genHeight}${binning ? ' (binned)' : ''}`);
    const negatives = request.negativePrompt === undefined ? prompts.map(() => '') : list(request.negativePrompt, 'negativePrompt');
    if (negatives.length !== 1 && negatives.length !== prompts.length) {
      throw new InputError('negativePrompt', 'one negative prompt, or one per prompt', `1 or ${prompts.length}`, `${negatives.length}`);
    }
    const seed = seedOf(request.seed);
    const cfg = guidance > 1;
    // As in diffusers, the negative prompt is then unused; unlike diffusers, we say so.
    if (!cfg && request.negativePrompt !== undefined) warnings.push(`negativePrompt has no effect: guidanceScale ${guidance} ≤ 1 turns classifier-free guidance off`);
    const batch = prompts.length * perPrompt;
    const latentDims = [batch, c.inChannels, genHeight / factor, genWidth / factor];
    checkLatents(request.latents, latentDims);
    const scheduler = folderScheduler(this.folder, request.scheduler, steps);
    if (scheduler.timesteps.length === 1) {
      throw new InputError('steps', 'one step is not supported for PixArt (diffusers then returns the x0 prediction)', 'at least 2', '1');
    }
    const { start: first, run, why } = scheduleStart(scheduler, img2img);
    const acceleration = Acceleration.check(request.accel, model.declaration, { ...run, halfFloats: await halfFloatsFor(request, this.transformerExec) }, why, request.plans);
    warnings.push(...seedWarnings(request, scheduler, first));

    // Before the text encoder runs (minutes for T5-XXL on a CPU): T5's width is its d_model, which the loader matched to caption_channels.
    const denoise = (exec: Executor<ShapedTensor>) => model.forwardShapes(exec, {
      batch: cfg ? 2 * batch : batch, latentHeight: latentDims[2], latentWidth: latentDims[3], tokens: maxLength, textChannels: this.textEncoder.model.config.dModel,
    });
    // T5's sessions are released after each block when it is large (ort-executor.ts), so its weights are not counted then.
    await refuseOverMemory({ resident: [this.transformer, this.vae, this.textRetained ? this.textEncoder : undefined], denoise, vae: this.vae.model, latentDims,
      limit: request.memoryLimit, what: 'width/height', output: request.output, imageSize: [width, height], keptBytes: await acceleration.keptBytes(denoise, cfg) });
    warnings.push(...await acceleration.prepare(denoise));
    if (checksOnly) return { warnings };

    // Prompt embeddings and masks, each repeated for its images; CFG puts the unconditional half first.
    let start = performance.now();
    const repeat = (items: string[]) => items.flatMap((p) => new Array<string>(perPrompt).fill(p));
    // One encoder call for both halves: a T5-XXL too big to keep loads its weights once.
    const texts = cfg ? [...repeat(negatives.length === 1 ? prompts.map(() => negatives[0]) : negatives), ...repeat(prompts)] : repeat(prompts);
    const encoded = await this.encode(texts, maxLength, warnings);
    const { states, mask } = encoded;
    const positive = {
      states: cfg ? states.slice(states.length / 2) : states,
      mask: cfg ? mask.slice(mask.length / 2) : mask,
      width: encoded.width,
    };
    const textEncoding = seconds(start);
    const text = (rows: number, s: Float32Array, m: BigInt64Array) => ({
      states: new ort.Tensor('float32', s, [rows, maxLength, positive.width]),
      mask: new ort.Tensor('int64', m, [rows, maxLength]),
    });
    const cfgText = cfg ? text(2 * batch, states, mask) : undefined;
    const singleText = text(batch, positive.states, positive.mask);
    // α-1024's micro-conditions: the generated size and its aspect ratio, per row.
    const sizes = (rows: number) => (c.useAdditionalConditions ? {
      resolution: new ort.Tensor('float32', new Float32Array(rows * 2).map((_, i) => (i % 2 ? genWidth : genHeight)), [rows, 2]),
      aspectRatio: new ort.Tensor('float32', new Float32Array(rows).fill(genHeight / genWidth), [rows, 1]),
    } : undefined);

    acceleration.begin(this.transformerExec);
    // Caption projection and cross-attention keys/values depend on the prompt only: once per text (lossless).
    const kvs = new Map<object, Map<string, { k: ort.Tensor; v: ort.Tensor; bias: ort.Tensor }>>();
    const keysFor = async (t: { states: ort.Tensor; mask: ort.Tensor }) => {
      let kv = kvs.get(t);
      if (!kv) kvs.set(t, (kv = await model.crossAttentionKV(this.transformerExec, t.states, t.mask)));
      return kv;
    };

    const noise = new BatchNoise(seed, batch);
    const size = latentDims.reduce((a, b) => a * b, 1);
    // img2img: the init image at the generated (binned) size.
    start = performance.now();
    let latents = await startingLatents({ img2img, given: request.latents, dims: latentDims, scheduler, start: first, noise,
      vae: this.vae.model, vaeExec: this.vaeExec, width: genWidth, height: genHeight });
    const imageEncoding = seconds(start);

    start = performance.now();
    const macsBefore = { ...this.transformerExec.macsSpent };
    const transfersBefore = { ...transfers };
    let state = scheduler.beginState(first);
    const plane = size / batch;
    for (let i = first; i < scheduler.timesteps.length; i++) {
      checkAborted(request.signal);
      const stepStart = performance.now();
      const now = acceleration.call(i - first, cfg, this.transformerExec);
      const rows = now.cfg ? 2 * batch : batch;
      const t = scheduler.timesteps[i];
      const input = scheduler.scaleModelInput(now.cfg ? concat(latents, latents) : latents, i);
      const textNow = now.cfg ? cfgText! : singleText;
      const out = await model.forward(now.exec,
        new ort.Tensor('float32', input, [rows, ...latentDims.slice(1)]), new ort.Tensor('float32', new Float32Array(rows).fill(t), [rows]),
        { ...textNow, kv: await keysFor(textNow) }, sizes(rows));
      const prediction = await floats(out);
      acceleration.endCall(this.transformerExec, keyValueTensors(kvs));
      // Guidance over every output channel, then the learned variance's half dropped.
      const guided = now.cfg ? guide(prediction, prediction.length / 2, guidance, 0, batch) : prediction;
      const eps = c.outChannels === 2 * c.inChannels ? firstChannels(guided, batch, plane) : guided;
      const stepNoise = scheduler.needsNoise(i) ? noise.draw(size) : undefined;
      ({ prevSample: latents, state } = scheduler.step(state, eps, i, latents, stepNoise));
      request.onStep?.({ step: i - first + 1, steps: run.calls, timestep: t, seconds: seconds(stepStart) });
    }
    const denoising = seconds(start);
    const denoisingTransfers = transfersSince(transfersBefore);

    start = performance.now();
    const fit = (decoded: Float32Array) => ({ data: binning ? resizeAndCrop(decoded, genHeight, genWidth, height, width) : decoded, width, height });
    const images = (request.output ?? 'image') === 'image' ? await decodeImages(this.vae.model, this.vaeExec, latents, latentDims, fit) : [];
    const decoding = seconds(start);
    return {
      latents: { data: latents, dims: latentDims },
      images,
      seed,
      seeds: noise.seeds,
      steps,
      guidanceScale: guidance,
      scheduler: scheduler.name,
      generated: { width: genWidth, height: genHeight },
      accel: acceleration.report(),
      denoiserMacs: macsSince(this.transformerExec, macsBefore),
      denoisingTransfers,
      keptOnDevice: acceleration.keptOnDevice,
      timings: { textEncoding, ...(img2img ? { imageEncoding } : {}), denoising, decoding },
      warnings,
    };
  }

  async release(): Promise<void> {
    await this.generations.release();
    try {
      await Promise.all([this.transformerExec.release(), this.textExec.release(), this.vaeExec.release()]);
    } finally {
      for (const component of [this.transformer, this.textEncoder, this.vae]) component.weights.close();
    }
  }
}

/** The first `plane` values of each of `batch` rows of `2 · plane`: the noise prediction without the variance. */
function firstChannels(data: Float32Array, batch: number, plane: number): Float32Array {
  const out = new Float32Array(batch * plane);
  for (let b = 0; b < batch; b++) out.set(data.subarray(2 * b * plane, (2 * b + 1) * plane), b * plane);
  return out;
}

const PIPELINES = pipelineClasses('pixart');

/** Opens a PixArt-α or PixArt-Σ folder (the caller has read its model_index.json). */
export function loadPixArtPipeline(folder: PipelineFolder, options: RuntimeOptions & { variant?: string } = {}): PixArtPipeline {
  checkLoadOptions(options, ['variant']);
  if (!PIPELINES.includes(folder.className)) {
    throw new InputError(`${folder.dir}/model_index.json: _class_name`, 'not a PixArt pipeline', PIPELINES.join(' or '), folder.className);
  }
  const load = { variant: options.variant };
  return closingOnFailure((track) => {
    const transformer = track(loadTransformer(folder, load));
    if (!(transformer.model instanceof PixArtTransformer2DModel)) {
      throw new InputError(`${transformer.configFile}: norm_type`, `a ${folder.className} needs a PixArt transformer`, '"ada_norm_single"', 'a DiT (ada_norm_zero)');
    }
    const textEncoder = track(loadT5Encoder(folder, 'text_encoder', load));
    const expected = transformer.model.config.captionChannels ?? transformer.model.config.crossAttentionDim;
    if (textEncoder.model.config.dModel !== expected) {
      throw new InputError(`${transformer.configFile}: caption_channels`, `disagrees with the text encoder's d_model (${textEncoder.configFile})`,
        `${textEncoder.model.config.dModel}`, `${expected}`);
    }
    const tokenizer = T5Tokenizer.fromFolder(getComponent(folder, 'tokenizer').dir);
    const vae = track(loadVae(folder, load));
    return new PixArtPipeline(folder, transformer as LoadedComponent<PixArtTransformer2DModel>, textEncoder, tokenizer, vae, options);
  });
}
