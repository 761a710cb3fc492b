/**
 * `diffuse bench --fidelity`: a sweep of acceleration settings over a prompt file, each image
 * compared with the unaccelerated one of the same prompt and seed (PSNR, SSIM) and, for captions
 * of the reference model's grammar, scored for prompt adherence. Beside every method setting runs
 * a "fewer steps" baseline — the same sampler with the step count that costs the same U-Net MACs —
 * the equal-cost comparison the attention-reuse paper makes.
 */
import { InputError } from '../errors.ts';
import { parseAccelSpec, shortAccelSpec, type AccelSpec } from '../accel/index.ts';
import { calflopsMacs } from '../graph/builder.ts';
import { adherence } from '../metrics/adherence.ts';
import { psnr, ssim } from '../metrics/image.ts';
import type { GeneratedImage } from '../pipelines/common.ts';
import type { ModelDeclaration } from '../runtime/protocol.ts';
import { openRunner, type BenchRequest } from './runner.ts';
import { labelTable, readPipelineFolder } from '../weights/diffusers-folder.ts';
import { parseCaption, type SceneCaption } from '../scenes/captions.ts';
import type { SchedulerName } from '../schedulers/index.ts';
import { macCounter } from './mac-counter.ts';
import type { Device } from '../runtime/ort-executor.ts';

export interface FidelityOptions {
  model: string;
  prompts: string[];
  steps: number;
  guidance: number;
  seed: number;
  scheduler?: SchedulerName;
  size?: [number, number];
  threads?: number;
  device?: Device;
  /** Bytes a run may take at its peak (default: this machine's memory); every setting is checked before the first runs. */
  memoryLimit?: number;
  /** Method settings; default: defaultSweep(steps). */
  sweep?: AccelSpec[][];
  /** Add the equal-MAC fewer-steps baselines (default true). */
  fewerSteps?: boolean;
  /** Plain-sampler step counts to add in any case (e.g. the attention-reuse paper's 13 of 20). */
  stepBaselines?: number[];
  /** Keep the images of the first N prompts (for grids). */
  keepImages?: number;
  progress?: (message: string) => void;
}

export interface FidelityRow {
  label: string;
  kind: 'baseline' | 'method' | 'fewer steps';
  accel: AccelSpec[];
  steps: number;
  /** Whole-run denoiser MACs per image, counted like calflops from the configs. */
  macs: number;
  macRatio: number;
  /** Mean seconds per image (text encoding, denoising, decoding). */
  seconds: number;
  speedup: number;
  /** Mean seconds of the denoising loop alone: what the MAC ratio predicts. */
  loopSeconds: number;
  loopSpeedup: number;
  /** Means over prompts; PSNR of identical images is left out of its mean (∞). */
  psnr: number;
  ssim: number;
  /** Mean adherence; undefined when a prompt is not of the scene grammar. */
  adherence?: number;
  /** The ratio of the MACs the runs really spent (adaptive methods decide at run time: fbcache, teacache). */
  spentRatio?: number;
  perPrompt: { seconds: number; loopSeconds: number; spentMacs: number; psnr: number; ssim: number; adherence?: number }[];
}

export interface FidelityResult {
  width: number;
  height: number;
  rows: FidelityRow[];
  /** Adherence of the baseline images scored against another prompt's caption: what chance gives. */
  chanceAdherence?: number;
  /** Images of the first keepImages prompts, by row label. */
  images: Map<string, GeneratedImage[]>;
}

/**
 * A class-conditional folder's prompts when none are given: `count` classes (default all) spread
 * over its id2label, each by the first of its names that is a caption of the scene grammar (the
 * reference DiTs have one, so adherence is scored), else its first name. Undefined for folders
 * without id2label.
 */
export function classPrompts(model: string, count?: number): string[] | undefined {
  const folder = readPipelineFolder(model);
  if (folder.options.id2label === undefined) return undefined;
  const byId = new Map<number, string[]>();
  for (const [name, id] of labelTable(folder.options.id2label, `${folder.dir}/model_index.json`)) byId.set(id, [...(byId.get(id) ?? []), name]);
  const ids = [...byId.keys()].sort((a, b) => a - b);
  const n = Math.min(count ?? ids.length, ids.length);
  return Array.from({ length: n }, (_, i) => {
    const names = byId.get(ids[Math.floor((i * ids.length) / n)])!;
    return names.find((name) => sceneCaption(name) !== undefined) ?? names[0];
  });
}

/** The prompt as a caption of the scene grammar, or undefined. */
function sceneCaption(text: string): SceneCaption | undefined {
  try {
    return parseCaption(text);
  } catch {
    return undefined;
  }
}

