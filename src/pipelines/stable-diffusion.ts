/**
 * Text-to-image for Stable Diffusion 1.x / 2.x and SDXL folders, step for step as diffusers'
 * StableDiffusionPipeline / StableDiffusionXLPipeline: CLIP prompt embeddings, classifier-free
 * guidance (uncond first), optional guidance rescale, the scheduler loop, VAE decode to [0, 1].
 * Noise comes from our own seeded generator (src/util/rng.ts), not torch's: the same seed gives
 * the same image here on every platform, but not the image torch would give for that seed.
 */
import * as ort from 'onnxruntime-node';
import { InputError, checkAborted, describe } from '../errors.ts';
import { closingOnFailure, loadTextEncoder, loadUNet, loadVae, type LoadedComponent } from '../models/components.ts';
import type { AutoencoderKL } from '../models/autoencoder-kl.ts';
import type { ClipTextModel } from '../models/clip-text.ts';
import type { CrossAttentionKV, UNet2DConditionModel } from '../models/unet2d-condition.ts';
import type { Executor, ShapedTensor } from '../runtime/executor.ts';
import { checkLoadOptions, OrtExecutor, withFullPrecision, type RuntimeOptions, transfers, transfersSince } from '../runtime/ort-executor.ts';
import { ClipTokenizer } from '../tokenizers/clip-bpe.ts';
import {
  Acceleration, Generations, halfFloatsFor, BatchNoise, checkRequestOptions, folderScheduler, macsSince, optionNames, seedWarnings, checkLatents, PROMPT_OPTIONS, concat, decodeImages, floats, guide, intOption, keyValueTensors, LIMITS, list, numberOption, seconds, seedOf,
  type GenerationResult, type PromptRequest,
} from './common.ts';
import { pipelineClasses, pipelineDefaults } from './families.ts';
import { imageDefaultSize, img2imgOf, scheduleStart, startingLatents } from './img2img.ts';
import { refuseOverMemory } from './memory.ts';
import { modelFolder } from './reference-model.ts';

export type { AccelReport, GeneratedImage, GenerationResult, Latents, StepInfo } from './common.ts';
import { getComponent, readPipelineFolder, type PipelineFolder } from '../weights/diffusers-folder.ts';

export interface PipelineOptions extends RuntimeOptions {
  /** Weight variant, e.g. "fp16" for `*.fp16.safetensors`. */
  variant?: string;
}

export interface GenerateRequest extends PromptRequest {
  guidanceRescale?: number;
  /** SDXL micro-conditioning [height, width]; default: the output size. */
  originalSize?: [number, number];
  targetSize?: [number, number];
  /** SDXL crop offset [top, left]; default [0, 0]. */
  cropTopLeft?: [number, number];
}

/** The U-Net's MACs count every segment, cross-attention keys/values included. */
export interface GenerateResult extends GenerationResult {
  timings: { textEncoding: number; imageEncoding?: number; denoising: number; decoding: number };
}

/** SDXL's second text encoder and what goes with it. */
export interface XlParts {
  textEncoder2: LoadedComponent<ClipTextModel>;
  tokenizer2: ClipTokenizer;
  /** model_index.json's force_zeros_for_empty_prompt: no negative prompt → zero embeddings. */
  forceZerosForEmptyPrompt: boolean;
}

/** Prompt conditioning for a batch: per-token context, and SDXL's pooled embeddings. */
interface Conditioning {
  context: Float32Array;
  tokens: number;
  width: number;
  pooled?: Float32Array;
}

export class StableDiffusionPipeline {
  private readonly unetExec: OrtExecutor;
  private readonly vaeExec: OrtExecutor;
  private readonly textExec: OrtExecutor;
  private readonly textExec2?: OrtExecutor;
  private readonly generations: Generations;

  constructor(
    readonly folder: PipelineFolder,
    readonly unet: LoadedComponent<UNet2DConditionModel>,
    readonly vae: LoadedComponent<AutoencoderKL>,
    readonly textEncoder: LoadedComponent<ClipTextModel>,
    readonly tokenizer: ClipTokenizer,
    options: PipelineOptions,
    readonly xl?: XlParts,
  ) {
    this.unetExec = new OrtExecutor(unet.params, options);
    this.vaeExec = new OrtExecutor(vae.params, withFullPrecision(options));
    this.textExec = new OrtExecutor(textEncoder.params, withFullPrecision(options));
    if (xl) this.textExec2 = new OrtExecutor(xl.textEncoder2.params, withFullPrecision(options));
    this.generations = new Generations([this.unetExec, this.vaeExec, this.textExec, this.textExec2]);
  }

