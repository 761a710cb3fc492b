/**
 * Class-to-image for DiT folders, step for step as diffusers' DiTPipeline: class ids (or names
 * through model_index.json's id2label), classifier-free guidance against the null class with the
 * batch ordered [conditional; unconditional] and guidance on the noise channels only (the first 3
 * of them for the authors' DiT / Skip-DiT checkpoints, as their forward_with_cfg does), the learned
 * variance dropped before the scheduler step, VAE decode. Two diffusers quirks are kept, as they
 * change images only with schedulers that scale their input (Euler): the starting latents are not
 * multiplied by the initial sigma, and each step starts from the scaled model input.
 */
import * as ort from 'onnxruntime-node';
import { InputError, checkAborted } from '../errors.ts';
import type { AutoencoderKL } from '../models/autoencoder-kl.ts';
import { closingOnFailure, loadTransformer, loadVae, type LoadedComponent } from '../models/components.ts';
import { DiTTransformer2DModel } from '../models/dit-transformer-2d.ts';
import { OfficialDiT } from '../models/official-dit.ts';
import type { Executor, ShapedTensor } from '../runtime/executor.ts';
import { checkLoadOptions, OrtExecutor, withFullPrecision, type RuntimeOptions, transfers, transfersSince } from '../runtime/ort-executor.ts';
import { labelTable, type PipelineFolder } from '../weights/diffusers-folder.ts';
import {
  Acceleration, Generations, halfFloatsFor, BASE_OPTIONS, BatchNoise, checkLatents, checkRequestOptions, folderScheduler, optionNames, seedWarnings, concat, decodeImages, floats, intOption, LIMITS, macsSince, numberOption, seconds, seedOf, type BaseRequest,
  type GenerationResult,
} from './common.ts';
import { pipelineDefaults } from './families.ts';
import { scheduleStart } from './img2img.ts';
import { refuseOverMemory } from './memory.ts';

export interface DiTRequest extends BaseRequest {
  /** Class ids, or names from the folder's id2label; one image per label. */
  classLabels: (number | string)[];
}

export interface DiTResult extends GenerationResult {
  /** The class ids generated, in order. */
  classIds: number[];
  /**
   * Latent channels guidance applies to: all of them for diffusers folders (DiTPipeline), the first
   * 3 for the authors' checkpoints, as their forward_with_cfg does.
   */
  guidedChannels: number;
}

export class DiTPipeline {
  private readonly transformerExec: OrtExecutor;
  private readonly vaeExec: OrtExecutor;
  private readonly generations: Generations;
  readonly labels: Map<string, number>;

  constructor(
    readonly folder: PipelineFolder,
    readonly transformer: LoadedComponent<DiTTransformer2DModel | OfficialDiT>,
    readonly vae: LoadedComponent<AutoencoderKL>,
    options: RuntimeOptions,
  ) {
    this.transformerExec = new OrtExecutor(transformer.params, options);
    this.vaeExec = new OrtExecutor(vae.params, withFullPrecision(options));
    this.generations = new Generations([this.transformerExec, this.vaeExec]);
    const index = `${folder.dir}/model_index.json`;
    this.labels = folder.options.id2label === undefined ? new Map() : labelTable(folder.options.id2label, index);
  }

  /** Class ids for ids or names, each checked against the model's classes. */
  classIds(labels: (number | string)[]): number[] {
    const classes = this.transformer.model.config.numClasses;
    if (!Array.isArray(labels) || labels.length === 0) throw new InputError('classLabels', 'no class given', 'class ids or names, e.g. 207,360');
    return labels.map((label) => {
      if (typeof label === 'number') {
        if (!Number.isInteger(label) || label < 0 || label >= classes) throw new InputError('classLabels', 'class id out of range', `an integer in [0, ${classes})`, `${label}`);
        return label;
      }
      const id = this.labels.get(String(label).trim());
      if (id === undefined) {
        const known = [...this.labels.keys()];
        throw new InputError('classLabels', `unknown class name${known.length ? '' : ' (this folder has no id2label in model_index.json: give class ids)'}`,
          known.length ? `a name from model_index.json's id2label, e.g. ${known.slice(0, 3).map((n) => `"${n}"`).join(', ')}` : 'a class id', JSON.stringify(label));
      }
      return id;
    });
  }

