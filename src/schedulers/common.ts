/**
 * What the schedulers share: the beta schedule and alphas_cumprod table, numpy's arange /
 * linspace / round / interp as diffusers calls them, Karras sigmas and sigma→t, config readers and
 * argument checks.
 *
 * diffusers keeps its tables in float32 (torch.linspace(..., dtype=float32), torch.cumprod) and
 * some schedule arithmetic in float64 (numpy). We mirror the dtype of every table and scalar
 * coefficient with Math.fround where diffusers is in float32; the per-element arithmetic runs in
 * float64 and is rounded once when stored, which is within a few float32 ulps of torch.
 */
import { InputError, describe } from '../errors.ts';
import { cfgBool, cfgInt, cfgNumber, cfgNumberList, cfgOneOf, type Config } from '../weights/config.ts';
import type { Scheduler, SchedulerState } from './types.ts';

export const f32 = Math.fround;

// ---------------------------------------------------------------------------------------------
// numpy / torch emulation

/** numpy's round(): half to even. */
export function roundHalfEven(x: number): number {
  if (Math.abs(x % 1) === 0.5) return 2 * Math.round(x / 2);
  return Math.round(x);
}

/** np.arange(start, stop, step) for floats: length ceil((stop-start)/step), values start + i*delta. */
export function npArange(start: number, stop: number, step: number): number[] {
  const length = Math.ceil((stop - start) / step);
  if (!(length > 0)) return [];
  const out = [start];
  if (length > 1) {
    // numpy stores start and start+step, then fills start + i*(second - start).
    const second = start + step;
    const delta = second - start;
    out.push(second);
    for (let i = 2; i < length; i++) out.push(start + i * delta);
  }
  return out;
}

/** np.linspace(start, stop, num, endpoint) in float64. */
export function npLinspace(start: number, stop: number, num: number, endpoint = true): number[] {
  const div = endpoint ? num - 1 : num;
  const delta = stop - start;
  const out: number[] = [];
  if (div > 0) {
    const step = delta / div;
    for (let i = 0; i < num; i++) out.push(step === 0 ? (i / div) * delta + start : i * step + start);
  } else {
    for (let i = 0; i < num; i++) out.push(i * delta + start);
  }
  if (endpoint && num > 1) out[num - 1] = stop;
  return out;
}

/** np.interp(x, [0, 1, ..., fp.length-1], fp) in float64 (fp's values as numbers). */
export function interpIndex(x: number, fp: ArrayLike<number>): number {
  const n = fp.length;
  if (x <= 0) return fp[0];
  if (x >= n - 1) return fp[n - 1];
  const j = Math.floor(x);
  if (j === x) return fp[j];
  const slope = (fp[j + 1] - fp[j]) / 1;
  return slope * (x - j) + fp[j];
}

/** torch.linspace(start, end, steps, dtype=float32) on CPU (scalar path: from both ends). */
export function torchLinspaceF32(start: number, end: number, steps: number): Float32Array {
  const out = new Float32Array(steps);
  const s = f32(start);
  const e = f32(end);
  if (steps === 1) {
    out[0] = s;
    return out;
  }
  const step = f32(f32(e - s) / (steps - 1));
  const halfway = Math.floor(steps / 2);
  for (let i = 0; i < steps; i++) {
    out[i] = i < halfway ? f32(s + f32(step * i)) : f32(e - f32(step * (steps - i - 1)));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Beta schedules

export const BETA_SCHEDULES = ['linear', 'scaled_linear', 'squaredcos_cap_v2'] as const;
export type BetaSchedule = typeof BETA_SCHEDULES[number];

export interface BetaDefaults {
  beta_start: number;
  beta_end: number;
  beta_schedule: BetaSchedule;
}

/** diffusers' betas_for_alpha_bar (cosine, max_beta 0.999), computed in float64 then stored as float32. */
function cosineBetas(n: number): Float32Array {
  const alphaBar = (t: number) => {
    const c = Math.cos(((t + 0.008) / 1.008) * Math.PI / 2);
    return c * c;
  };
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.min(1 - alphaBar((i + 1) / n) / alphaBar(i / n), 0.999);
  return out;
}

/**
 * Rescales betas to zero terminal SNR (Lin et al. 2023, Algorithm 1), in float32 as diffusers:
 * the last alphas_cumprod becomes exactly 0.
 */
export function rescaleZeroTerminalSnr(betas: Float32Array): Float32Array {
  const n = betas.length;
  const sqrtBar = new Float32Array(n);
  let acc = 1;
  for (let i = 0; i < n; i++) {
    acc *= f32(1 - betas[i]);
    sqrtBar[i] = f32(Math.sqrt(f32(acc)));
  }
  const first = sqrtBar[0];
  const last = sqrtBar[n - 1];
  const scale = f32(first / f32(first - last));
  const bar = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const s = f32(f32(sqrtBar[i] - last) * scale);
    bar[i] = f32(s * s);
  }
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const alpha = i === 0 ? bar[0] : f32(bar[i] / bar[i - 1]);
    out[i] = f32(1 - alpha);
  }
  return out;
}