  /** Pixel size the U-Net was trained at (sample_size × VAE factor). */
  get defaultSize(): number {
    return this.unet.model.config.sampleSize * this.vae.model.downsampleFactor;
  }

  private tokenize(tokenizer: ClipTokenizer, prompts: string[], warnings: string[]): ort.Tensor {
    const ids = new BigInt64Array(prompts.length * tokenizer.maxLength);
    prompts.forEach((p, i) => {
      const full = tokenizer.encodeUntruncated(p);
      const warning = `prompt truncated to ${tokenizer.maxLength} tokens (CLIP's limit): ${full.length - tokenizer.maxLength} tokens dropped from "${p.slice(0, 40)}…"`;
      if (full.length > tokenizer.maxLength && !warnings.includes(warning)) warnings.push(warning);
      ids.set(tokenizer.encode(p).map(BigInt), i * tokenizer.maxLength);
    });
    return new ort.Tensor('int64', ids, [prompts.length, tokenizer.maxLength]);
  }

  /**
   * SD: the final hidden states. SDXL: both encoders' penultimate hidden states side by side
   * (768 + 1280 wide), plus text_encoder_2's projected pooled embedding.
   */
  private async encodePrompts(prompts: string[], warnings: string[]): Promise<Conditioning> {
    const first = await this.textEncoder.model.forward(this.textExec, this.tokenize(this.tokenizer, prompts, warnings));
    if (!this.xl) {
      const [, tokens, width] = first.lastHiddenState.dims;
      const context = await floats(first.lastHiddenState);
      this.textExec.freeOutputs();
      return { context, tokens, width };
    }
    const second = await this.xl.textEncoder2.model.forward(this.textExec2!, this.tokenize(this.xl.tokenizer2, prompts, warnings));
    const a = await floats(first.penultimateHiddenState);
    const b = await floats(second.penultimateHiddenState);
    const [, tokens, wa] = first.penultimateHiddenState.dims;
    const wb = second.penultimateHiddenState.dims[2];
    const context = new Float32Array(prompts.length * tokens * (wa + wb));
    for (let row = 0; row < prompts.length * tokens; row++) {
      context.set(a.subarray(row * wa, (row + 1) * wa), row * (wa + wb));
      context.set(b.subarray(row * wb, (row + 1) * wb), row * (wa + wb) + wa);
    }
    const pooled = await floats(second.textEmbeds!);
    this.textExec2!.freeOutputs();
    this.textExec.freeOutputs();
    return { context, tokens, width: wa + wb, pooled };
  }

  /** Runs after any generation already begun on this pipeline. */
  generate(request: GenerateRequest): Promise<GenerateResult> {
    return this.generations.run(() => this.generateNow(request), request.signal);
  }

  /**
   * Every refusal `generate` would make before its first model call (options, sizes, accelerations,
   * memory), made without running a model: the request's warnings, or the InputError. A sweep asks
   * this of every setting before it runs the first.
   */
  check(request: GenerateRequest): Promise<string[]> {
    return this.generations.run(async () => (await this.generateNow(request, true)).warnings);
  }

