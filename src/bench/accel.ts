/**
 * `diffuse bench`: an accelerated setting against the unaccelerated baseline. With `--dry-run`
 * it counts whole-run denoiser (U-Net or transformer) MACs from a config alone (CFG batch included; VAE and text encoder
 * not); otherwise it generates with both, same seed, in one process, and reports time, speed-up,
 * peak RSS and the accelerated image's PSNR / SSIM against the baseline image, plus a labelled
 * side-by-side PNG.
 */
import * as path from 'node:path';
import { InputError } from '../errors.ts';
import { textOf, writeFileAtomically, writeOutput } from '../util/files.ts';
import { createAccelerator, formatAccelSpec, type AccelSpec } from '../accel/index.ts';
import { calflopsMacs, fullMacs, type MacCount } from '../graph/builder.ts';
import { drawLabel, labelWidth } from '../image/label.ts';
import { encodePng } from '../image/png.ts';
import { psnr, ssim } from '../metrics/image.ts';
import { heldBeside, openRunner, type BenchRequest, type BenchResult } from './runner.ts';
import { gibBytes } from '../pipelines/memory.ts';
import { checkRandomPreset, ensureRandomPresetFolder } from './random-folder.ts';
import type { SchedulerName } from '../schedulers/index.ts';
import { pipelineDefaults } from '../pipelines/families.ts';
import { modelFolder } from '../pipelines/reference-model.ts';
import { modelName } from '../pipelines/model-name.ts';
import { readPipelineFolder } from '../weights/diffusers-folder.ts';
import { HELD_OUT_PROMPTS, readPromptFile } from '../scenes/captions.ts';
import { classPrompts, fidelitySweep, formatFidelity, type FidelityOptions } from './fidelity.ts';
import { macCounter } from './mac-counter.ts';
import type { Precision } from '../graph/quantize.ts';
import { checkPrecisionDevice, type Device } from '../runtime/ort-executor.ts';

export interface BenchOptions {
  model?: string;
  preset?: string;
  accel: AccelSpec[];
  steps: number;
  size?: [number, number];
  batch: number;
  runs: number;
  warmup: number;
  scheduler?: SchedulerName;
  /** Absent: the pipeline's default. */
  guidance?: number;
  seed: number;
  prompt: string;
  dryRun: boolean;
  /** Where a DiT preset's random-weight folder is kept (real runs of a preset). */
  cache: string;
  macs: 'calflops' | 'full';
  threads?: number;
  /** GiB a run may take at its peak (default: this machine's memory). */
  memoryLimit?: number;
  /** Where both settings run. */
  device: Device;
  /** The accelerated setting's denoiser precision (the baseline is always fp32). */
  precision: Precision;
  out: string;
  json?: string;
  /** The fidelity sweep (src/bench/fidelity.ts) instead of one accelerated setting. */
  fidelity?: boolean;
  prompts?: string;
  sweep?: AccelSpec[][];
  count?: number;
  fewerSteps?: boolean;
  stepsBaseline?: number[];
}

/** MACs in T, or G below 0.1 T. */
const tera = (n: number) => (n >= 1e11 ? `${(n / 1e12).toFixed(3)} T` : `${(n / 1e9).toFixed(3)} G`);

interface MacSetting {
  setting: string;
  macs: MacCount;
  cfgCalls: number;
  reusedSegments: number;
}

/** "tgate:gate_step=10 + deepcache:interval=3", with " (int8)" when the precision is reduced. */
function settingName(o: BenchOptions): string {
  const methods = o.accel.map(formatAccelSpec).join(' + ');
  if (o.precision === 'fp32') return methods;
  return methods ? `${methods} (${o.precision})` : o.precision;
}