  /** Runs after any generation already begun on this pipeline. */
  generate(request: DiTRequest): Promise<DiTResult> {
    return this.generations.run(() => this.generateNow(request), request.signal);
  }

  /**
   * Every refusal `generate` would make before its first model call (options, sizes, accelerations,
   * memory), made without running a model: the request's warnings, or the InputError. A sweep asks
   * this of every setting before it runs the first.
   */
  check(request: DiTRequest): Promise<string[]> {
    return this.generations.run(async () => (await this.generateNow(request, true)).warnings);
  }

  private async generateNow(request: DiTRequest, checksOnly: true): Promise<{ warnings: string[] }>;
  private async generateNow(request: DiTRequest, checksOnly?: false): Promise<DiTResult>;
  private async generateNow(request: DiTRequest, checksOnly = false): Promise<DiTResult | { warnings: string[] }> {
    checkRequestOptions(request, [...BASE_OPTIONS, ...optionNames<DiTRequest, BaseRequest>({ classLabels: true })], this.folder.className);
    const model = this.transformer.model;
    const c = model.config;
    const ids = this.classIds(request.classLabels);
    const defaults = pipelineDefaults(this.folder.className);
    const steps = intOption(request.steps, defaults.steps, 'steps', 1, LIMITS.steps);
    const guidance = numberOption(request.guidanceScale, defaults.guidanceScale, 'guidanceScale', -LIMITS.guidanceScale, LIMITS.guidanceScale);
    const seed = seedOf(request.seed);
    const cfg = guidance > 1;
    const batch = ids.length;
    const latentDims = [batch, c.inChannels, c.sampleSize, c.sampleSize];
    checkLatents(request.latents, latentDims);
    const scheduler = folderScheduler(this.folder, request.scheduler, steps);
    const acceleration = Acceleration.check(request.accel, model.declaration,
      { ...scheduleStart(scheduler, undefined).run, halfFloats: await halfFloatsFor(request, this.transformerExec) }, undefined, request.plans);
    const denoise = (exec: Executor<ShapedTensor>) => model.forwardShapes(exec, { batch: cfg ? 2 * batch : batch, latentHeight: c.sampleSize, latentWidth: c.sampleSize });
    await refuseOverMemory({ resident: [this.transformer, this.vae], denoise, vae: this.vae.model, latentDims, limit: request.memoryLimit, what: 'classLabels', output: request.output,
      keptBytes: await acceleration.keptBytes(denoise, cfg) });
    const warnings = [...seedWarnings(request, scheduler), ...await acceleration.prepare(denoise)];
    if (checksOnly) return { warnings };
    acceleration.begin(this.transformerExec);

    const noise = new BatchNoise(seed, batch);
    const size = latentDims.reduce((a, b) => a * b, 1);
    let latents = request.latents ? Float32Array.from(request.latents.data) : noise.draw(size);
    // [conditional; null class] with CFG, as diffusers orders it.
    const labels = (rows: number) => new ort.Tensor('int64', BigInt64Array.from({ length: rows }, (_, i) => BigInt(i < batch ? ids[i] : c.numClasses)), [rows]);
    const plane = size / batch;
    const guidedChannels = model instanceof OfficialDiT ? OFFICIAL_GUIDED_CHANNELS : c.inChannels;
    const guided = (plane / c.inChannels) * guidedChannels;
    const start = performance.now();
    const macsBefore = { ...this.transformerExec.macsSpent };
    const transfersBefore = { ...transfers };
    let state = scheduler.initialState;
    for (let i = 0; i < scheduler.timesteps.length; i++) {
      checkAborted(request.signal);
      const stepStart = performance.now();
      const now = acceleration.call(i, cfg, this.transformerExec);
      const rows = now.cfg ? 2 * batch : batch;
      const t = scheduler.timesteps[i];
      const input = scheduler.scaleModelInput(now.cfg ? concat(latents, latents) : latents, i);
      const out = await floats(await model.forward(now.exec, new ort.Tensor('float32', input, [rows, ...latentDims.slice(1)]),
        new ort.Tensor('float32', new Float32Array(rows).fill(t), [rows]), labels(rows)));
      acceleration.endCall(this.transformerExec);
      // The noise channels of each image (the learned variance follows them), guided against its null-class row.
      const perRow = out.length / rows;
      const eps = new Float32Array(size);
      for (let b = 0; b < batch; b++) {
        const cond = out.subarray(b * perRow, b * perRow + plane);
        if (!now.cfg) {
          eps.set(cond, b * plane);
          continue;
        }
        const uncond = out.subarray((batch + b) * perRow, (batch + b) * perRow + plane);
        for (let k = 0; k < plane; k++) eps[b * plane + k] = k < guided ? uncond[k] + guidance * (cond[k] - uncond[k]) : cond[k];
      }
      const stepNoise = scheduler.needsNoise(i) ? noise.draw(size) : undefined;
      ({ prevSample: latents, state } = scheduler.step(state, eps, i, input.subarray(0, size), stepNoise));
      request.onStep?.({ step: i + 1, steps: scheduler.timesteps.length, timestep: t, seconds: seconds(stepStart) });
    }
    const denoising = seconds(start);
    const denoisingTransfers = transfersSince(transfersBefore);
    const decodeStart = performance.now();
    const images = (request.output ?? 'image') === 'image' ? await decodeImages(this.vae.model, this.vaeExec, latents, latentDims) : [];
    return {
      latents: { data: latents, dims: latentDims },
      images,
      classIds: ids,
      seed,
      seeds: noise.seeds,
      steps,
      guidanceScale: guidance,
      scheduler: scheduler.name,
      accel: acceleration.report(),
      guidedChannels,
      denoiserMacs: macsSince(this.transformerExec, macsBefore),
      denoisingTransfers,
      keptOnDevice: acceleration.keptOnDevice,
      timings: { denoising, decoding: seconds(decodeStart) },
      warnings,
    };
  }