  private async generateNow(request: GenerateRequest, checksOnly: true): Promise<{ warnings: string[] }>;
  private async generateNow(request: GenerateRequest, checksOnly?: false): Promise<GenerateResult>;
  private async generateNow(request: GenerateRequest, checksOnly = false): Promise<GenerateResult | { warnings: string[] }> {
    checkRequestOptions(request, [...PROMPT_OPTIONS, ...(this.xl ? [...SD_OPTIONS, ...XL_OPTIONS] : SD_OPTIONS)], this.folder.className);
    const warnings: string[] = [];
    const prompts = list(request.prompt, 'prompt');
    const defaults = pipelineDefaults(this.folder.className);
    const steps = intOption(request.steps, defaults.steps, 'steps', 1, LIMITS.steps);
    const guidance = numberOption(request.guidanceScale, defaults.guidanceScale, 'guidanceScale', -LIMITS.guidanceScale, LIMITS.guidanceScale);
    const rescale = numberOption(request.guidanceRescale, 0, 'guidanceRescale', 0, 1);
    const perPrompt = intOption(request.imagesPerPrompt, 1, 'imagesPerPrompt', 1, LIMITS.imagesPerPrompt);
    const factor = this.vae.model.downsampleFactor;
    const img2img = img2imgOf(request);
    const fromImage = img2img && imageDefaultSize(img2img.image, factor);
    const width = intOption(request.width, fromImage?.width ?? this.defaultSize, 'width', 1, LIMITS.size);
    const height = intOption(request.height, fromImage?.height ?? this.defaultSize, 'height', 1, LIMITS.size);
    if (width % factor || height % factor) throw new InputError('width/height', `must be multiples of ${factor}`, undefined, `${width}x${height}`);
    const negatives = request.negativePrompt === undefined ? prompts.map(() => '') : list(request.negativePrompt, 'negativePrompt');
    if (negatives.length !== 1 && negatives.length !== prompts.length) {
      throw new InputError('negativePrompt', 'one negative prompt, or one per prompt', `1 or ${prompts.length}`, `${negatives.length}`);
    }
    const seed = seedOf(request.seed);
    // A guidance-distilled (LCM) U-Net takes the guidance scale as an embedding instead of CFG.
    const distilled = this.unet.model.config.timeCondProjDim;
    const cfg = guidance > 1 && distilled === null;
    // As in diffusers, the negative prompt and the guidance rescale are then unused; unlike diffusers, we say so.
    const noCfg = distilled === null ? `guidanceScale ${guidance} ≤ 1 turns classifier-free guidance off`
      : 'this U-Net is guidance-distilled (time_cond_proj_dim): guidanceScale goes in as an embedding, without classifier-free guidance';
    for (const option of ['negativePrompt', 'guidanceRescale'] as const) {
      if (!cfg && request[option] !== undefined) warnings.push(`${option} has no effect: ${noCfg}`);
    }
    const batch = prompts.length * perPrompt;
    const latentDims = [batch, this.unet.model.config.inChannels, height / factor, width / factor];
    checkLatents(request.latents, latentDims);
    // SDXL micro-conditioning (the same for the negative half, as diffusers does by default).
    const timeIds = [...pair(request.originalSize, 'originalSize', [height, width]), ...pair(request.cropTopLeft, 'cropTopLeft', [0, 0]),
      ...pair(request.targetSize, 'targetSize', [height, width])];
    const scheduler = folderScheduler(this.folder, request.scheduler, steps);

    // img2img runs the end of the schedule only, from position `start`.
    const { start, run, why } = scheduleStart(scheduler, img2img);

    // Refuse what cannot work before any work.
    // Schedules count the calls that run; PNDM makes one call more than steps.
    const acceleration = Acceleration.check(request.accel, this.unet.model.declaration, { ...run, halfFloats: await halfFloatsFor(request, this.unetExec) }, why, request.plans);
    warnings.push(...seedWarnings(request, scheduler, start));

    // Before any model runs: SDXL's pooled text embeddings are as wide as text_encoder_2's projection.
    const shapes = { batch: cfg ? 2 * batch : batch, latentHeight: latentDims[2], latentWidth: latentDims[3], textEmbedsDim: this.xl?.textEncoder2.model.textEmbedsWidth };
    const denoise = (exec: Executor<ShapedTensor>) => this.unet.model.forwardShapes(exec, shapes);
    await refuseOverMemory({ resident: [this.unet, this.vae, this.textEncoder, this.xl?.textEncoder2], denoise, vae: this.vae.model, latentDims,
      limit: request.memoryLimit, what: 'width/height', output: request.output, keptBytes: await acceleration.keptBytes(denoise, cfg) });
    warnings.push(...await acceleration.prepare(denoise));
    if (checksOnly) return { warnings };

    // Prompt embeddings, each repeated for its images; CFG puts the unconditional half first.
    let clock = performance.now();
    const repeat = (list: string[]) => list.flatMap((p) => new Array<string>(perPrompt).fill(p));
    const positive = await this.encodePrompts(repeat(prompts), warnings);
    let conditioning = positive;
    if (cfg) {
      const zeros = this.xl?.forceZerosForEmptyPrompt && request.negativePrompt === undefined;
      const negative: Conditioning = zeros
        ? { ...positive, context: new Float32Array(positive.context.length), pooled: new Float32Array(positive.pooled!.length) }
        : await this.encodePrompts(repeat(negatives.length === 1 ? prompts.map(() => negatives[0]) : negatives), warnings);
      conditioning = {
        ...positive,
        context: concat(negative.context, positive.context),
        pooled: positive.pooled && concat(negative.pooled!, positive.pooled),
      };
    }
    const textEncoding = seconds(clock);
    // LCM's guidance embedding of (guidanceScale − 1), the same for every row, as diffusers' get_guidance_scale_embedding.
    const guidanceEmbedding = distilled === null ? undefined : guidanceScaleEmbedding(guidance - 1, distilled);
    const unetInputs = (c: Conditioning, rows: number) => ({
      context: new ort.Tensor('float32', c.context, [rows, c.tokens, c.width]),
      added: c.pooled || guidanceEmbedding ? {
        ...(c.pooled ? {
          textEmbeds: new ort.Tensor('float32', c.pooled, [rows, c.pooled.length / rows]),
          timeIds: new ort.Tensor('float32', new Float32Array(rows * 6).map((_, i) => timeIds[i % 6]), [rows, 6]),
        } : {}),
        ...(guidanceEmbedding ? { timestepCond: new ort.Tensor('float32', new Float32Array(rows * distilled!).map((_, i) => guidanceEmbedding[i % distilled!]), [rows, distilled!]) } : {}),
      } : undefined,
    });
    // With CFG the U-Net sees [uncond; cond]; an accelerator may drop to the conditional half alone.
    const cfgInputs = cfg ? unetInputs(conditioning, 2 * batch) : undefined;
    const singleInputs = unetInputs(positive, batch);
    acceleration.begin(this.unetExec);
    // Cross-attention keys/values depend on the prompt only: computed once per context (lossless).
    const crossKV = new Map<ort.Tensor, CrossAttentionKV<ort.Tensor>>();
    const keysFor = async (context: ort.Tensor) => {
      let kv = crossKV.get(context);
      if (!kv) crossKV.set(context, (kv = await this.unet.model.crossAttentionKV(this.unetExec, context)));
      return kv;
    };

    const noise = new BatchNoise(seed, batch);
    const size = latentDims.reduce((a, b) => a * b, 1);
    clock = performance.now();
    let latents = await startingLatents({ img2img, given: request.latents, dims: latentDims, scheduler, start, noise, vae: this.vae.model, vaeExec: this.vaeExec, width, height });
    const imageEncoding = seconds(clock);

    clock = performance.now();
    const macsBefore = { ...this.unetExec.macsSpent };
    const transfersBefore = { ...transfers };
    let state = scheduler.beginState(start);
    for (let i = start; i < scheduler.timesteps.length; i++) {
      checkAborted(request.signal);
      const stepStart = performance.now();
      const now = acceleration.call(i - start, cfg, this.unetExec);
      const cfgNow = now.cfg;
      const modelBatch = cfgNow ? 2 * batch : batch;
      const { context, added } = cfgNow ? cfgInputs! : singleInputs;
      const scaled = scheduler.scaleModelInput(cfgNow ? concat(latents, latents) : latents, i);
      const t = scheduler.timesteps[i];
      const out = await this.unet.model.forward(now.exec,
        new ort.Tensor('float32', scaled, [modelBatch, ...latentDims.slice(1)]),
        new ort.Tensor('float32', new Float32Array(modelBatch).fill(t), [modelBatch]),
        context, added, await keysFor(context));
      const prediction = await floats(out);
      acceleration.endCall(this.unetExec, keyValueTensors(crossKV));
      const guided = cfgNow ? guide(prediction, size, guidance, rescale, batch) : prediction;
      const stepNoise = scheduler.needsNoise(i) ? noise.draw(size) : undefined;
      ({ prevSample: latents, state } = scheduler.step(state, guided, i, latents, stepNoise));
      request.onStep?.({ step: i - start + 1, steps: run.calls, timestep: t, seconds: seconds(stepStart) });
    }
    const denoising = seconds(clock);
    const denoisingTransfers = transfersSince(transfersBefore);

    clock = performance.now();
    const images = (request.output ?? 'image') === 'image' ? await decodeImages(this.vae.model, this.vaeExec, latents, latentDims) : [];
    const decoding = seconds(clock);
    return {
      latents: { data: latents, dims: latentDims },
      images,
      seed,
      seeds: noise.seeds,
      steps,
      guidanceScale: guidance,
      scheduler: scheduler.name,
      accel: acceleration.report(),
      denoiserMacs: macsSince(this.unetExec, macsBefore),
      denoisingTransfers,
      keptOnDevice: acceleration.keptOnDevice,
      timings: { textEncoding, ...(img2img ? { imageEncoding } : {}), denoising, decoding },
      warnings,
    };
  }

