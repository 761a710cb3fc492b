/**
 * `diffuse generate`: images from a diffusers folder to PNG files — text-to-image for Stable
 * Diffusion 1.x/2.x/XL and PixArt-α/Σ, class-to-image for DiT. Every flag is checked before any
 * work starts (flags the folder's pipeline cannot use are refused by name); outputs are written to
 * a temporary name and renamed, so a failed or interrupted run leaves no half-written file.
 */
import { commandSessionCache } from '../runtime/session-cache.ts';
import * as path from 'node:path';
import { SingleBar } from 'cli-progress';
import { InputError, Interrupted } from '../errors.ts';
import { formatAccelSpec, type AccelSpec } from '../accel/index.ts';
import { withFlagNames } from './flag-names.ts';
import { encodePng } from '../image/png.ts';
import { formatParameters } from '../image/parameters.ts';
import { LIMITS, folderScheduler, seedWarnings, type GeneratedImage, type GenerationResult, type Latents, type StepInfo } from '../pipelines/common.ts';
import { folderFamily, pipelineDefaults, type PipelineFamily } from '../pipelines/families.ts';
import { loadPipeline } from '../pipelines/stable-diffusion.ts';
import { modelFolder } from '../pipelines/reference-model.ts';
import { isCheckpointFile, modelName } from '../pipelines/model-name.ts';
import { readPromptFile } from '../scenes/captions.ts';
import { readImage } from '../image/read.ts';
import { convertedFolder } from '../models/official-dit-checkpoint.ts';
import { DEFAULT_STRENGTH } from '../pipelines/img2img.ts';
import { readPipelineFolder, type PipelineFolder } from '../weights/diffusers-folder.ts';
import { describeTransfers, type Device } from '../runtime/ort-executor.ts';
import type { SchedulerName } from '../schedulers/index.ts';
import { checkOutputFile, writeFileAtomically } from '../util/files.ts';
import { SafetensorsFile } from '../weights/safetensors.ts';
import type { Precision } from '../graph/quantize.ts';
import { writeSafetensors } from '../weights/safetensors-write.ts';
import { gibBytes } from '../pipelines/memory.ts';

export interface GenerateFlags {
  model?: string;
  prompt?: string;
  /** A file of prompts, one per line. */
  prompts?: string;
  negativePrompt?: string;
  steps?: number;
  guidance?: number;
  guidanceRescale?: number;
  scheduler?: SchedulerName;
  /** One run per seed. */
  seed?: number[];
  width?: number;
  height?: number;
  /** --size WxH: the same as --width and --height. */
  size?: [number, number];
  batch?: number;
  /** img2img: a PNG or JPEG to start from. */
  initImage?: string;
  strength?: number;
  latents?: string;
  saveLatents?: string;
  out: string;
  device: Device;
  threads?: number;
  /** GiB. */
  memoryLimit?: number;
  variant?: string;
  precision: Precision;
  accel: AccelSpec[];
  quiet: boolean;
  /** DiT: class ids or names, comma-separated. */
  class?: string;
  /** PixArt: T5 tokens per prompt. */
  maxSequenceLength?: number;
  /** PixArt: generate at the nearest trained size (default as diffusers: on). */
  resolutionBinning?: boolean;
  /** A DiT / Skip-DiT .pt as --model: its architecture, head count and VAE (as `diffuse convert` takes them). */
  arch?: string;
  numHeads?: number;
  vae?: string;
}

/** The flags only some families take. */
const ONLY: [keyof GenerateFlags, string, PipelineFamily[]][] = [
  ['prompt', '--prompt', ['stable-diffusion', 'pixart']],
  ['prompts', '--prompts', ['stable-diffusion', 'pixart']],
  ['negativePrompt', '--negative-prompt', ['stable-diffusion', 'pixart']],
  ['guidanceRescale', '--guidance-rescale', ['stable-diffusion']],
  ['width', '--width', ['stable-diffusion', 'pixart']],
  ['size', '--size', ['stable-diffusion', 'pixart']],
  ['height', '--height', ['stable-diffusion', 'pixart']],
  ['batch', '--batch', ['stable-diffusion', 'pixart']],
  ['initImage', '--init-image', ['stable-diffusion', 'pixart']],
  ['strength', '--strength', ['stable-diffusion', 'pixart']],
  ['class', '--class', ['dit']],
  ['maxSequenceLength', '--max-sequence-length', ['pixart']],
  ['resolutionBinning', '--resolution-binning / --no-resolution-binning', ['pixart']],
];

