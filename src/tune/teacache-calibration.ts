/**
 * Fitting TeaCache's rescaling polynomial to a model (users' top complaint about TeaCache:
 * coefficients fitted to someone else's model): least squares of the output change against the
 * modulated-input change, as the TeaCache authors fit theirs (numpy.polyfit, degree 4), and the
 * share of calls each threshold would compute on the recorded runs.
 */
import { polynomial, teaCacheRecorder } from '../accel/teacache.ts';
import { openRunner } from '../bench/runner.ts';
import type { SchedulerName } from '../schedulers/index.ts';
import { InputError } from '../errors.ts';

/** The TeaCache authors fit degree 4 (numpy.polyfit). */
const DEGREE = 4;

/** Least-squares polynomial of `degree` through (x, y), numpy.polyfit's order: highest power first. */
export function fitPolynomial(xs: number[], ys: number[], degree: number): number[] {
  const n = degree + 1;
  if (xs.length < n) throw new Error(`${xs.length} samples cannot fit a degree-${degree} polynomial`);
  // Normal equations A c = b over powers 0…degree, solved with partial pivoting.
  const a = Array.from({ length: n }, (_, i) => Array.from({ length: n }, (_, j) => xs.reduce((s, x) => s + x ** (i + j), 0)));
  const b = Array.from({ length: n }, (_, i) => xs.reduce((s, x, k) => s + ys[k] * x ** i, 0));
  for (let col = 0; col < n; col++) {
    let pivot = col;
    for (let r = col + 1; r < n; r++) if (Math.abs(a[r][col]) > Math.abs(a[pivot][col])) pivot = r;
    [a[col], a[pivot]] = [a[pivot], a[col]];
    [b[col], b[pivot]] = [b[pivot], b[col]];
    for (let r = col + 1; r < n; r++) {
      const f = a[r][col] / a[col][col];
      for (let c = col; c < n; c++) a[r][c] -= f * a[col][c];
      b[r] -= f * b[col];
    }
  }
  const c = new Array<number>(n).fill(0);
  for (let r = n - 1; r >= 0; r--) c[r] = (b[r] - a[r].slice(r + 1).reduce((s, v, k) => s + v * c[r + 1 + k], 0)) / a[r][r];
  return c.reverse();
}

/** The calls TeaCache's rule computes for one run of input changes (calls 1…n−1; call 0 and the last always compute). */
export function computedCalls(changes: number[], rescale: (x: number) => number, threshold: number): number {
  const calls = changes.length + 1;
  let computed = 2;
  let accumulated = 0;
  for (let c = 1; c < calls - 1; c++) {
    accumulated += rescale(changes[c - 1]);
    if (accumulated < threshold) continue;
    computed++;
    accumulated = 0;
  }
  return computed;
}

/** Thresholds a calibration reports the computed share of calls for. */
export const TEACACHE_THRESHOLDS = [0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.2];

export interface CalibrationRequest {
  /** A PixArt or DiT pipeline folder. */
  model: string;
  /** One uncached run each; for a DiT, class names (or anything: then classes spread over its classes). */
  prompts: string[];
  steps: number;
  guidance: number;
  /** Seed of the first run; the next get +1, +2, … */
  seed: number;
  scheduler?: SchedulerName;
  threads?: number;
  /** Bytes a run may take at its peak (default: this machine's memory). */
  memoryLimit?: number;
}

export interface Calibration {
  /** Model calls per run. */
  calls: number;
  /** Every run's (input change, output change) pairs. */
  runs: { x: number; y: number }[][];
  /** numpy.polyfit's order: highest power first. */
  coefficients: number[];
  /** Per threshold: the calls a run computes on average, and the fewer block-stack runs that means. */
  thresholds: { rel_l1_thresh: number; computedCalls: number; callSpeedup: number }[];
}

/** TeaCache's polynomial fitted on uncached runs of the model (degree 4, as the TeaCache authors fit theirs). */
export async function calibrateTeaCache(r: CalibrationRequest): Promise<Calibration> {
  const runs: { x: number; y: number }[][] = [];
  const pipeline = await openRunner(r.model, { threads: r.threads });
  try {
    for (let i = 0; i < r.prompts.length; i++) {
      const { plan, samples } = teaCacheRecorder();
      // A DiT: the class the prompt names, else one class per run spread over its classes.
      const classLabels = pipeline.spreadClass?.(r.prompts[i], i, r.prompts.length);
      await pipeline.run({ prompt: r.prompts[i], seed: r.seed + i, steps: r.steps, guidanceScale: r.guidance, scheduler: r.scheduler, plans: [plan],
        width: pipeline.defaultSize, height: pipeline.defaultSize, batch: 1, classLabels, output: 'latent', memoryLimit: r.memoryLimit });
      runs.push(samples);
    }
  } finally {
    await pipeline.release();
  }
  const all = runs.flat();
  if (all.length < DEGREE + 1) {
    throw new InputError('steps', `${all.length} (input change, output change) pairs cannot fit TeaCache's degree-${DEGREE} polynomial`,
      `at least ${DEGREE + 1} (a run of N model calls gives N − 1): more steps or more prompts`, `${r.steps} steps × ${r.prompts.length} prompts`);
  }
  const coefficients = fitPolynomial(all.map((s) => s.x), all.map((s) => s.y), DEGREE);
  const rescale = polynomial(coefficients.join(':'), 'coefficients');
  const calls = runs[0].length + 1;
  const thresholds = TEACACHE_THRESHOLDS.map((threshold) => {
    const computed = runs.reduce((sum, run) => sum + computedCalls(run.map((s) => s.x), rescale, threshold), 0) / runs.length;
    return { rel_l1_thresh: threshold, computedCalls: computed, callSpeedup: calls / computed };
  });
  return { calls, runs, coefficients, thresholds };
}