/** Whole-run denoiser MACs of the baseline and of the accelerated setting, from configs only. */
async function dryRun(o: Resolved): Promise<{ calls: number; settings: MacSetting[] }> {
  const print = textOf(o);
  const counter = macCounter(o);
  const { width, height } = counter;
  const calls = counter.calls(o.steps);
  const settings: MacSetting[] = [];
  const base = await counter.count(o.steps, []);
  settings.push({ setting: 'baseline', macs: base.total, cfgCalls: base.cfgCalls, reusedSegments: 0 });
  if (o.accel.length > 0 || o.precision !== 'fp32') {
    const r = await counter.count(o.steps, o.accel);
    settings.push({ setting: settingName(o), macs: r.total, cfgCalls: r.cfgCalls, reusedSegments: r.stats.reusedSegments });
  }
  print(`Denoiser (U-Net or transformer) MACs for a whole run: ${o.preset ? `preset ${o.preset}` : o.model}, ${width}x${height}, ${calls} model calls, ` +
    `batch ${o.batch}${counter.cfg ? ' (CFG doubles it while active)' : ', no CFG'}; counted ${o.macs === 'calflops' ? 'like calflops (no attention core)' : 'in full'}`);
  const count = (m: MacCount) => (o.macs === 'calflops' ? calflopsMacs(m) : fullMacs(m));
  for (const s of settings) {
    print(`  ${s.setting.padEnd(60)} ${tera(count(s.macs)).padStart(12)}  ×${(count(base.total) / count(s.macs)).toFixed(2)} ` +
      `(full ${tera(fullMacs(s.macs))}, calflops ${tera(calflopsMacs(s.macs))}; CFG calls ${s.cfgCalls}, segment calls reused ${s.reusedSegments})`);
  }
  return { calls, settings };
}

interface Measured {
  setting: string;
  seconds: number[];
  best: number;
  /** Denoising-loop seconds of the best run: what the U-Net MAC ratio predicts (no text encoder, no VAE). */
  bestDenoising: number;
  peakRssBytes: number;
  result: BenchResult;
}

async function measure(o: Resolved, setting: string, request: BenchRequest, run: (r: BenchRequest) => Promise<BenchResult>): Promise<Measured> {
  for (let w = 0; w < o.warmup; w++) {
    process.stderr.write(`${setting}: warm-up run ${w + 1}/${o.warmup} (creates ORT sessions)...\n`);
    await run(request);
  }
  const seconds: number[] = [];
  let best: { seconds: number; result: BenchResult } | undefined;
  for (let r = 0; r < o.runs; r++) {
    process.stderr.write(`${setting}: timed run ${r + 1}/${o.runs}...\n`);
    const start = performance.now();
    const result = await run(request);
    seconds.push((performance.now() - start) / 1000);
    if (!best || seconds[r] < best.seconds) best = { seconds: seconds[r], result };
  }
  return { setting, seconds, best: best!.seconds, bestDenoising: best!.result.timings.denoising,
    peakRssBytes: process.resourceUsage().maxRSS * 1024, result: best!.result };
}

/** Baseline | accelerated, side by side, each labelled with a few short lines. */
function comparison(a: Measured, b: Measured, labels: [string[], string[]]): { data: Float32Array; width: number; height: number } {
  const [ia, ib] = [a.result.images[0], b.result.images[0]];
  const gap = 8;
  const scale = Math.max(1, Math.floor(ia.width / 256));
  const lines = Math.max(labels[0].length, labels[1].length);
  const band = lines * 9 * scale + 6;
  const width = ia.width * 2 + gap;
  const height = ia.height + band;
  const out = new Float32Array(3 * width * height);
  const plane = width * height;
  const inPlane = ia.width * ia.height;
  for (const [img, x0] of [[ia, 0], [ib, ia.width + gap]] as const) {
    for (let c = 0; c < 3; c++) {
      for (let y = 0; y < img.height; y++) {
        out.set(img.data.subarray(c * inPlane + y * img.width, c * inPlane + (y + 1) * img.width), c * plane + (band + y) * width + x0);
      }
    }
  }
  ([[labels[0], 0], [labels[1], ia.width + gap]] as const).forEach(([text, x0]) => {
    text.forEach((line, row) => {
      const x = x0 + Math.max(2, Math.floor((ia.width - labelWidth(line, scale)) / 2));
      drawLabel(out, width, height, line, x, 3 + row * 9 * scale, scale);
    });
  });
  return { data: out, width, height };
}

