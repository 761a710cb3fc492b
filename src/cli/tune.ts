/**
 * `diffuse tune`: searches a method's discrete knobs for the setting whose images stay closest
 * (PSNR) to the unaccelerated sampler's, with greedy local search (src/tune/greedy.ts): PHAST for
 * attention-map reuse, starting from HURRY(N, r), writing the schedule as JSON for
 * `--accel attn-reuse:schedule=FILE`. For TeaCache it calibrates instead: the rescaling
 * polynomial fitted on the user's model and prompts (src/tune/teacache-calibration.ts). With
 * `--speedup X` it searches the composable U-Net methods together for a measured speed-up
 * (src/tune/speedup.ts) and writes a plan file for `--accel @FILE`.
 */
import { commandSessionCache } from '../runtime/session-cache.ts';
import * as path from 'node:path';
import { InputError } from '../errors.ts';
import { hurry } from '../accel/attn-reuse.ts';
import type { AccelSpec } from '../accel/index.ts';
import { macCounter } from '../bench/mac-counter.ts';
import { psnr } from '../metrics/image.ts';
import { modelFolder } from '../pipelines/reference-model.ts';
import { loadPipeline, type GeneratedImage, type StableDiffusionPipeline } from '../pipelines/stable-diffusion.ts';
import type { Precision } from '../graph/quantize.ts';
import { calibrateTeaCache } from '../tune/teacache-calibration.ts';
import { classPrompts } from '../bench/fidelity.ts';
import { readPipelineFolder, type PipelineFolder } from '../weights/diffusers-folder.ts';
import { pipelineDefaults } from '../pipelines/common.ts';
import { modelName } from './generate.ts';
import { HELD_OUT_PROMPTS, readPromptFile } from '../scenes/captions.ts';
import type { SchedulerName } from '../schedulers/index.ts';
import { greedySearch, phast, type Round } from '../tune/greedy.ts';
import { climbToSpeedup, describePlan, frontier, unetLadders, type Measured } from '../tune/speedup.ts';
import { fullMacs } from '../graph/builder.ts';
import { writePlanFile } from './plan-file.ts';
import { writeFileAtomically } from '../util/files.ts';

export interface TuneFlags {
  model?: string;
  method: string;
  steps: number;
  reuse: number;
  prompts?: string;
  count?: number;
  epsilon: number;
  /** Absent: the pipeline's default. */
  guidance?: number;
  seed: number;
  scheduler?: SchedulerName;
  threads?: number;
  /** Default: schedule.json (PHAST), calibration (TeaCache) or plan.json (--speedup). */
  out?: string;
  maxRounds: number;
  /** Search the U-Net methods for this measured speed-up instead of tuning one method. */
  speedup?: number;
  /** With `speedup`: whether int8 is a rung of the search (default true). */
  int8?: boolean;
}

const TUNABLE = ['attn-reuse', 'teacache'];
/** PSNR of identical images is infinite; capped so means stay finite. */
const PSNR_CAP = 100;