  async release(): Promise<void> {
    await this.generations.release();
    try {
      await Promise.all([this.transformerExec.release(), this.vaeExec.release()]);
    } finally {
      for (const component of [this.transformer, this.vae]) component.weights.close();
    }
  }
}

/** The authors' forward_with_cfg guides channels 0–2 only ("for exact reproducibility"). */
const OFFICIAL_GUIDED_CHANNELS = 3;

/** Opens a DiTPipeline folder (the caller has read its model_index.json). */
export function loadDiTPipeline(folder: PipelineFolder, options: RuntimeOptions & { variant?: string } = {}): DiTPipeline {
  checkLoadOptions(options, ['variant']);
  if (folder.className !== 'DiTPipeline') {
    throw new InputError(`${folder.dir}/model_index.json: _class_name`, 'not a DiT pipeline', 'DiTPipeline', folder.className);
  }
  if (!folder.components.vae) {
    throw new InputError(`${folder.dir}/model_index.json: vae`, 'missing: this folder cannot decode images', 'a VAE component (diffuse convert … --vae DIR copies one in)');
  }
  const load = { variant: options.variant };
  return closingOnFailure((track) => {
    const transformer = track(loadTransformer(folder, load));
    if (!(transformer.model instanceof DiTTransformer2DModel || transformer.model instanceof OfficialDiT)) {
      throw new InputError(`${transformer.configFile}: norm_type`, 'a DiTPipeline needs a class-conditional DiT', '"ada_norm_zero"', 'a PixArt transformer (ada_norm_single)');
    }
    return new DiTPipeline(folder, transformer as LoadedComponent<DiTTransformer2DModel | OfficialDiT>, track(loadVae(folder, load)), options);
  });
}
