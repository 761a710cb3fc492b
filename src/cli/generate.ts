/**
 * `diffuse generate`: text-to-image from a diffusers folder to PNG files. Every flag is checked
 * before any work starts; outputs are written to a temporary name and renamed, so a failed or
 * interrupted run leaves no half-written file.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { SingleBar } from 'cli-progress';
import { InputError } from '../errors.ts';
import { formatAccelSpec, type AccelSpec } from '../accel/index.ts';
import { encodePng } from '../image/png.ts';
import { loadPipeline, type GenerateRequest, type Latents } from '../pipelines/stable-diffusion.ts';
import { modelFolder } from '../pipelines/reference-model.ts';
import type { Device } from '../runtime/ort-executor.ts';
import type { SchedulerName } from '../schedulers/index.ts';
import { writeFileAtomically } from '../util/files.ts';
import { SafetensorsFile, writeSafetensors } from '../weights/safetensors.ts';

export interface GenerateFlags {
  model?: string;
  prompt?: string;
  negativePrompt?: string;
  steps?: number;
  guidance?: number;
  guidanceRescale?: number;
  scheduler?: SchedulerName;
  seed?: number;
  width?: number;
  height?: number;
  batch?: number;
  latents?: string;
  saveLatents?: string;
  out: string;
  device: string;
  threads?: number;
  variant?: string;
  accel: AccelSpec[];
  quiet: boolean;
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
  if (f.prompt === undefined) throw new InputError('--prompt', 'no prompt given', 'some text');
  if (f.device !== 'cpu' && f.device !== 'webgpu') throw new InputError('--device', 'unknown device', 'cpu or webgpu', f.device);
  if (path.extname(f.out).toLowerCase() !== '.png') throw new InputError('--out', 'output must be a PNG file', 'a name ending in .png', f.out);
  for (const file of [f.out, f.saveLatents]) {
    if (file === undefined) continue;
    const dir = path.dirname(path.resolve(file));
    if (!fs.existsSync(dir)) throw new InputError(file === f.out ? '--out' : '--save-latents', 'folder does not exist', 'an existing folder', dir);
  }
  return f.device;
}

export async function generate(f: GenerateFlags): Promise<void> {
  const device = checkFlags(f);
  const latents = f.latents ? readLatentsFile(f.latents) : undefined;
  const pipeline = await loadPipeline(modelFolder(f.model), { device, threads: f.threads, variant: f.variant });
  const showProgress = !f.quiet && process.stderr.isTTY;
  const bar = showProgress ? new SingleBar({ format: 'denoising {bar} {value}/{total} steps | {rate} it/s | ETA {eta_formatted}', hideCursor: true, stream: process.stderr }) : undefined;
  const started = performance.now();
  const request: GenerateRequest = {
    prompt: f.prompt!,
    negativePrompt: f.negativePrompt,
    steps: f.steps,
    guidanceScale: f.guidance,
    guidanceRescale: f.guidanceRescale,
    scheduler: f.scheduler,
    seed: f.seed,
    width: f.width,
    height: f.height,
    imagesPerPrompt: f.batch,
    latents,
    accel: f.accel,
    onStep: (s) => {
      if (!bar) return;
      if (s.step === 1) bar.start(s.steps, 0, { rate: '-' });
      bar.update(s.step, { rate: (s.step / ((performance.now() - started) / 1000)).toFixed(2) });
    },
  };
  try {
    const result = await pipeline.generate(request);
    bar?.stop();
    for (const w of result.warnings) process.stderr.write(`warning: ${w}\n`);
    // writeSafetensors writes through a temporary file itself.
    if (f.saveLatents) writeSafetensors(f.saveLatents, { latents: { dtype: 'F32', shape: result.latents.dims, data: result.latents.data } });
    const names = outputNames(f.out, result.images.length);
    const [image] = result.images;
    const settings = {
      prompt: f.prompt, negativePrompt: f.negativePrompt ?? '', steps: f.steps ?? 50, guidanceScale: f.guidance ?? 7.5,
      guidanceRescale: f.guidanceRescale ?? 0, scheduler: result.scheduler, seed: result.seed, width: image.width, height: image.height,
      batch: f.batch ?? 1, model: path.resolve(modelFolder(f.model)), device, threads: f.threads ?? null, latents: f.latents ?? null,
      accel: f.accel.map(formatAccelSpec),
    };
    const parameters = [
      f.prompt,
      `Negative prompt: ${settings.negativePrompt}`,
      `Steps: ${settings.steps}, Sampler: ${result.scheduler}, CFG scale: ${settings.guidanceScale}, Seed: ${result.seed}, ` +
        `Size: ${image.width}x${image.height}, Model: ${path.basename(settings.model)}` +
        // quoted, as A1111 quotes values that contain commas
        (f.accel.length ? `, Accel: "${f.accel.map(formatAccelSpec).join(' + ')}"` : ''),
    ].join('\n');
    result.images.forEach((img, i) => {
      const text = { parameters, 'diffusion.ts': JSON.stringify({ ...settings, index: i }) };
      writeFileAtomically(names[i], encodePng(img.data, img.width, img.height, text));
    });
    const t = result.timings;
    process.stderr.write(`wrote ${names.join(', ')} (seed ${result.seed}, ${result.scheduler}; text ${t.textEncoding.toFixed(2)} s, ` +
      `denoising ${t.denoising.toFixed(2)} s, decoding ${t.decoding.toFixed(2)} s)\n`);
    if (result.accel) {
      const a = result.accel;
      process.stderr.write(`${a.name}: ${[`${a.cfgCalls} model calls with CFG`, ...a.summary].join(', ')}\n`);
    }
  } finally {
    bar?.stop();
    await pipeline.release();
  }
}
