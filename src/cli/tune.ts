/**
 * `diffuse tune`: searches a method's discrete knobs for the setting whose images stay closest
 * (PSNR) to the unaccelerated sampler's, with greedy local search (src/tune/greedy.ts): PHAST for
 * attention-map reuse, starting from HURRY(N, r), writing the schedule as JSON for
 * `--accel attn-reuse:schedule=FILE`. For TeaCache it calibrates instead: the rescaling
 * polynomial fitted on the user's model and prompts (src/tune/teacache-calibration.ts). With
 * `--speedup X` it searches the methods the model takes together for a measured speed-up
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
import { loadPipeline } from '../pipelines/stable-diffusion.ts';
import type { GeneratedImage } from '../pipelines/common.ts';
import type { Precision } from '../graph/quantize.ts';
import { calibrateTeaCache } from '../tune/teacache-calibration.ts';
import { classPrompts } from '../bench/fidelity.ts';
import { readPipelineFolder, type PipelineFolder } from '../weights/diffusers-folder.ts';
import { pipelineDefaults, pipelineFamily } from '../pipelines/families.ts';
import { modelName } from '../pipelines/model-name.ts';
import { HELD_OUT_PROMPTS, readPromptFile } from '../scenes/captions.ts';
import type { SchedulerName } from '../schedulers/index.ts';
import { greedySearch, phast, type Round } from '../tune/greedy.ts';
import { climbToSpeedup, composableSets, describePlan, firstRung, frontier, macGain, measuredGain, methodLadders, type Gain, type Ladder, type Measured } from '../tune/speedup.ts';
import { heldBeside, openRunner, type BenchRequest, type BenchRunner } from '../bench/runner.ts';
import { gibBytes } from '../pipelines/memory.ts';
import { fullMacs } from '../graph/builder.ts';
import { writePlanFile } from './plan-file.ts';
import { checkOutputFile, writeFileAtomically } from '../util/files.ts';

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
  /** GiB a run may take at its peak (default: this machine's memory). */
  memoryLimit?: number;
  /** Default: schedule.json (PHAST), calibration (TeaCache) or plan.json (--speedup). */
  out?: string;
  maxRounds: number;
  /** Search the methods the model takes for this measured speed-up instead of tuning one method. */
  speedup?: number;
  /** Instead of `speedup`: a MAC budget, the plain run's MACs over the plan's (int8, which changes no MACs, is left out). */
  macSpeedup?: number;
  /** With `speedup`: whether int8 is a rung of the search (default true). */
  int8?: boolean;
}

const TUNABLE = ['attn-reuse', 'teacache'];
/** PSNR of identical images is infinite; capped so means stay finite. */
const PSNR_CAP = 100;
/** tune --speedup (a measured target) times a plan's images again (up to MAX_REPEATS runs, the fastest kept) while they take less than this. */
const SHORT_RUN_SECONDS = 2;
const MAX_REPEATS = 3;