export async function tune(flags: TuneFlags): Promise<void> {
  const f = { ...flags, out: flags.out ?? (flags.speedup !== undefined ? 'plan.json' : 'schedule.json') };
  if (!TUNABLE.includes(f.method)) throw new InputError('--method', 'no search for this method yet', TUNABLE.join(', '), f.method);
  if (path.extname(f.out).toLowerCase() !== '.json') throw new InputError('--out', 'must be a JSON file', 'a name ending in .json', f.out);
  if (!(f.epsilon >= 0)) throw new InputError('--epsilon', 'wrong value', 'a number ≥ 0 (dB)', String(f.epsilon));
  if (f.speedup !== undefined && !(f.speedup > 1)) throw new InputError('--speedup', 'wrong value', 'a number above 1 (2 = twice as fast)', String(f.speedup));
  const model = modelFolder(f.model);
  // Without --guidance, the pipeline's own default, as `generate` uses.
  const folder = readPipelineFolder(model);
  const guidance = f.guidance ?? pipelineDefaults(folder.className).guidanceScale;
  if (f.speedup !== undefined) return tuneSpeedup({ ...f, guidance, speedup: f.speedup }, folder);
  if (f.method === 'teacache') return calibrateTeaCacheCommand({ ...f, guidance }, folder);
  const prompts = readPromptFile(f.prompts ?? HELD_OUT_PROMPTS).slice(0, f.count);
  const calls = macCounter({ model, scheduler: f.scheduler, batch: 1, guidance }).calls(f.steps);
  if (f.reuse <= 0 || f.reuse >= calls) throw new InputError('--reuse', `must leave computing calls in a run of ${calls} model calls`, `1 … ${calls - 1}`, String(f.reuse));

  const pipeline = await loadPipeline(model, { threads: f.threads, sessionCache: commandSessionCache() });
  try {
    const request = (i: number, accel: AccelSpec[] = []) => ({
      prompt: prompts[i], seed: f.seed + i, steps: f.steps, guidanceScale: guidance, scheduler: f.scheduler, accel,
    });
    const baseline: GeneratedImage[] = [];
    for (let i = 0; i < prompts.length; i++) baseline.push((await pipeline.generate(request(i))).images[0]);
    let evaluations = 0;
    const objective = async (spec: AccelSpec) => {
      evaluations++;
      let total = 0;
      for (let i = 0; i < prompts.length; i++) total += Math.min(PSNR_CAP, psnr((await pipeline.generate(request(i, [spec]))).images[0].data, baseline[i].data));
      return total / prompts.length;
    };
    console.log(`PHAST on ${model}: ${calls} model calls, ${f.reuse} reusing, ${prompts.length} prompts, ε = ${f.epsilon} dB; objective: mean PSNR against the unaccelerated images`);
    // The file is rewritten after every round, so a long search stopped early still leaves its best schedule.
    const save = (rounds: readonly Round<number[]>[], finished: boolean) => {
      const last = rounds[rounds.length - 1];
      const report = {
        method: f.method, model: path.resolve(model), steps: f.steps, calls, reuse: f.reuse, scheduler: f.scheduler ?? null, guidance,
        seed: f.seed, prompts, epsilon: f.epsilon, finished, evaluations, psnr: last.objective, hurryPsnr: rounds[0].objective,
        schedule: last.state, rounds: rounds.map((r) => ({ ...r, state: r.state.join('') })),
      };
      writeFileAtomically(f.out, JSON.stringify(report, null, 1));
    };
    const result = await greedySearch(phast(calls, f.reuse, hurry(calls, f.reuse)), objective, f.epsilon, (r, rounds) => {
      save(rounds, false);
      console.log(`  round ${String(r.round).padStart(2)}: ${r.state.join('')}  PSNR ${r.objective.toFixed(3)} dB` +
        (r.round === 0 ? '  (HURRY)' : `  (${r.tried} schedules tried${r.improved ? '' : ', none better: stop'})`));
    }, f.maxRounds);
    save(result.rounds, true);
    console.log(`wrote ${f.out}: PSNR ${result.objective.toFixed(3)} dB (HURRY ${result.rounds[0].objective.toFixed(3)} dB) after ${evaluations} schedules` +
      `${result.rounds.length - 1 === f.maxRounds && result.rounds[result.rounds.length - 1].improved ? ` (stopped at --max-rounds ${f.maxRounds})` : ''}; ` +
      `use it with --accel attn-reuse:schedule=${f.out}`);
  } finally {
    await pipeline.release();
  }
}