/** What every family's generation gives back; DiT's also says which latent channels guidance applies to. */
type Generated = GenerationResult & { guidedChannels?: number };

/** The folder's pipeline family, after checking that every given flag applies to it. */
function familyOf(folder: PipelineFolder, f: GenerateFlags): PipelineFamily {
  const family = folderFamily(folder);
  for (const [key, flag, families] of ONLY) {
    if (f[key] !== undefined && !families.includes(family)) {
      throw new InputError(flag, `does not apply to a ${folder.className}`, family === 'dit' ? '--class for DiT (class-conditional)' : 'no such flag', String(f[key]));
    }
  }
  if (f.prompt !== undefined && f.prompts !== undefined) throw new InputError('--prompts', 'given with --prompt', 'one of them', f.prompts);
  if (family === 'dit' ? f.class === undefined : f.prompt === undefined && f.prompts === undefined) {
    throw new InputError(family === 'dit' ? '--class' : '--prompt', family === 'dit' ? 'no class given' : 'no prompt given',
      family === 'dit' ? 'class ids or names, e.g. 207,360' : 'some text');
  }
  return family;
}

/** `--class 207,golden retriever`: ids stay numbers, anything else is a name. */
function classLabels(text: string): (number | string)[] {
  const labels = text.split(',').map((l) => l.trim()).filter((l) => l !== '');
  if (labels.length === 0) throw new InputError('--class', 'no class given', 'class ids or names, e.g. 207,360', JSON.stringify(text));
  return labels.map((l) => (/^\d+$/.test(l) ? Number(l) : l));
}

/** Reads `--latents`: a safetensors file with one F32 tensor named `latents`, [B, C, h, w]. */
export function readLatentsFile(file: string): Latents {
  const st = SafetensorsFile.open(file);
  try {
    const info = st.tensors.get('latents');
    if (!info) throw new InputError(file, 'no tensor named "latents"', 'one F32 tensor "latents" [B, C, h, w]', [...st.tensors.keys()].join(', ') || 'no tensors');
    if (info.dtype !== 'F32' || info.shape.length !== 4) {
      throw new InputError(`${file}: latents`, 'wrong tensor', 'F32 of rank 4 [B, C, h, w]', `${info.dtype} [${info.shape.join(', ')}]`);
    }
    return { data: st.readFloat32('latents'), dims: info.shape };
  } finally {
    st.close();
  }
}

/** Output file names: FILE.png for one image, FILE-0.png, FILE-1.png, ... for several. */
export function outputNames(out: string, count: number): string[] {
  if (count === 1) return [out];
  const ext = path.extname(out);
  const stem = out.slice(0, out.length - ext.length);
  return Array.from({ length: count }, (_, i) => `${stem}-${i}${ext}`);
}

function checkFlags(f: GenerateFlags): Device {
  if (f.size) {
    if (f.width !== undefined || f.height !== undefined) throw new InputError('--size', 'given with --width/--height', 'one of them', `${f.size[0]}x${f.size[1]}`);
    [f.width, f.height] = f.size;
    f.size = undefined;
  }
  if (f.strength !== undefined && f.initImage === undefined) throw new InputError('--strength', 'is for img2img', '--init-image with it', String(f.strength));
  if (f.latents !== undefined && f.initImage !== undefined) throw new InputError('--latents', 'given with --init-image (the image gives the starting latents)', 'one of them', f.latents);
  if (path.extname(f.out).toLowerCase() !== '.png') throw new InputError('--out', 'output must be a PNG file', 'a name ending in .png', f.out);
  return f.device;
}

/** Every file the run will write, checked before any work starts. */
function checkOutputs(f: GenerateFlags, family: PipelineFamily, subjects: string[]): string[] {
  const perRun = family === 'dit' ? subjects.length : subjects.length * (f.batch ?? 1);
  const names = outputNames(f.out, perRun * (f.seed?.length ?? 1));
  for (const name of names) checkOutputFile(name, '--out');
  if (f.saveLatents) checkOutputFile(f.saveLatents, '--save-latents');
  if (f.saveLatents && (f.seed?.length ?? 1) > 1) throw new InputError('--save-latents', 'keeps the latents of one run', 'one --seed', `${f.seed!.length} seeds`);
  return names;
}