export interface NoiseSchedule {
  numTrainTimesteps: number;
  betaSchedule: BetaSchedule;
  /** float32, one per training timestep. */
  alphasCumprod: Float32Array;
}

/**
 * Reads num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas (and, where the
 * class has it, rescale_betas_zero_snr) and returns alphas_cumprod: float32 like torch.cumprod, whose
 * CPU kernel accumulates in float64 and rounds each output.
 */
export function readNoiseSchedule(cfg: Config, where: string, defaults: BetaDefaults, hasZeroSnr: boolean): NoiseSchedule & { zeroSnr: boolean } {
  const numTrainTimesteps = cfgInt(cfg, 'num_train_timesteps', where, 1000);
  if (numTrainTimesteps < 2) {
    throw new InputError(`${where}: num_train_timesteps`, 'too small', 'an integer >= 2', `${numTrainTimesteps}`);
  }
  const betaSchedule = cfgOneOf(cfg, 'beta_schedule', where, BETA_SCHEDULES, defaults.beta_schedule);
  let betas: Float32Array;
  if (cfg.trained_betas !== undefined && cfg.trained_betas !== null) {
    const list = cfgNumberList(cfg, 'trained_betas', where);
    if (list.length !== numTrainTimesteps) {
      throw new InputError(`${where}: trained_betas`, 'wrong length', `${numTrainTimesteps} values (num_train_timesteps)`, `${list.length}`);
    }
    betas = Float32Array.from(list);
  } else if (betaSchedule === 'linear') {
    betas = torchLinspaceF32(cfgNumber(cfg, 'beta_start', where, defaults.beta_start), cfgNumber(cfg, 'beta_end', where, defaults.beta_end), numTrainTimesteps);
  } else if (betaSchedule === 'scaled_linear') {
    const start = Math.sqrt(cfgNumber(cfg, 'beta_start', where, defaults.beta_start));
    const end = Math.sqrt(cfgNumber(cfg, 'beta_end', where, defaults.beta_end));
    betas = torchLinspaceF32(start, end, numTrainTimesteps).map((b) => f32(b * b));
  } else {
    betas = cosineBetas(numTrainTimesteps);
  }
  for (let i = 0; i < betas.length; i++) {
    if (!(betas[i] >= 0 && betas[i] <= 1)) {
      throw new InputError(`${where}: ${cfg.trained_betas != null ? 'trained_betas' : 'beta_start/beta_end'}`, `beta ${i} is outside [0, 1]`, 'betas in [0, 1]', `${betas[i]}`);
    }
  }
  const zeroSnr = hasZeroSnr && cfgBool(cfg, 'rescale_betas_zero_snr', where, false);
  if (zeroSnr) betas = rescaleZeroTerminalSnr(betas);
  const alphasCumprod = new Float32Array(numTrainTimesteps);
  let acc = 1;
  for (let i = 0; i < numTrainTimesteps; i++) {
    acc *= f32(1 - betas[i]);
    alphasCumprod[i] = acc;
  }
  return { numTrainTimesteps, betaSchedule, alphasCumprod, zeroSnr };
}

