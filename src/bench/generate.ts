/**
 * `diffuse bench-generate`: a whole text-to-image run (text encoding, denoising, decoding) of a
 * preset architecture with seeded random weights, optionally against diffusers on PyTorch timed
 * in the same run on the same folder.
 */
import { openSessionCache } from '../runtime/session-cache.ts';
import * as path from 'node:path';
import { InputError } from '../errors.ts';
import { checkOutputFolder, textOf, writeOutput } from '../util/files.ts';
import { loadPipeline, type GenerateResult } from '../pipelines/stable-diffusion.ts';
import { ensureRandomPipelineFolder } from './random-folder.ts';
import { checkReferenceEnv, runReferenceScript } from './reference-script.ts';

export interface BenchGenerateOptions {
  preset: string;
  size: number;
  steps: number;
  guidance: number;
  threads: number;
  runs: number;
  cache: string;
  /** Keep ORT's optimised models in this folder (a second process then starts from them). */
  sessionCache?: string;
  json?: string;
  pytorch?: string;
}

interface Timing {
  text: number;
  denoising: number;
  decoding: number;
  total: number;
}

const PROMPT = 'a photo of an astronaut riding a horse on mars';

function timing(r: GenerateResult): Timing {
  const t = r.timings;
  return { text: t.textEncoding, denoising: t.denoising, decoding: t.decoding, total: t.textEncoding + t.denoising + t.decoding };
}

const row = (label: string, t: Timing, rss: number) =>
  `  ${label.padEnd(34)} text ${t.text.toFixed(3)} s | denoising ${t.denoising.toFixed(3)} s | decoding ${t.decoding.toFixed(3)} s | ` +
  `total ${t.total.toFixed(3)} s | peak RSS ${(rss / 2 ** 30).toFixed(2)} GiB`;

export async function benchGenerate(o: BenchGenerateOptions): Promise<void> {
  const print = textOf(o);
  if (o.preset !== 'sd15' && o.preset !== 'sd21') throw new InputError('--preset', 'bench-generate covers SD 1.x/2.x presets', 'sd15 or sd21', o.preset);
  // An explicit cache the process cannot write would leave every run uncached: refused instead.
  if (o.sessionCache !== undefined) checkOutputFolder(o.sessionCache, '--session-cache');
  if (o.pytorch) checkReferenceEnv(o.pytorch);
  const dir = path.resolve(o.cache, o.preset);
  process.stderr.write(`preparing ${dir} (seeded random weights, F16 on disk, computed in fp32)...\n`);
  await ensureRandomPipelineFolder(dir, o.preset, ['unet', 'vae', 'text_encoder', 'tokenizer', 'scheduler']);
  const pipeline = await loadPipeline(dir, { threads: o.threads, sessionCache: o.sessionCache === undefined ? undefined : openSessionCache(o.sessionCache) });
  const request = { prompt: PROMPT, steps: o.steps, guidanceScale: o.guidance, seed: 0, width: o.size, height: o.size };
  print(`${o.preset} text-to-image ${o.size}x${o.size}, ${o.steps} steps (${pipeline.folder.components.scheduler?.className}), ` +
    `CFG ${o.guidance}, fp32, ${o.threads} threads`);
  let start = performance.now();
  await pipeline.generate(request);
  const firstSeconds = (performance.now() - start) / 1000;
  print(`  first run, including ORT session creation${o.sessionCache === undefined ? '' : ` (session cache ${o.sessionCache})`}: ${firstSeconds.toFixed(1)} s`);
  const runs: Timing[] = [];
  for (let r = 0; r < o.runs; r++) {
    runs.push(timing(await pipeline.generate(request)));
    print(row(`diffusion.ts run ${r + 1}`, runs[r], process.resourceUsage().maxRSS * 1024));
  }
  await pipeline.release();
  const best = runs.reduce((a, b) => (b.total < a.total ? b : a));
  print(`  first run / best run: ${(firstSeconds / best.total).toFixed(2)}×`);
  const rss = process.resourceUsage().maxRSS * 1024;
  const result: Record<string, unknown> = { ...o, firstSeconds, runs, best, peakRssBytes: rss };
  if (o.pytorch) {
    process.stderr.write('timing diffusers on PyTorch...\n');
    const lines = runReferenceScript<Timing & { warmup?: boolean; peak_rss_bytes: number; engine: string }>(o.pytorch, 'bench_generate_torch.py',
      [dir, '--size', `${o.size}`, '--steps', `${o.steps}`, '--guidance', `${o.guidance}`, '--threads', `${o.threads}`, '--runs', `${o.runs}`]);
    const timed = lines.filter((l) => !l.warmup);
    timed.forEach((t, i) => print(row(`${t.engine.replace('diffusers on ', '')} run ${i + 1}`, t, t.peak_rss_bytes)));
    const torchBest = timed.reduce((a, b) => (b.total < a.total ? b : a));
    print(`  best vs best: diffusion.ts ${best.total.toFixed(3)} s, PyTorch ${torchBest.total.toFixed(3)} s → ` +
      `${(torchBest.total / best.total).toFixed(2)}× (denoising alone ${(torchBest.denoising / best.denoising).toFixed(2)}×)`);
    result.pytorch = { runs: timed, best: torchBest };
  }
  if (o.json) writeOutput(o.json, JSON.stringify(result, null, 2));
}