/** TeaCache's polynomial fitted on uncached runs of a PixArt or DiT folder (prompts, or class names / spread class ids for DiT). */
async function calibrateTeaCacheCommand(f: TuneFlags & { guidance: number; out: string }, folder: PipelineFolder): Promise<void> {
  const isDiT = folder.className === 'DiTPipeline';
  if (!isDiT && !folder.className.startsWith('PixArt')) {
    throw new InputError('--model', 'TeaCache calibrates a transformer pipeline', 'a PixArt or DiT folder', `${folder.className} at ${folder.dir}`);
  }
  const prompts = f.prompts !== undefined ? readPromptFile(f.prompts).slice(0, f.count) : classPrompts(folder.dir, f.count) ?? readPromptFile(HELD_OUT_PROMPTS).slice(0, f.count);
  const { runs, calls, coefficients, thresholds: table } = await calibrateTeaCache({
    model: folder.dir, prompts, steps: f.steps, guidance: f.guidance, seed: f.seed, scheduler: f.scheduler, threads: f.threads,
  });
  const all = runs.flat();
  const report = { method: 'teacache', model: modelName(folder.dir, f.model), steps: f.steps, calls, scheduler: f.scheduler ?? null, guidance: f.guidance,
    seed: f.seed, prompts: isDiT && folder.options.id2label === undefined ? undefined : prompts, samples: all, coefficients, thresholds: table };
  writeFileAtomically(f.out, JSON.stringify(report, null, 1));
  console.log(`TeaCache calibration on ${report.model}: ${runs.length} runs of ${calls} model calls, ${all.length} (input change, output change) pairs`);
  console.log(`  polynomial (highest power first): ${coefficients.map((c) => c.toPrecision(6)).join(', ')}`);
  for (const t of table) console.log(`  rel_l1_thresh ${String(t.rel_l1_thresh).padEnd(5)} computes ${t.computedCalls.toFixed(1)} of ${calls} calls (×${t.callSpeedup.toFixed(2)} fewer block-stack runs)`);
  console.log(`wrote ${f.out}; use e.g. --accel teacache:rel_l1_thresh=${table[3].rel_l1_thresh},coefficients=${coefficients.map((c) => c.toPrecision(6)).join(':')}`);
}

/**
 * `tune --speedup X` on a Stable Diffusion folder: the plan of DeepCache, TGATE and ToMe settings
 * and precision with the best PSNR at a measured speed-up of at least X (src/tune/speedup.ts),
 * checked on as many held-out prompts as it was tuned on, and written as a plan file for
 * `--accel @FILE`. int8 plans run on a second pipeline; the plain runs are fp32.
 */