// ---------------------------------------------------------------------------------------------
// Timestep spacings (the integer grids; each scheduler then orders/offsets them as diffusers does)

export const SPACINGS = ['leading', 'trailing', 'linspace'] as const;
export type Spacing = typeof SPACINGS[number];

/** 'leading': (arange(n) * (N // n)) — ascending, without steps_offset. */
export function leadingGrid(numTrain: number, n: number): number[] {
  const ratio = Math.floor(numTrain / n);
  return Array.from({ length: n }, (_, i) => i * ratio);
}

/** 'trailing': round(arange(N, 0, -N/n)) — descending, before the -1. */
export function trailingGrid(numTrain: number, n: number): number[] {
  return npArange(numTrain, 0, -(numTrain / n)).map(roundHalfEven);
}

// ---------------------------------------------------------------------------------------------
// Sigmas (k-diffusion parametrisation: sigma = sqrt((1 - alphas_cumprod) / alphas_cumprod))

/** float32 sigmas per training timestep, ascending with t. */
export function trainSigmas(alphasCumprod: Float32Array): Float32Array {
  return alphasCumprod.map((a) => f32(Math.sqrt(f32(f32(1 - a) / a))));
}

/** Karras et al. (2022) sigmas, rho = 7, from sigmaMax down to sigmaMin, float64. */
export function karrasSigmas(sigmaMin: number, sigmaMax: number, n: number): number[] {
  const rho = 7;
  const minInv = sigmaMin ** (1 / rho);
  const maxInv = sigmaMax ** (1 / rho);
  return npLinspace(0, 1, n).map((r) => (maxInv + r * (minInv - maxInv)) ** rho);
}

/**
 * diffusers' _sigma_to_t: the fractional training timestep whose log-sigma is `sigma`'s, by
 * linear interpolation in log-sigma. `logSigmas` are float32 (np.log of a float32 array).
 */
export function sigmaToT(sigma: number, logSigmas: Float32Array): number {
  const logSigma = Math.log(Math.max(sigma, 1e-10));
  const n = logSigmas.length;
  // low = last index with logSigmas[j] <= logSigma (0 if none), at most n-2.
  let low = 0;
  for (let j = 0; j < n; j++) if (logSigma - logSigmas[j] >= 0) low = j;
  low = Math.min(low, n - 2);
  const lo = logSigmas[low];
  const hi = logSigmas[low + 1];
  let w = (lo - logSigma) / f32(lo - hi);
  w = Math.min(Math.max(w, 0), 1);
  return (1 - w) * low + w * (low + 1);
}

// ---------------------------------------------------------------------------------------------
// Config helpers

export const PREDICTION_TYPES = ['epsilon', 'v_prediction', 'sample'] as const;
export type PredictionType = typeof PREDICTION_TYPES[number];

/** Refuses a boolean option we do not implement when it is set to true. */
export function refuseTrue(cfg: Config, key: string, where: string, why: string): void {
  if (cfgBool(cfg, key, where, false)) {
    throw new InputError(`${where}: ${key}`, `true is not supported (${why})`, 'false', 'true');
  }
}

/** Refuses any value of a string option other than the ones we implement. */
export function refuseOtherThan<T extends string>(cfg: Config, key: string, where: string, supported: readonly T[], dflt: T, why: string): T {
  const value = cfg[key];
  if (value === undefined || value === null) return dflt;
  if (typeof value === 'string' && (supported as readonly string[]).includes(value)) return value as T;
  throw new InputError(`${where}: ${key}`, `not supported (${why})`, `one of ${supported.map((s) => JSON.stringify(s)).join(', ')}`, describe(value));
}

/** Checks the step count: a positive integer no larger than `max` (named by `maxWhat`). */
export function checkSteps(steps: number, max: number, maxWhat: string): void {
  if (!Number.isSafeInteger(steps) || steps < 1) {
    throw new InputError('steps', 'the number of inference steps must be a positive integer', 'an integer >= 1', describe(steps));
  }
  if (steps > max) {
    throw new InputError('steps', `too many inference steps for ${maxWhat}`, `at most ${max}`, `${steps}`);
  }
}