/** TGATE gates at 20/40/60% of the steps, DeepCache intervals 2, 3, 5, ToMe ratios 0.3, 0.5, 0.6, attention-map reuse (HURRY) on the last 20/40/50% of the steps. */
export function defaultSweep(steps: number, model?: ModelDeclaration): AccelSpec[][] {
  const sweep: AccelSpec[][] = [];
  const unet = model === undefined || model.kind === 'U-Net';
  for (const share of [0.2, 0.4, 0.6]) {
    const gate = Math.max(1, Math.round(steps * share));
    sweep.push([parseAccelSpec(`tgate:gate_step=${gate},warm_up=${Math.min(2, gate - 1)}`)]);
  }
  if (unet) {
    for (const interval of [2, 3, 5]) sweep.push([parseAccelSpec(`deepcache:cache_interval=${interval}`)]);
    for (const ratio of [0.3, 0.5, 0.6]) sweep.push([parseAccelSpec(`tome:ratio=${ratio}`)]);
  } else if (model.longSkips) {
    // Skip-DiT: its long skips are what Skip-Cache cuts; the span caches need one chain of blocks.
    for (const interval of [2, 3, 4]) sweep.push([parseAccelSpec(`skip-cache:cache_interval=${interval}`)]);
  } else {
    for (const threshold of [0.05, 0.1, 0.2]) sweep.push([parseAccelSpec(`fbcache:residual_diff_threshold=${threshold}`)]);
    for (const threshold of [0.2, 0.4, 0.6]) sweep.push([parseAccelSpec(`teacache:rel_l1_thresh=${threshold}`)]);
  }
  for (const share of [0.2, 0.4, 0.5]) sweep.push([parseAccelSpec(`attn-reuse:reuse=${Math.max(1, Math.round(steps * share))}`)]);
  for (const interval of [2, 3, 5]) sweep.push([parseAccelSpec(`fora:cache_interval=${interval}`)]);
  return sweep;
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

export async function fidelitySweep(o: FidelityOptions): Promise<FidelityResult> {
  if (o.prompts.length === 0) throw new InputError('--prompts', 'no prompts', 'at least one prompt');
  // Prompts outside the scene grammar get no adherence scores.
  const parsed = o.prompts.map(sceneCaption);
  let captions = parsed.every((c) => c !== undefined) ? (parsed as SceneCaption[]) : undefined;
  const counter = macCounter({ model: o.model, size: o.size, scheduler: o.scheduler, batch: 1, guidance: o.guidance });
  const baseMacs = calflopsMacs((await counter.count(o.steps, [])).total);
  const settings: Omit<FidelityRow, 'seconds' | 'speedup' | 'loopSeconds' | 'loopSpeedup' | 'psnr' | 'ssim' | 'adherence' | 'perPrompt'>[] = [
    { label: `baseline (${o.steps} steps)`, kind: 'baseline', accel: [], steps: o.steps, macs: baseMacs, macRatio: 1 },
  ];
  const fewer = new Set<number>();
  for (const accel of o.sweep ?? defaultSweep(o.steps, counter.declaration)) {
    const macs = calflopsMacs((await counter.count(o.steps, accel)).total);
    settings.push({ label: accel.map(shortAccelSpec).join(' + '), kind: 'method', accel, steps: o.steps, macs, macRatio: baseMacs / macs });
    fewer.add(Math.max(1, Math.round((o.steps * macs) / baseMacs)));
  }
  if (!(o.fewerSteps ?? true)) fewer.clear();
  for (const steps of o.stepBaselines ?? []) fewer.add(steps);
  for (const steps of [...fewer].filter((s) => s < o.steps).sort((a, b) => b - a)) {
    const macs = calflopsMacs((await counter.count(steps, [])).total);
    settings.push({ label: `${steps} steps`, kind: 'fewer steps', accel: [], steps, macs, macRatio: baseMacs / macs });
  }

  const pipeline = await openRunner(o.model, { threads: o.threads, device: o.device });
  // A DiT takes no text: adherence is scored only where every prompt named the class generated.
  if (!o.prompts.every((p) => pipeline.usesPrompt(p))) captions = undefined;
  const rows: FidelityRow[] = settings.map((s) => ({ ...s, seconds: 0, speedup: 0, loopSeconds: 0, loopSpeedup: 0, psnr: 0, ssim: 0, perPrompt: [] }));
  const images = new Map<string, GeneratedImage[]>(rows.map((r) => [r.label, []]));
  const baselineImages: GeneratedImage[] = [];
  try {
    const request = (row: FidelityRow, i: number): BenchRequest => ({
      prompt: o.prompts[i], seed: o.seed + i, steps: row.steps, guidanceScale: o.guidance, scheduler: o.scheduler,
      width: counter.width, height: counter.height, batch: 1, accel: row.accel, memoryLimit: o.memoryLimit,
    });
    // Every setting's refusals (memory above all) before the first image, not after the settings before it ran.
    for (const row of rows) {
      try {
        await pipeline.check(request(row, 0));
      } catch (err) {
        // A method setting is the sweep's; a baseline's refusal is the run's own (its size, its memory), as generate gives it.
        throw err instanceof InputError && row.kind === 'method' ? new InputError(o.sweep ? '--sweep' : '--fidelity', `the setting "${row.label}" cannot run: ${err.message}`) : err;
      }
    }
    o.progress?.(`warm-up: one image per setting (creates the ORT sessions)`);
    for (const row of rows) await pipeline.run(request(row, 0));
    // Prompt-major order: every setting sees the same machine state, give or take one prompt.
    for (let i = 0; i < o.prompts.length; i++) {
      o.progress?.(`prompt ${i + 1}/${o.prompts.length}: ${o.prompts[i]}`);
      let base: GeneratedImage | undefined;
      for (const row of rows) {
        const start = performance.now();
        const result = await pipeline.run(request(row, i));
        const seconds = (performance.now() - start) / 1000;
        const image = result.images[0];
        base ??= image;
        if (row.kind === 'baseline') baselineImages.push(image);
        if (i < (o.keepImages ?? 0)) images.get(row.label)!.push(image);
        row.perPrompt.push({
          seconds,
          loopSeconds: result.timings.denoising,
          spentMacs: calflopsMacs(result.denoiserMacs),
          psnr: psnr(image.data, base.data),
          ssim: ssim(image.data, base.data, image.width, image.height),
          adherence: captions && adherence(image.data, image.width, image.height, captions[i]).score,
        });
      }
    }
  } finally {
    await pipeline.release();
  }
  for (const row of rows) {
    row.seconds = mean(row.perPrompt.map((p) => p.seconds));
    row.speedup = rows[0].seconds / row.seconds;
    row.loopSeconds = mean(row.perPrompt.map((p) => p.loopSeconds));
    row.loopSpeedup = rows[0].loopSeconds / row.loopSeconds;
    row.spentRatio = mean(rows[0].perPrompt.map((p) => p.spentMacs)) / mean(row.perPrompt.map((p) => p.spentMacs));
    const finite = row.perPrompt.map((p) => p.psnr).filter(Number.isFinite);
    row.psnr = finite.length ? mean(finite) : Infinity;
    row.ssim = mean(row.perPrompt.map((p) => p.ssim));
    row.adherence = captions && mean(row.perPrompt.map((p) => p.adherence!));
  }
  // Chance: each baseline image against the caption of the next prompt.
  const chanceAdherence = captions && o.prompts.length > 1
    ? mean(baselineImages.map((img, i) => adherence(img.data, img.width, img.height, captions![(i + 1) % captions!.length]).score))
    : undefined;
  return { width: counter.width, height: counter.height, rows, chanceAdherence, images };
}

/** The sweep as a text table. */
export function formatFidelity(r: FidelityResult, o: FidelityOptions): string {
  const lines = [
    `${o.model}: ${r.width}x${r.height}, ${o.prompts.length} prompts (seeds ${o.seed}..${o.seed + o.prompts.length - 1}), CFG ${o.guidance}; ` +
    `means per image ("loop" = the denoising loop alone; "ran ×" = the ratio of the MACs the runs really spent, which adaptive methods decide at run time); ` +
    `PSNR/SSIM against the baseline image of the same prompt and seed`,
    `  ${'setting'.padEnd(36)} ${'steps'.padStart(5)} ${'MACs'.padStart(10)} ${'MAC ×'.padStart(6)} ${'ran ×'.padStart(6)} ${'s/image'.padStart(8)} ` +
    `${'speed-up'.padStart(8)} ${'loop s'.padStart(8)} ${'loop ×'.padStart(7)} ${'PSNR dB'.padStart(8)} ${'SSIM'.padStart(6)} ${'adherence'.padStart(9)}`,
  ];
  for (const row of r.rows) {
    lines.push(`  ${row.label.padEnd(36)} ${String(row.steps).padStart(5)} ${`${(row.macs / 1e9).toFixed(2)} G`.padStart(10)} ` +
      `${row.macRatio.toFixed(2).padStart(6)} ${(row.spentRatio ?? 1).toFixed(2).padStart(6)} ${row.seconds.toFixed(3).padStart(8)} ${row.speedup.toFixed(2).padStart(7)}× ` +
      `${row.loopSeconds.toFixed(3).padStart(8)} ${row.loopSpeedup.toFixed(2).padStart(6)}× ` +
      `${(Number.isFinite(row.psnr) ? row.psnr.toFixed(2) : '∞').padStart(8)} ${row.ssim.toFixed(4).padStart(6)} ` +
      `${(row.adherence === undefined ? '-' : row.adherence.toFixed(3)).padStart(9)}`);
  }
  if (r.chanceAdherence !== undefined) lines.push(`  adherence by chance (baseline images scored against another prompt's caption): ${r.chanceAdherence.toFixed(3)}`);
  return lines.join('\n');
}