/** The options once --guidance has its default; `name` is how reports name the model. */
type Resolved = BenchOptions & { guidance: number; name: string };

export async function bench(o: BenchOptions): Promise<void> {
  if ((o.model === undefined) === (o.preset === undefined)) {
    throw new InputError('--model/--preset', 'give exactly one', '--model DIR, or --preset NAME (seeded random weights for real runs)');
  }
  // Every flag is checked before a preset's random weights are written (gigabytes, minutes).
  const given = o.fidelity && o.prompts !== undefined ? readPromptFile(o.prompts).slice(0, o.count) : undefined;
  if (o.fidelity) {
    if (o.dryRun) throw new InputError('--dry-run', 'not with --fidelity', 'one of them');
    if (o.accel.length > 0) throw new InputError('--accel', 'the fidelity sweep takes its settings from --sweep', '--sweep SPEC[+SPEC...] (repeatable)');
    if (o.precision !== 'fp32') throw new InputError('--precision', 'the fidelity sweep runs in fp32', 'fp32 with --fidelity (one --precision setting: bench without --fidelity)', o.precision);
    for (const steps of o.stepsBaseline ?? []) {
      if (steps >= o.steps) throw new InputError('--steps-baseline', `${steps} is not fewer than --steps ${o.steps}`, `a step count below ${o.steps}`);
    }
  } else {
    if (o.sweep?.length) throw new InputError('--sweep', 'only with --fidelity', '--fidelity, or --accel for one setting');
    if (o.stepsBaseline?.length) throw new InputError('--steps-baseline', 'only with --fidelity', '--fidelity');
    if (!['calflops', 'full'].includes(o.macs)) throw new InputError('--macs', 'unknown convention', 'calflops or full', o.macs);
    if (!o.dryRun && o.accel.length === 0 && o.precision === 'fp32') {
      throw new InputError('--accel', 'nothing to compare with the baseline', 'at least one --accel NAME[:key=value,...], or --precision int8');
    }
    if (!o.dryRun && path.extname(o.out).toLowerCase() !== '.png') throw new InputError('--out', 'must be a PNG file', 'a name ending in .png', o.out);
    createAccelerator(o.accel, o.steps); // refuse bad combinations before any work
    // A dry run counts MACs from the configs, on no device.
    if (!o.dryRun) checkPrecisionDevice(o.precision, o.device);
  }
  const name = o.model !== undefined ? modelName(modelFolder(o.model), o.model) : o.preset!;
  if (o.model !== undefined) o = { ...o, model: modelFolder(o.model) };
  else if (!o.dryRun) {
    checkRandomPreset(o.preset!);
    // Presets run on seeded random weights (a timing, not an image): no download needed.
    process.stderr.write(`${o.preset}: seeded random weights in ${path.join(o.cache, o.preset!)} (made once)\n`);
    o = { ...o, model: await ensureRandomPresetFolder(o.cache, o.preset!), preset: undefined };
  }
  // Without --guidance, the pipeline's own default, as `generate` uses; a preset's dry run only counts
  // MACs, for which every default (all > 1) runs the CFG batch alike.
  return benchResolved({ ...o, name, guidance: o.guidance ?? (o.model !== undefined ? pipelineDefaults(readPipelineFolder(o.model).className).guidanceScale : 7.5) }, given);
}