/** Every table index a schedule will use must exist (a large steps_offset could push it out). */
export function checkTimestepRange(timesteps: readonly number[], numTrain: number, where: string): void {
  const bad = timesteps.find((t) => !(t >= 0 && t <= numTrain - 1));
  if (bad !== undefined) {
    throw new InputError(`${where}: steps_offset`, 'the schedule reaches a timestep outside the training range',
      `timesteps in [0, ${numTrain - 1}]`, `${bad}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Step argument checks (programming errors in the caller, not input errors)

/**
 * The scheduler with every call's arguments checked (index in range, state for this step, arrays
 * of equal length), so each method's code holds only its arithmetic; and its beginState.
 */
export function withArgumentChecks(s: Omit<Scheduler, 'beginState'>): Scheduler {
  const name = s.className;
  const count = s.timesteps.length;
  return {
    ...s,
    // Every method's initial state is its position plus history that starts empty.
    beginState(i) {
      checkIndex(name, 'beginState', i, count);
      return Object.freeze({ ...s.initialState, index: i });
    },
    needsNoise(i) {
      checkIndex(name, 'needsNoise', i, count);
      return s.needsNoise(i);
    },
    scaleModelInput(sample, i) {
      checkIndex(name, 'scaleModelInput', i, count);
      return s.scaleModelInput(sample, i);
    },
    step(state, modelOutput, i, sample, noise, variance) {
      checkStepArgs(name, state, i, count, modelOutput, sample);
      return s.step(state, modelOutput, i, sample, noise, variance);
    },
    addNoise(original, noise, i) {
      checkIndex(name, 'addNoise', i, count);
      checkSameLength(name, 'addNoise', original, noise);
      return s.addNoise(original, noise, i);
    },
  };
}

function checkStepArgs(name: string, state: SchedulerState, i: number, count: number,
  modelOutput: Float32Array, sample: Float32Array): void {
  if (!Number.isInteger(i) || i < 0 || i >= count) {
    throw new RangeError(`${name}.step: step index ${i} outside 0..${count - 1}`);
  }
  if (state.index !== i) {
    throw new Error(`${name}.step: state is for step ${state.index}, not step ${i} (pass the state returned by the previous step)`);
  }
  if (modelOutput.length !== sample.length) {
    throw new RangeError(`${name}.step: model output has ${modelOutput.length} values, sample has ${sample.length}`);
  }
}

function checkIndex(name: string, what: string, i: number, count: number): void {
  if (!Number.isInteger(i) || i < 0 || i >= count) {
    throw new RangeError(`${name}.${what}: step index ${i} outside 0..${count - 1}`);
  }
}

export function requireNoise(name: string, noise: Float32Array | undefined, length: number): Float32Array {
  if (noise === undefined) {
    throw new Error(`${name}.step: this step takes noise (needsNoise(i) is true); pass a standard-normal array from our Rng`);
  }
  if (noise.length !== length) {
    throw new RangeError(`${name}.step: noise has ${noise.length} values, sample has ${length}`);
  }
  return noise;
}

function checkSameLength(name: string, what: string, a: Float32Array, b: Float32Array): void {
  if (a.length !== b.length) throw new RangeError(`${name}.${what}: arrays differ in length (${a.length} vs ${b.length})`);
}

/** a * x + b * y, elementwise, as a new array. */
export function axpby(a: number, x: Float32Array, b: number, y: Float32Array): Float32Array {
  const out = new Float32Array(x.length);
  for (let k = 0; k < x.length; k++) out[k] = a * x[k] + b * y[k];
  return out;
}

/** x * a, elementwise, as a new array. */
export function scale(x: Float32Array, a: number): Float32Array {
  const out = new Float32Array(x.length);
  for (let k = 0; k < x.length; k++) out[k] = x[k] * a;
  return out;
}