  async release(): Promise<void> {
    await this.generations.release();
    try {
      await Promise.all([this.unetExec.release(), this.vaeExec.release(), this.textExec.release(), this.textExec2?.release()]);
    } finally {
      for (const c of [this.unet, this.vae, this.textEncoder, this.xl?.textEncoder2]) c?.weights.close();
    }
  }
}

const PIPELINES = pipelineClasses('stable-diffusion');
/** SDXL's micro-conditioning options, read only where the folder is an SDXL one. */
const XL_OPTIONS = ['originalSize', 'targetSize', 'cropTopLeft'] as const satisfies readonly (keyof GenerateRequest)[];
/** The options of every Stable Diffusion request beyond a text-to-image one's. */
const SD_OPTIONS = optionNames<Omit<GenerateRequest, (typeof XL_OPTIONS)[number]>, PromptRequest>({ guidanceRescale: true });

/** An SDXL micro-conditioning option: two finite numbers, or `fallback` when absent. */
function pair(value: unknown, option: string, fallback: [number, number]): number[] {
  if (value === undefined) return fallback;
  if (!Array.isArray(value) || value.length !== 2 || !value.every((v) => typeof v === 'number' && Number.isFinite(v))) {
    throw new InputError(option, 'wrong value', 'a pair of finite numbers, e.g. [1024, 1024]', describe(value));
  }
  return value;
}