/** The folder --model names: the embedded model, a diffusers folder, or a DiT / Skip-DiT .pt converted once (with --arch/--num-heads/--vae). */
function modelDir(f: GenerateFlags): string {
  const checkpoint = f.model !== undefined && isCheckpointFile(f.model);
  for (const [value, flag] of [[f.arch, '--arch'], [f.numHeads, '--num-heads'], [f.vae, '--vae']] as const) {
    if (value !== undefined && !checkpoint) throw new InputError(flag, 'is for a DiT / Skip-DiT checkpoint given as --model FILE.pt', '--model FILE.pt with it', String(value));
  }
  return checkpoint ? convertedFolder(f.model!, { arch: f.arch, numHeads: f.numHeads, vae: f.vae }) : modelFolder(f.model);
}

/** Starts the generation the folder's family does, with the flags that apply to it. */
async function start(folder: PipelineFolder, family: PipelineFamily, f: GenerateFlags, device: Device, latents: Latents | undefined, image: GeneratedImage | undefined,
  onStep: (s: StepInfo) => void, signal: AbortSignal, prompts: string[]): Promise<{ run: (seed?: number) => Promise<Generated>; release: () => Promise<void> }> {
  const runtime = { device, threads: f.threads, variant: f.variant, precision: f.precision, sessionCache: commandSessionCache() };
  const common = { steps: f.steps, guidanceScale: f.guidance, scheduler: f.scheduler, latents, accel: f.accel, onStep, signal, memoryLimit: gibBytes(f.memoryLimit) };
  // Each family's pipeline is imported when used: a Stable Diffusion run need not load T5 and the transformers (a faster start).
  if (family === 'dit') {
    const { loadDiTPipeline } = await import('../pipelines/dit.ts');
    const pipeline = loadDiTPipeline(folder, runtime);
    return { run: (seed) => pipeline.generate({ ...common, seed, classLabels: classLabels(f.class!) }), release: () => pipeline.release() };
  }
  const text = { ...common, prompt: prompts, negativePrompt: f.negativePrompt, width: f.width, height: f.height, imagesPerPrompt: f.batch, image, strength: f.strength };
  if (family === 'pixart') {
    const { loadPixArtPipeline } = await import('../pipelines/pixart.ts');
    const pipeline = loadPixArtPipeline(folder, runtime);
    return {
      run: (seed) => pipeline.generate({ ...text, seed, maxSequenceLength: f.maxSequenceLength, resolutionBinning: f.resolutionBinning }),
      release: () => pipeline.release(),
    };
  }
  const pipeline = await loadPipeline(folder.dir, runtime);
  return { run: (seed) => pipeline.generate({ ...text, seed, guidanceRescale: f.guidanceRescale }), release: () => pipeline.release() };
}

/** A --prompts file's prompts: as many as one run takes (checked here: the library would name its own option, --prompt). */
function promptsOf(file: string): string[] {
  const prompts = readPromptFile(file);
  if (prompts.length > LIMITS.prompts) throw new InputError('--prompts', `${prompts.length} prompts in ${file}`, `at most ${LIMITS.prompts} (one run)`, `${prompts.length}`);
  return prompts;
}

