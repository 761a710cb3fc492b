/**
 * One way for the benchmarks to generate with any pipeline family a folder holds: Stable Diffusion
 * (and LCM), PixArt (at the size asked, no resolution binning) or DiT (the class the prompt names in
 * the folder's id2label; for a prompt that names none, class ids spread over its classes, one per image).
 */
import type { AccelSpec } from '../accel/index.ts';
import type { Accelerator } from '../runtime/plan.ts';
import type { RuntimeOptions } from '../runtime/ort-executor.ts';
import type { GenerationResult } from '../pipelines/common.ts';
import { folderFamily } from '../pipelines/families.ts';
import { loadDiTPipeline } from '../pipelines/dit.ts';
import { loadPixArtPipeline } from '../pipelines/pixart.ts';
import { loadPipeline } from '../pipelines/stable-diffusion.ts';
import type { SchedulerName } from '../schedulers/index.ts';
import { readPipelineFolder } from '../weights/diffusers-folder.ts';
import { residentBytes } from '../pipelines/memory.ts';
import { totalMemory } from '../io/files.ts';

export interface BenchRequest {
  prompt: string;
  steps: number;
  guidanceScale: number;
  seed: number;
  width: number;
  height: number;
  /** Images per run. */
  batch: number;
  scheduler?: SchedulerName;
  accel?: AccelSpec[];
  /** Plans written in code, composed after `accel` (e.g. TeaCache's calibration recorder). */
  plans?: Accelerator[];
  /** DiT: the class ids to generate; default: `batch` ids spread over the classes. */
  classLabels?: number[];
  /** 'latent' skips VAE decoding (no images then). */
  output?: 'image' | 'latent';
  /** Bytes the run may take at its peak (default: this machine's memory); less where another runner is held too (heldBeside). */
  memoryLimit?: number;
}

/** What a bench run reads of a generation; denoiserMacs is what adaptive methods, deciding at run time, really spent. */
export type BenchResult = Pick<GenerationResult, 'latents' | 'images' | 'scheduler' | 'accel' | 'denoiserMacs' | 'timings' | 'warnings'>;

export interface BenchRunner {
  /** What it generates: "text-to-image" or "class-to-image". */
  kind: string;
  defaultSize: number;
  /** A DiT's size is fixed by its configuration. */
  fixedSize?: number;
  /** Whether a prompt conditions the image (a DiT uses it only where it names a class). */
  usesPrompt(prompt: string): boolean;
  /**
   * DiT, for a prompt that names no class: the class of sample `index` of `count`, spread over its
   * classes (undefined where the prompt names one, or the model takes text).
   */
  spreadClass?(prompt: string, index: number, count: number): number[] | undefined;
  run(request: BenchRequest): Promise<BenchResult>;
  /** The refusals `run` would make before its first model call (memory included), without running a model: its warnings, or the InputError. */
  check(request: BenchRequest): Promise<string[]>;
  /** Float32 bytes of the weights its sessions keep once they have run. */
  residentBytes: number;
  release(): Promise<void>;
}

/** Opens a folder's pipeline (on `options.device`, default the CPU; `options.precision` the denoiser's arithmetic, default fp32). */
export async function openRunner(model: string, options: RuntimeOptions = {}): Promise<BenchRunner> {
  const folder = readPipelineFolder(model);
  const family = folderFamily(folder);
  if (family === 'dit') {
    const dit = loadDiTPipeline(folder, options);
    const c = dit.transformer.model.config;
    const size = c.sampleSize * dit.vae.model.downsampleFactor;
    const spread = (index: number, count: number) => Math.floor((index * c.numClasses) / count);
    const classes = (r: BenchRequest) => {
      const named = dit.labels.get(r.prompt);
      return Array.from({ length: r.batch }, (_, i) => named ?? spread(i, r.batch));
    };
    const request = (r: BenchRequest) => ({ classLabels: r.classLabels ?? classes(r), steps: r.steps, guidanceScale: r.guidanceScale, seed: r.seed, scheduler: r.scheduler,
      accel: r.accel, plans: r.plans, output: r.output, memoryLimit: r.memoryLimit });
    return {
      kind: 'class-to-image', defaultSize: size, fixedSize: size, usesPrompt: (prompt) => dit.labels.has(prompt),
      spreadClass: (prompt, index, count) => (dit.labels.has(prompt) ? undefined : [spread(index, count)]),
      run: (r) => dit.generate(request(r)),
      check: (r) => dit.check(request(r)),
      residentBytes: residentBytes([dit.transformer, dit.vae]),
      release: () => dit.release(),
    };
  }
  if (family === 'pixart') {
    const pixart = loadPixArtPipeline(folder, options);
    const request = (r: BenchRequest) => ({ prompt: r.prompt, steps: r.steps, guidanceScale: r.guidanceScale, seed: r.seed, width: r.width, height: r.height,
      imagesPerPrompt: r.batch, scheduler: r.scheduler, accel: r.accel, plans: r.plans, output: r.output, resolutionBinning: false, memoryLimit: r.memoryLimit });
    return {
      kind: 'text-to-image', defaultSize: pixart.defaultSize, usesPrompt: () => true,
      run: (r) => pixart.generate(request(r)),
      check: (r) => pixart.check(request(r)),
      residentBytes: residentBytes([pixart.transformer, pixart.textEncoder, pixart.vae]),
      release: () => pixart.release(),
    };
  }
  const sd = await loadPipeline(folder.dir, options);
  const request = (r: BenchRequest) => ({ prompt: r.prompt, steps: r.steps, guidanceScale: r.guidanceScale, seed: r.seed, width: r.width, height: r.height,
    imagesPerPrompt: r.batch, scheduler: r.scheduler, accel: r.accel, plans: r.plans, output: r.output, memoryLimit: r.memoryLimit });
  return {
    kind: 'text-to-image', defaultSize: sd.defaultSize, usesPrompt: () => true,
    run: (r) => sd.generate(request(r)),
    check: (r) => sd.check(request(r)),
    residentBytes: residentBytes([sd.unet, sd.vae, sd.textEncoder, sd.xl?.textEncoder2]),
    release: () => sd.release(),
  };
}

/**
 * The memory a run on one runner may take while `others` are held beside it (bench's fp32 and
 * reduced-precision pipelines, tune's per precision): `limit` (default this machine's), less their weights.
 */
export function heldBeside(others: BenchRunner[], limit?: number): number | undefined {
  // At least a byte: a run that cannot fit is then refused for its size, not for a limit the user never set.
  return others.length === 0 ? limit : Math.max(1, (limit ?? totalMemory()) - others.reduce((sum, r) => sum + r.residentBytes, 0));
}