async function tuneSpeedup(f: TuneFlags & { guidance: number; speedup: number; out: string }, folder: PipelineFolder): Promise<void> {
  if (!folder.className.startsWith('StableDiffusion')) {
    throw new InputError('--model', 'tune --speedup searches the U-Net methods (DeepCache, TGATE, ToMe)', 'a Stable Diffusion folder', `${folder.className} at ${folder.dir}`);
  }
  const count = f.count ?? 4;
  const all = readPromptFile(f.prompts ?? HELD_OUT_PROMPTS);
  if (all.length < 2 * count) {
    throw new InputError(f.prompts === undefined ? '--count' : '--prompts', `${count} prompts to tune on and ${count} others to check the plan on`, `at least ${2 * count} prompts`, `${all.length}`);
  }
  const [tuning, heldOut] = [all.slice(0, count), all.slice(count, 2 * count)];
  const counter = macCounter({ model: folder.dir, scheduler: f.scheduler, batch: 1, guidance: f.guidance });
  const ladders = unetLadders(counter.calls(f.steps), f.int8 !== false);
  const plainMacs = fullMacs((await counter.count(f.steps, [])).total);
  const pipelines = new Map<Precision, Promise<StableDiffusionPipeline>>();
  const pipelineAt = (precision: Precision) => {
    let p = pipelines.get(precision);
    if (!p) pipelines.set(precision, (p = loadPipeline(folder.dir, { threads: f.threads, precision, sessionCache: commandSessionCache() })));
    return p;
  };
  try {
    // Seconds of denoising (what the methods change) and the images, over a set of prompts.
    const run = async (prompts: string[], accel: AccelSpec[], precision: Precision = 'fp32') => {
      const pipeline = await pipelineAt(precision);
      let seconds = 0;
      const images: GeneratedImage[] = [];
      for (const [i, prompt] of prompts.entries()) {
        const r = await pipeline.generate({ prompt, seed: f.seed + i, steps: f.steps, guidanceScale: f.guidance, scheduler: f.scheduler, accel });
        seconds += r.timings.denoising;
        images.push(r.images[0]);
      }
      return { seconds, images };
    };
    const meanPsnr = (a: GeneratedImage[], b: GeneratedImage[]) => a.reduce((sum, image, i) => sum + Math.min(PSNR_CAP, psnr(image.data, b[i].data)), 0) / a.length;
    // A plan's first run creates its sessions (merged-token variants): one untimed run first.
    const warm = async (accel: AccelSpec[], precision: Precision) =>
      (await pipelineAt(precision)).generate({ prompt: tuning[0], seed: f.seed, steps: f.steps, guidanceScale: f.guidance, scheduler: f.scheduler, accel });
    await warm([], 'fp32');
    const baseline = await run(tuning, []);
    const measure = async (plan: AccelSpec[], precision: Precision): Promise<Measured> => {
      if (plan.length === 0 && precision === 'fp32') return { plan, precision, speedup: 1, macSpeedup: 1, psnr: PSNR_CAP };
      await warm(plan, precision);
      const r = await run(tuning, plan, precision);
      return { plan, precision, speedup: baseline.seconds / r.seconds, macSpeedup: plainMacs / fullMacs((await counter.count(f.steps, plan)).total),
        psnr: meanPsnr(r.images, baseline.images) };
    };
    console.log(`tune --speedup ${f.speedup} on ${modelName(folder.dir, f.model)}: ${f.steps} steps, ${count} prompts (and ${count} held out), ` +
      `plain denoising ${baseline.seconds.toFixed(2)} s; each round takes the step up that loses the least PSNR per speed gained`);
    const { measured, path: climb } = await climbToSpeedup(ladders, f.speedup, measure, (round, pick, tried) => {
      console.log(`  round ${round}: ${describePlan(pick.plan, pick.precision)}  ×${pick.speedup.toFixed(2)} measured (×${pick.macSpeedup.toFixed(2)} MACs), PSNR ${pick.psnr.toFixed(2)} dB  (${tried} tried)`);
    });
    const front = frontier(measured);
    console.log('frontier (measured speed-up, MAC speed-up, PSNR against the plain images):');
    for (const m of front) console.log(`  ×${m.speedup.toFixed(2).padEnd(5)} ×${m.macSpeedup.toFixed(2).padEnd(5)} ${m.psnr.toFixed(2).padStart(6)} dB  ${describePlan(m.plan, m.precision)}`);
    const reaching = measured.filter((m) => m.speedup >= f.speedup);
    const winner = reaching.length ? reaching.reduce((a, b) => (b.psnr > a.psnr ? b : a)) : climb[climb.length - 1];
    if (!reaching.length) console.log(`no plan reached ×${f.speedup}; the fastest found is written`);
    // The same plan on prompts the search never saw: a PSNR far below the tuning one says it was fitted to them.
    const heldBaseline = await run(heldOut, []);
    const heldPlan = await run(heldOut, winner.plan, winner.precision);
    const heldPsnr = meanPsnr(heldPlan.images, heldBaseline.images);
    writePlanFile(f.out, { accel: winner.plan, precision: winner.precision }, {
      model: modelName(folder.dir, f.model), steps: f.steps, scheduler: f.scheduler ?? null, guidance: f.guidance, target: f.speedup,
      speedup: winner.speedup, macSpeedup: winner.macSpeedup, psnr: winner.psnr, heldOutPsnr: heldPsnr, heldOutSpeedup: heldBaseline.seconds / heldPlan.seconds,
      prompts: tuning, heldOut, frontier: front.map((m) => ({ accel: describePlan(m.plan, m.precision), speedup: m.speedup, macSpeedup: m.macSpeedup, psnr: m.psnr })),
    });
    console.log(`wrote ${f.out}: ${describePlan(winner.plan, winner.precision)}: ×${winner.speedup.toFixed(2)} measured, PSNR ${winner.psnr.toFixed(2)} dB on the tuning prompts, ` +
      `${heldPsnr.toFixed(2)} dB (×${(heldBaseline.seconds / heldPlan.seconds).toFixed(2)}) on ${count} held-out ones; run it with --accel @${f.out}`);
  } finally {
    await Promise.allSettled([...pipelines.values()].map(async (p) => (await p).release()));
  }
}