export async function generate(f: GenerateFlags): Promise<void> {
  const device = checkFlags(f);
  // Ctrl-C stops before the next segment (the finally below restores the terminal); a second one at once.
  const abort = new AbortController();
  let bar: SingleBar | undefined;
  const onSignal = (signal: 'SIGINT' | 'SIGTERM') => {
    if (abort.signal.aborted) {
      bar?.stop();
      restoreTerminal();
      process.exit(signal === 'SIGINT' ? 130 : 143);
    }
    abort.abort(new Interrupted(signal));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  let job: Awaited<ReturnType<typeof start>> | undefined;
  try {
    const latents = f.latents ? readLatentsFile(f.latents) : undefined;
    const image = f.initImage === undefined ? undefined : readImage(f.initImage);
    const folder = readPipelineFolder(modelDir(f));
    const family = familyOf(folder, f);
    // What each image of a run shows: a prompt (repeated --batch times) or a DiT class.
    const subjects = family === 'dit' ? classLabels(f.class!).map((l) => `class ${l}`) : f.prompts ? promptsOf(f.prompts) : [f.prompt!];
    const names = checkOutputs(f, family, subjects);
    const showProgress = !f.quiet && process.stderr.isTTY;
    bar = showProgress ? new SingleBar({ format: 'denoising {bar} {value}/{total} steps | {rate} it/s | ETA {eta_formatted}', hideCursor: true, stream: process.stderr }) : undefined;
    let started = performance.now();
    const onStep = (s: StepInfo) => {
      if (!bar) return;
      if (s.step === 1) {
        started = performance.now();
        bar.start(s.steps, 0, { rate: '-' });
      }
      bar.update(s.step, { rate: (s.step / ((performance.now() - started) / 1000)).toFixed(2) });
    };
    if (latents && f.seed && f.seed.length > 1 && seedWarnings({ latents, seed: f.seed[0] }, folderScheduler(folder, f.scheduler, f.steps ?? pipelineDefaults(folder.className).steps)).length > 0) {
      throw new InputError('--seed', `${f.seed.length} seeds with --latents would draw one image ${f.seed.length} times: this schedule draws no noise`,
        'one --seed, or a scheduler that draws noise (euler-a, ddpm, lcm)', f.seed.join(','));
    }
    job = await start(folder, family, f, device, latents, image, onStep, abort.signal, family === 'dit' ? [] : subjects);
    let written = 0;
    for (const seed of f.seed ?? [undefined]) {
      const result: Generated = await job.run(seed);
      bar?.stop();
      for (const w of result.warnings) process.stderr.write(`warning: ${withFlagNames(w)}\n`);
      // writeSafetensors writes through a temporary file itself.
      if (f.saveLatents) writeSafetensors(f.saveLatents, { latents: { dtype: 'F32', shape: result.latents.dims, data: result.latents.data } });
      const [first] = result.images;
      const perSubject = family === 'dit' ? 1 : (f.batch ?? 1);
      const settings = {
        ...(family === 'dit' ? { class: f.class } : { negativePrompt: f.negativePrompt ?? '' }),
        steps: result.steps, guidanceScale: result.guidanceScale,
        ...(family === 'stable-diffusion' ? { guidanceRescale: f.guidanceRescale ?? 0 } : {}),
        ...(family === 'pixart' ? { maxSequenceLength: f.maxSequenceLength ?? null, resolutionBinning: f.resolutionBinning ?? true } : {}),
        scheduler: result.scheduler, width: first.width, height: first.height,
        batch: f.batch ?? 1, model: modelName(folder.dir, f.model), device, threads: f.threads ?? null, precision: f.precision, latents: f.latents === undefined ? null : path.basename(f.latents),
        ...(image ? { initImage: path.basename(f.initImage!), strength: f.strength ?? DEFAULT_STRENGTH } : {}),
        accel: f.accel.map(formatAccelSpec),
      };
      // Each image records its own seed: the one that regenerates it alone.
      const parameters = (subject: string, seed: number) => formatParameters({
        subject, negativePrompt: family === 'dit' ? undefined : f.negativePrompt ?? '', steps: settings.steps, sampler: result.scheduler,
        cfgScale: settings.guidanceScale, seed, width: first.width, height: first.height, model: settings.model,
        strength: image ? settings.strength : undefined, accel: settings.accel, guidedChannels: result.guidedChannels,
      });
      const runNames = names.slice(written, written + result.images.length);
      result.images.forEach((img, i) => {
        const subject = subjects[Math.floor(i / perSubject)];
        const seed = result.seeds[i];
        const json = { ...(family === 'dit' ? {} : { prompt: subject }), ...settings, seed, batchSeed: result.seed, index: written + i };
        writeFileAtomically(runNames[i], encodePng(img.data, img.width, img.height, { parameters: parameters(subject, seed), 'diffusion.ts': JSON.stringify(json) }));
      });
      written += result.images.length;
      const t = result.timings;
      process.stderr.write(`wrote ${runNames.join(', ')} (seed ${result.seed}, ${result.scheduler}; ` +
        `${t.textEncoding === undefined ? '' : `text ${t.textEncoding.toFixed(2)} s, `}${t.imageEncoding === undefined ? '' : `init image ${t.imageEncoding.toFixed(2)} s, `}denoising ${t.denoising.toFixed(2)} s, decoding ${t.decoding.toFixed(2)} s)\n`);
      if (device === 'webgpu') {
        const kept = result.keptOnDevice < 2 ** 20 ? `${(result.keptOnDevice / 1024).toFixed(1)} KiB` : `${(result.keptOnDevice / 2 ** 20).toFixed(1)} MiB`;
        process.stderr.write(`webgpu: ${describeTransfers(result.denoisingTransfers, result.steps)}; ${kept} of outputs kept on the GPU between steps\n`);
      }
      if (result.accel) {
        const a = result.accel;
        process.stderr.write(`${a.name}: ${[`${a.cfgCalls} model calls with CFG`, ...a.summary].join(', ')}\n`);
      }
    }
  } finally {
    bar?.stop();
    if (bar) restoreTerminal();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await job?.release();
  }
}

/** The cursor shown and line wrapping on again, whatever the progress bar left. */
function restoreTerminal(): void {
  if (process.stderr.isTTY) process.stderr.write('\x1b[?25h\x1b[?7h');
}