export async function tune(flags: TuneFlags): Promise<void> {
  const searching = flags.speedup !== undefined || flags.macSpeedup !== undefined;
  const f = { ...flags, out: flags.out ?? (searching ? 'plan.json' : 'schedule.json') };
  if (!TUNABLE.includes(f.method)) throw new InputError('--method', 'no search for this method yet', TUNABLE.join(', '), f.method);
  if (path.extname(f.out).toLowerCase() !== '.json') throw new InputError('--out', 'must be a JSON file', 'a name ending in .json', f.out);
  // The default name is set here, after the CLI checked the outputs it was given: checked now, before the search.
  if (flags.out === undefined) checkOutputFile(f.out, '--out');
  if (!(f.epsilon >= 0)) throw new InputError('--epsilon', 'wrong value', 'a number ≥ 0 (dB)', String(f.epsilon));
  if (f.speedup !== undefined && !(f.speedup > 1)) throw new InputError('--speedup', 'wrong value', 'a number above 1 (2 = twice as fast)', String(f.speedup));
  if (f.macSpeedup !== undefined && !(f.macSpeedup > 1)) throw new InputError('--mac-speedup', 'wrong value', 'a number above 1 (2 = half the MACs)', String(f.macSpeedup));
  if (f.speedup !== undefined && f.macSpeedup !== undefined) throw new InputError('--mac-speedup', 'is another target', '--speedup or --mac-speedup, not both', `--speedup ${f.speedup}`);
  const model = modelFolder(f.model);
  // Without --guidance, the pipeline's own default, as `generate` uses.
  const folder = readPipelineFolder(model);
  const guidance = f.guidance ?? pipelineDefaults(folder.className).guidanceScale;
  if (f.speedup !== undefined || f.macSpeedup !== undefined) {
    const target = f.macSpeedup === undefined ? { value: f.speedup!, gain: measuredGain, flag: '--speedup', unit: '' } : { value: f.macSpeedup, gain: macGain, flag: '--mac-speedup', unit: ' MACs' };
    return tuneSpeedup({ ...f, guidance, int8: f.macSpeedup === undefined && f.int8 !== false }, folder, target);
  }
  if (f.method === 'teacache') return calibrateTeaCacheCommand({ ...f, guidance }, folder);
  const prompts = readPromptFile(f.prompts ?? HELD_OUT_PROMPTS).slice(0, f.count);
  const calls = macCounter({ model, scheduler: f.scheduler, batch: 1, guidance }).calls(f.steps);
  if (f.reuse <= 0 || f.reuse >= calls) throw new InputError('--reuse', `must leave computing calls in a run of ${calls} model calls`, `1 … ${calls - 1}`, String(f.reuse));

  const pipeline = await loadPipeline(model, { threads: f.threads, sessionCache: commandSessionCache() });
  try {
    const request = (i: number, accel: AccelSpec[] = []) => ({
      prompt: prompts[i], seed: f.seed + i, steps: f.steps, guidanceScale: guidance, scheduler: f.scheduler, accel, memoryLimit: gibBytes(f.memoryLimit),
    });
    const search = phast(calls, f.reuse, hurry(calls, f.reuse));
    // Every schedule keeps as many maps as HURRY's: checked (memory above all) before the baseline runs.
    await pipeline.check(request(0, [search.spec(search.initial)]));
    const baseline: GeneratedImage[] = [];
    for (let i = 0; i < prompts.length; i++) baseline.push((await pipeline.generate(request(i))).images[0]);
    let evaluations = 0;
    const objective = async (spec: AccelSpec) => {
      evaluations++;
      let total = 0;
      for (let i = 0; i < prompts.length; i++) total += Math.min(PSNR_CAP, psnr((await pipeline.generate(request(i, [spec]))).images[0].data, baseline[i].data));
      return total / prompts.length;
    };
    const name = modelName(model, f.model);
    console.log(`PHAST on ${name}: ${calls} model calls, ${f.reuse} reusing, ${prompts.length} prompts, ε = ${f.epsilon} dB; objective: mean PSNR against the unaccelerated images`);
    // The file is rewritten after every round, so a long search stopped early still leaves its best schedule.
    const save = (rounds: readonly Round<number[]>[], finished: boolean) => {
      const last = rounds[rounds.length - 1];
      const report = {
        method: f.method, model: name, steps: f.steps, calls, reuse: f.reuse, scheduler: f.scheduler ?? null, guidance,
        seed: f.seed, prompts, epsilon: f.epsilon, finished, evaluations, psnr: last.objective, hurryPsnr: rounds[0].objective,
        schedule: last.state, rounds: rounds.map((r) => ({ ...r, state: r.state.join('') })),
      };
      writeFileAtomically(f.out, JSON.stringify(report, null, 1));
    };
    const result = await greedySearch(search, objective, f.epsilon, (r, rounds) => {
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
  const family = pipelineFamily(folder.className);
  const isDiT = family === 'dit';
  if (!isDiT && family !== 'pixart') {
    throw new InputError('--model', 'TeaCache calibrates a transformer pipeline', 'a PixArt or DiT folder', `${folder.className} at ${folder.dir}`);
  }
  const prompts = f.prompts !== undefined ? readPromptFile(f.prompts).slice(0, f.count) : classPrompts(folder.dir, f.count) ?? readPromptFile(HELD_OUT_PROMPTS).slice(0, f.count);
  const { runs, calls, coefficients, thresholds: table } = await calibrateTeaCache({
    model: folder.dir, prompts, steps: f.steps, guidance: f.guidance, seed: f.seed, scheduler: f.scheduler, threads: f.threads, memoryLimit: gibBytes(f.memoryLimit),
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

/** One image of the search: its prompt, and for a DiT whose prompt names no class, the class generated. */
interface Sample {
  prompt: string;
  classLabels?: number[];
}

/**
 * The prompts to tune on and as many others to check the plan on: the prompt file's first N and
 * next N; for a DiT, 2N of its classes spread over them (named where its folder has labels),
 * alternating between the two sets.
 */
function searchSamples(f: TuneFlags, folder: PipelineFolder, runner: BenchRunner, count: number): { tuning: Sample[]; heldOut: Sample[] } {
  const named = runner.kind === 'class-to-image' && f.prompts === undefined ? classPrompts(folder.dir, 2 * count) : undefined;
  const all = named ?? readPromptFile(f.prompts ?? HELD_OUT_PROMPTS).slice(0, 2 * count);
  if (all.length < 2 * count) {
    const unit = named ? 'classes' : 'prompts';
    throw new InputError(f.prompts === undefined ? '--count' : '--prompts', `${count} ${unit} to tune on and ${count} others to check the plan on`,
      `at least ${2 * count} ${unit}`, `${all.length}`);
  }
  const samples = all.map((prompt, i): Sample => {
    const classLabels = runner.spreadClass?.(prompt, i, all.length);
    return classLabels ? { prompt: `class ${classLabels[0]}`, classLabels } : { prompt };
  });
  if (runner.kind !== 'class-to-image') return { tuning: samples.slice(0, count), heldOut: samples.slice(count) };
  return { tuning: samples.filter((_, i) => i % 2 === 0), heldOut: samples.filter((_, i) => i % 2 === 1) };
}

/**
 * `tune --speedup X`: the plan of method settings (those the folder's model takes, src/tune/speedup.ts)
 * and precision with the best PSNR at a measured speed-up of at least X, checked on as many
 * held-out prompts (or classes) as it was tuned on, and written as a plan file for `--accel @FILE`.
 * int8 plans run on a second pipeline; the plain runs are fp32.
 */
async function tuneSpeedup(f: TuneFlags & { guidance: number; out: string }, folder: PipelineFolder,
  target: { value: number; gain: Gain; flag: string; unit: string }): Promise<void> {
  const count = f.count ?? 4;
  const counter = macCounter({ model: folder.dir, scheduler: f.scheduler, batch: 1, guidance: f.guidance });
  // The methods this model takes (each one's first setting counted on shapes: a refusal leaves it out), and which of them compose.
  const takes = async (plan: AccelSpec[]) => {
    try {
      await counter.count(f.steps, plan);
      return undefined;
    } catch (err) {
      if (err instanceof InputError) return err.message;
      throw err;
    }
  };
  const ladders: Ladder[] = [];
  const leftOut: string[] = [];
  for (const ladder of methodLadders(counter.calls(f.steps), f.int8 !== false, counter.declaration)) {
    const refusal = firstRung(ladder) && (await takes([firstRung(ladder)!]));
    if (refusal) leftOut.push(ladder.method);
    else ladders.push(ladder);
  }
  const pairs = new Map<string, boolean>();
  for (const [i, a] of ladders.entries()) {
    for (const b of ladders.slice(i + 1)) {
      const [x, y] = [firstRung(a), firstRung(b)];
      pairs.set(`${a.method}+${b.method}`, !x || !y || (await takes([x, y])) === undefined);
    }
  }
  const sets = composableSets(ladders, (a, b) => pairs.get(`${a.method}+${b.method}`) ?? pairs.get(`${b.method}+${a.method}`) ?? true);
  const pipelines = new Map<Precision, Promise<BenchRunner>>();
  const runnerAt = (precision: Precision) => {
    let p = pipelines.get(precision);
    if (!p) {
      p = openRunner(folder.dir, { threads: f.threads, precision, sessionCache: commandSessionCache() });
      pipelines.set(precision, p);
    }
    return p;
  };
  try {
    const fp32 = await runnerAt('fp32');
    // With int8 searched both pipelines may be held: every run counts the other's weights (float32 bytes, the same for both)
    // from the first on, so a plan measured before the int8 pipeline opened is not refused when it wins and runs again.
    const memoryLimit = heldBeside(ladders.some((l) => l.method === 'int8') ? [fp32] : [], gibBytes(f.memoryLimit));
    const { tuning, heldOut } = searchSamples(f, folder, fp32, count);
    const request = (sample: Sample, i: number, accel: AccelSpec[]): BenchRequest => ({
      prompt: sample.prompt, classLabels: sample.classLabels, seed: f.seed + i, steps: f.steps, guidanceScale: f.guidance, scheduler: f.scheduler,
      width: counter.width, height: counter.height, batch: 1, accel,
    });
    // Seconds of denoising (what the methods change), the MACs it ran (adaptive methods decide as they go) and the images, over a set of samples.
    // Timings steer only a measured target: with a MAC budget each set runs once.
    const repeats = target.gain === measuredGain ? MAX_REPEATS : 1;
    const run = async (samples: Sample[], accel: AccelSpec[], precision: Precision = 'fp32') => {
      const runner = await runnerAt(precision);
      let [seconds, macs] = [Infinity, 0];
      let images: GeneratedImage[] = [];
      // Short runs are mostly timing noise: repeated (same images) and the fastest kept.
      for (let repeat = 0; repeat < repeats && (repeat === 0 || seconds < SHORT_RUN_SECONDS); repeat++) {
        [macs, images] = [0, []];
        let total = 0;
        for (const [i, sample] of samples.entries()) {
          const r = await runner.run({ ...request(sample, i, accel), memoryLimit });
          total += r.timings.denoising;
          macs += fullMacs(r.denoiserMacs);
          images.push(r.images[0]);
        }
        seconds = Math.min(seconds, total);
      }
      return { seconds, macs, images };
    };
    const meanPsnr = (a: GeneratedImage[], b: GeneratedImage[]) => a.reduce((sum, image, i) => sum + Math.min(PSNR_CAP, psnr(image.data, b[i].data)), 0) / a.length;
    // A plan's first run creates its sessions (merged-token variants): one untimed run first.
    const warm = async (accel: AccelSpec[], precision: Precision) => (await runnerAt(precision)).run({ ...request(tuning[0], 0, accel), memoryLimit });
    await warm([], 'fp32');
    const baseline = await run(tuning, []);
    const measure = async (plan: AccelSpec[], precision: Precision): Promise<Measured> => {
      if (plan.length === 0 && precision === 'fp32') return { plan, precision, speedup: 1, macSpeedup: 1, psnr: PSNR_CAP };
      // A plan this machine cannot run (its caches over the memory limit) is left out of the climb, not the end of the search.
      try {
        await (await runnerAt(precision)).check({ ...request(tuning[0], 0, plan), memoryLimit });
      } catch (err) {
        if (!(err instanceof InputError)) throw err;
        console.log(`  not taken: ${describePlan(plan, precision)}: ${err.message}`);
        return { plan, precision, speedup: 0, macSpeedup: 0, psnr: -Infinity, refused: err.message };
      }
      await warm(plan, precision);
      const r = await run(tuning, plan, precision);
      return { plan, precision, speedup: baseline.seconds / r.seconds, macSpeedup: baseline.macs / r.macs, psnr: meanPsnr(r.images, baseline.images) };
    };
    const what = (await runnerAt('fp32')).kind === 'class-to-image' ? (count === 1 ? 'class' : 'classes') : count === 1 ? 'prompt' : 'prompts';
    console.log(`tune ${target.flag} ${target.value} on ${modelName(folder.dir, f.model)}: ${f.steps} steps, ${count} ${what} (and ${count} held out), ` +
      `plain denoising ${baseline.seconds.toFixed(2)} s; each round takes the step up that loses the least PSNR per speed gained`);
    if (leftOut.length) console.log(`  this model takes no ${leftOut.join(', ')}`);
    const measured = new Map<string, Measured>();
    const climbs: Measured[][] = [];
    for (const set of sets) {
      if (sets.length > 1) console.log(`  climb over ${set.map((l) => l.method).join(', ')}:`);
      const { path: climb } = await climbToSpeedup(set, target.value, measure, (round, pick, tried) => {
        console.log(`  round ${round}: ${describePlan(pick.plan, pick.precision)}  ×${pick.speedup.toFixed(2)} measured (×${pick.macSpeedup.toFixed(2)} MACs), PSNR ${pick.psnr.toFixed(2)} dB  (${tried} tried)`);
      }, measured, target.gain);
      climbs.push(climb);
    }
    const all = [...measured.values()];
    const front = frontier(all, target.gain);
    console.log('frontier (measured speed-up, MAC speed-up, PSNR against the plain images):');
    for (const m of front) console.log(`  ×${m.speedup.toFixed(2).padEnd(5)} ×${m.macSpeedup.toFixed(2).padEnd(5)} ${m.psnr.toFixed(2).padStart(6)} dB  ${describePlan(m.plan, m.precision)}`);
    const reaching = all.filter((m) => target.gain(m) >= target.value);
    const fastest = climbs.map((c) => c[c.length - 1]).reduce((a, b) => (target.gain(b) > target.gain(a) ? b : a));
    const winner = reaching.length ? reaching.reduce((a, b) => (b.psnr > a.psnr ? b : a)) : fastest;
    if (!reaching.length) console.log(`no plan reached ×${target.value}${target.unit}; the fastest found is written`);
    // The same plan on samples the search never saw: a PSNR far below the tuning one says it was fitted to them.
    const heldBaseline = await run(heldOut, []);
    const heldPlan = await run(heldOut, winner.plan, winner.precision);
    const heldPsnr = meanPsnr(heldPlan.images, heldBaseline.images);
    writePlanFile(f.out, { accel: winner.plan, precision: winner.precision }, {
      model: modelName(folder.dir, f.model), steps: f.steps, scheduler: f.scheduler ?? null, guidance: f.guidance, target: target.value, targetKind: target.gain === macGain ? 'MACs' : 'measured',
      speedup: winner.speedup, macSpeedup: winner.macSpeedup, psnr: winner.psnr, heldOutPsnr: heldPsnr, heldOutSpeedup: heldBaseline.seconds / heldPlan.seconds,
      prompts: tuning.map((s) => s.prompt), heldOut: heldOut.map((s) => s.prompt),
      frontier: front.map((m) => ({ accel: describePlan(m.plan, m.precision), speedup: m.speedup, macSpeedup: m.macSpeedup, psnr: m.psnr })),
    });
    console.log(`wrote ${f.out}: ${describePlan(winner.plan, winner.precision)}: ×${winner.speedup.toFixed(2)} measured, PSNR ${winner.psnr.toFixed(2)} dB on the tuning ${what}, ` +
      `${heldPsnr.toFixed(2)} dB (×${(heldBaseline.seconds / heldPlan.seconds).toFixed(2)}) on ${count} held-out ${count === 1 ? 'one' : 'ones'}; run it with --accel @${f.out}`);
  } finally {
    await Promise.allSettled([...pipelines.values()].map(async (p) => (await p).release()));
  }
}