/**
 * diffusers' get_guidance_scale_embedding in float32: sin and cos of (1000·w) times `dim`/2
 * frequencies from 1 down to 1/10000 (zero-padded to an odd width).
 */
export function guidanceScaleEmbedding(w: number, dim: number): Float32Array {
  const f32 = Math.fround;
  const half = Math.floor(dim / 2);
  const step = f32(f32(Math.log(10000)) / (half - 1));
  const scaled = f32(f32(w) * 1000);
  const out = new Float32Array(dim);
  for (let k = 0; k < half; k++) {
    const x = f32(scaled * f32(Math.exp(f32(k * -step))));
    out[k] = Math.sin(x);
    out[half + k] = Math.cos(x);
  }
  return out;
}

/**
 * Opens a Stable Diffusion 1.x / 2.x (StableDiffusionPipeline), SDXL (StableDiffusionXLPipeline) or
 * LCM-distilled (LatentConsistencyModelPipeline) folder; "reference" is the embedded reference model.
 * Any of them may hold a guidance-distilled U-Net (time_cond_proj_dim), as LCM-SDXL does.
 */
export async function loadPipeline(dir: string, options: PipelineOptions = {}): Promise<StableDiffusionPipeline> {
  checkLoadOptions(options, ['variant']);
  const folder = readPipelineFolder(modelFolder(dir));
  if (!PIPELINES.includes(folder.className)) {
    throw new InputError(`${folder.dir}/model_index.json: _class_name`, 'unsupported pipeline', PIPELINES.join(' or '), folder.className);
  }
  const load = { variant: options.variant };
  return closingOnFailure((track) => {
    const unet = track(loadUNet(folder, load));
    const vae = track(loadVae(folder, load));
    const textEncoder = track(loadTextEncoder(folder, 'text_encoder', load));
    const tokenizer = ClipTokenizer.fromFolder(getComponent(folder, 'tokenizer').dir);
    let xl: XlParts | undefined;
    if (folder.className === 'StableDiffusionXLPipeline') {
      const textEncoder2 = track(loadTextEncoder(folder, 'text_encoder_2', load));
      if (!textEncoder2.model.hasProjection) {
        throw new InputError(`${folder.dir}/model_index.json: text_encoder_2`, 'SDXL needs the projected pooled embedding', 'CLIPTextModelWithProjection', 'CLIPTextModel');
      }
      xl = {
        textEncoder2,
        tokenizer2: ClipTokenizer.fromFolder(getComponent(folder, 'tokenizer_2').dir),
        forceZerosForEmptyPrompt: folder.options.force_zeros_for_empty_prompt !== false,
      };
    }
    return new StableDiffusionPipeline(folder, unet, vae, textEncoder, tokenizer, options, xl);
  });
}
