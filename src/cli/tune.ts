/**
 * `diffuse tune`: searches a method's discrete knobs for the setting whose images stay closest
 * (PSNR) to the unaccelerated sampler's, with greedy local search (src/tune/greedy.ts): PHAST for
 * attention-map reuse, starting from HURRY(N, r), writing the schedule as JSON for
 * `--accel attn-reuse:schedule=FILE`. For TeaCache it calibrates instead: the rescaling
 * polynomial fitted on the user's model and prompts (src/tune/teacache-calibration.ts).
 */
import { commandSessionCache } from '../runtime/session-cache.ts';
import * as path from 'node:path';
import { InputError } from '../errors.ts';
import { hurry } from '../accel/attn-reuse.ts';
import type { AccelSpec } from '../accel/index.ts';
import { macCounter } from '../bench/mac-counter.ts';
import { psnr } from '../metrics/image.ts';
import { modelFolder } from '../pipelines/reference-model.ts';
import { loadPipeline, type GeneratedImage } from '../pipelines/stable-diffusion.ts';
import { calibrateTeaCache } from '../tune/teacache-calibration.ts';
import { classPrompts } from '../bench/fidelity.ts';
import { readPipelineFolder, type PipelineFolder } from '../weights/diffusers-folder.ts';
import { pipelineDefaults } from '../pipelines/common.ts';
import { modelName } from './generate.ts';
import { HELD_OUT_PROMPTS, readPromptFile } from '../scenes/captions.ts';
import type { SchedulerName } from '../schedulers/index.ts';
import { greedySearch, phast, type Round } from '../tune/greedy.ts';
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
  out: string;
  maxRounds: number;
}

const TUNABLE = ['attn-reuse', 'teacache'];
/** PSNR of identical images is infinite; capped so means stay finite. */
const PSNR_CAP = 100;

export async function tune(f: TuneFlags): Promise<void> {
  if (!TUNABLE.includes(f.method)) throw new InputError('--method', 'no search for this method yet', TUNABLE.join(', '), f.method);
  if (path.extname(f.out).toLowerCase() !== '.json') throw new InputError('--out', 'must be a JSON file', 'a name ending in .json', f.out);
  if (!(f.epsilon >= 0)) throw new InputError('--epsilon', 'wrong value', 'a number ≥ 0 (dB)', String(f.epsilon));
  const model = modelFolder(f.model);
  // Without --guidance, the pipeline's own default, as `generate` uses.
  const folder = readPipelineFolder(model);
  const guidance = f.guidance ?? pipelineDefaults(folder.className).guidanceScale;
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
async function calibrateTeaCacheCommand(f: TuneFlags & { guidance: number }, folder: PipelineFolder): Promise<void> {
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