async function benchResolved(o: Resolved, given: string[] | undefined): Promise<void> {
  const print = textOf(o);
  if (o.fidelity) {
    const prompts = given ?? classPrompts(o.model!, o.count) ?? readPromptFile(HELD_OUT_PROMPTS).slice(0, o.count);
    return benchFidelity(o, o.model!, prompts);
  }
  const macs = await dryRun(o);
  if (o.dryRun) {
    if (o.json) writeOutput(o.json, JSON.stringify({ ...o, ...macs }, null, 2));
    return;
  }

  const pipeline = await openRunner(o.model!, { threads: o.threads, device: o.device });
  // A reduced precision is another set of sessions: a second runner, the baseline's staying fp32.
  const reduced = o.precision === 'fp32' ? undefined : await openRunner(o.model!, { threads: o.threads, device: o.device, precision: o.precision }).catch(async (err) => {
    await pipeline.release();
    throw err;
  });
  try {
    if (pipeline.fixedSize !== undefined && o.size && (o.size[0] !== pipeline.fixedSize || o.size[1] !== pipeline.fixedSize)) {
      throw new InputError('--size', 'a DiT generates at the size its configuration fixes', `${pipeline.fixedSize}`, `${o.size[0]}x${o.size[1]}`);
    }
    const [width, height] = o.size ?? [pipeline.defaultSize, pipeline.defaultSize];
    const request: BenchRequest = {
      prompt: o.prompt, steps: o.steps, guidanceScale: o.guidance, seed: o.seed, width, height, batch: o.batch, scheduler: o.scheduler,
    };
    // With a reduced precision both runners' sessions are held: each run's memory check counts the other's weights.
    const limit = gibBytes(o.memoryLimit);
    const baseRun = { ...request, memoryLimit: heldBeside(reduced ? [reduced] : [], limit) };
    const fastRun = { ...request, accel: o.accel, memoryLimit: heldBeside(reduced ? [pipeline] : [], limit) };
    // The accelerated run's refusals (its caches' memory) before the baseline's timed runs.
    await pipeline.check(baseRun);
    await (reduced ?? pipeline).check(fastRun);
    const base = await measure(o, 'baseline', baseRun, (r) => pipeline.run(r));
    const fast = await measure(o, 'accelerated', fastRun, (r) => (reduced ?? pipeline).run(r));
    const count = (m: MacCount) => (o.macs === 'calflops' ? calflopsMacs(m) : fullMacs(m));
    const [baseMacs, fastMacs] = macs.settings.map((s) => count(s.macs));
    const p = psnr(fast.result.images[0].data, base.result.images[0].data);
    const s = ssim(fast.result.images[0].data, base.result.images[0].data, width, height);
    const speedup = base.best / fast.best;
    // What the runs really spent: adaptive methods (fbcache, teacache) decide at run time, so the
    // counts from configs cannot see their savings.
    const [baseSpent, fastSpent] = [count(base.result.denoiserMacs), count(fast.result.denoiserMacs)];
    const rows = [
      { setting: 'baseline', macs: baseMacs, spentMacs: baseSpent, seconds: base.best, denoisingSeconds: base.bestDenoising, speedup: 1, denoisingSpeedup: 1,
        psnr: Infinity, ssim: 1, rss: base.peakRssBytes },
      { setting: macs.settings[1].setting, macs: fastMacs, spentMacs: fastSpent, seconds: fast.best, denoisingSeconds: fast.bestDenoising, speedup,
        denoisingSpeedup: base.bestDenoising / fast.bestDenoising, psnr: p, ssim: s, rss: fast.peakRssBytes },
    ];
    print(`${o.model}: ${pipeline.kind} ${width}x${height}, ${o.steps} steps (${base.result.scheduler}), CFG ${o.guidance}, seed ${o.seed}, ` +
      `best of ${o.runs} timed run(s) after ${o.warmup} warm-up(s); PSNR/SSIM against the baseline image; ` +
      `"loop" = the denoising loop alone, which the denoiser MAC ratio predicts (text encoding and VAE decoding are fixed costs); ` +
      `"ran" = the ratio of the MACs the runs really spent (adaptive methods decide at run time)`);
    print(`  ${'setting'.padEnd(60)} ${'MACs'.padStart(12)} ${'s/image'.padStart(8)} ${'speed-up'.padStart(8)} ${'loop s'.padStart(8)} ${'loop ×'.padStart(7)} ${'MAC ratio'.padStart(9)} ${'ran ×'.padStart(6)} ` +
      `${'PSNR dB'.padStart(8)} ${'SSIM'.padStart(6)} ${'peak RSS'.padStart(9)}`);
    for (const r of rows) {
      print(`  ${r.setting.padEnd(60)} ${tera(r.macs).padStart(12)} ${(r.seconds / o.batch).toFixed(3).padStart(8)} ` +
        `${r.speedup.toFixed(2).padStart(7)}× ${(r.denoisingSeconds / o.batch).toFixed(3).padStart(8)} ${r.denoisingSpeedup.toFixed(2).padStart(6)}× ${(baseMacs / r.macs).toFixed(2).padStart(8)}× ${(baseSpent / r.spentMacs).toFixed(2).padStart(5)}× ${(Number.isFinite(r.psnr) ? r.psnr.toFixed(2) : '∞').padStart(8)} ` +
        `${r.ssim.toFixed(4).padStart(6)} ${((r.rss / 2 ** 30).toFixed(2) + ' GiB').padStart(9)}`);
    }
    if (fast.result.accel?.summary.length) print(`  ${fast.result.accel.name}: ${fast.result.accel.summary.join(', ')}`);
    for (const w of fast.result.warnings) print(`  warning: ${w}`);
    const image = comparison(base, fast, [
      ['BASELINE', `${base.best.toFixed(2)} S`],
      [[...o.accel.map((a) => a.method), ...(o.precision === 'fp32' ? [] : [o.precision])].join('+'), `${fast.best.toFixed(2)} S ${speedup.toFixed(2)}X`, `PSNR ${p.toFixed(1)} DB`],
    ]);
    const { name, ...settings } = o;
    writeFileAtomically(o.out, encodePng(image.data, image.width, image.height, { 'diffusion.ts': JSON.stringify({ rows, ...settings, model: name, accel: o.accel.map(formatAccelSpec) }) }));
    print(`  comparison image: ${o.out}`);
    if (o.json) {
      writeOutput(o.json, JSON.stringify({ model: o.name, width, height, steps: o.steps, runs: o.runs, rows,
        seconds: { baseline: base.seconds, accelerated: fast.seconds }, accel: o.accel.map(formatAccelSpec), precision: o.precision }, null, 2));
    }
  } finally {
    await pipeline.release();
    await reduced?.release();
  }
}

async function benchFidelity(o: Resolved, model: string, prompts: string[]): Promise<void> {
  const options: FidelityOptions = {
    model, prompts, steps: o.steps, guidance: o.guidance, seed: o.seed, scheduler: o.scheduler, size: o.size, threads: o.threads, device: o.device, memoryLimit: gibBytes(o.memoryLimit),
    sweep: o.sweep?.length ? o.sweep : undefined, fewerSteps: o.fewerSteps, stepBaselines: o.stepsBaseline, progress: (m) => process.stderr.write(`${m}\n`),
  };
  const result = await fidelitySweep(options);
  textOf(o)(formatFidelity(result, options));
  if (o.json) {
    const rows = result.rows.map((r) => ({ ...r, accel: r.accel.map(formatAccelSpec) }));
    writeOutput(o.json, JSON.stringify({ model: o.name, width: result.width, height: result.height, steps: o.steps,
      scheduler: o.scheduler ?? null, guidance: o.guidance, seed: o.seed, threads: o.threads ?? null, prompts, chanceAdherence: result.chanceAdherence, rows }, null, 2));
  }
}
