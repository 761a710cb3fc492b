/**
 * PNDM (Liu et al. 2022), as diffusers' PNDMScheduler: pseudo linear multistep (PLMS) — an
 * Adams–Bashforth combination of up to four past noise predictions fed to the DDIM-like transfer
 * x_t → x_{t-δ} — optionally started with Runge–Kutta (PRK) warm-up steps.
 *
 * diffusers quirks reproduced:
 * - skip_prk_steps=true (SD's default): the U-Net runs steps+1 times; the second timestep is
 *   repeated (901, 801, 801, 701, ...). The first call steps t → t-δ with the raw prediction; the
 *   second call, at t-δ, restarts from the *first* sample and steps t → t-δ again with the mean of
 *   both predictions (a Heun-like correction); then 2nd, 3rd and 4th order Adams–Bashforth follow.
 * - skip_prk_steps=false: 12 PRK calls over the last four grid timesteps (and their midpoints
 *   t + (N // n) // 2), then PLMS from the fourth-to-last grid point on: steps+9 calls. PNDM's own
 *   default is false, so `pndm` on a folder config without skip_prk_steps gets PRK, as in diffusers.
 * - δ is always N // n regardless of spacing, and 'linspace' / 'trailing' grids come out ascending
 *   before being reversed (see `pndmGrid`).
 * - prediction_type 'sample' is not supported (diffusers raises); v_prediction is converted to
 *   epsilon first.
 */
import { cfgBool, cfgInt, cfgOneOf, type Config } from '../weights/config.ts';
import {
  SPACINGS, checkSteps, checkTimestepRange, f32, leadingGrid,
  npLinspace, readNoiseSchedule, roundHalfEven, trailingGrid, type Spacing, withArgumentChecks,
} from './common.ts';
import { addNoiseAlphas } from './ddim.ts';
import { InputError } from '../errors.ts';
import type { Scheduler, SchedulerState, StepOutput } from './types.ts';

/** Python's 1/6, 1/3, 1/24 as the float32 scalars torch multiplies with. */
const SIXTH = f32(1 / 6);
const THIRD = f32(1 / 3);
const TWENTY_FOURTH = f32(1 / 24);

interface PndmState extends SchedulerState {
  /** diffusers' `counter`: steps taken. */
  readonly counter: number;
  /** Past noise predictions, oldest first (at most 4 kept). */
  readonly ets: readonly Float32Array[];
  /** The sample the current PRK group / the first PLMS step started from. */
  readonly curSample: Float32Array | null;
  /** PRK's running weighted sum of model outputs. */
  readonly curModelOutput: Float32Array | null;
}

/** diffusers' `_timesteps`: the ascending grid (leading includes steps_offset). */
function pndmGrid(spacing: Spacing, N: number, n: number, stepsOffset: number): number[] {
  if (spacing === 'linspace') return npLinspace(0, N - 1, n).map(roundHalfEven);
  if (spacing === 'leading') return leadingGrid(N, n).map((t) => t + stepsOffset);
  return trailingGrid(N, n).reverse().map((t) => t - 1);
}

export function createPndm(cfg: Config, where: string, options: { steps: number }): Scheduler {
  const schedule = readNoiseSchedule(cfg, where, { beta_start: 0.0001, beta_end: 0.02, beta_schedule: 'linear' }, false);
  const ac = schedule.alphasCumprod;
  const N = schedule.numTrainTimesteps;
  const prediction = cfgOneOf(cfg, 'prediction_type', where, ['epsilon', 'v_prediction'] as const, 'epsilon');
  const skipPrk = cfgBool(cfg, 'skip_prk_steps', where, false);
  const finalAlpha = cfgBool(cfg, 'set_alpha_to_one', where, false) ? 1 : ac[0];
  const stepsOffset = cfgInt(cfg, 'steps_offset', where, 0);
  const spacing = cfgOneOf(cfg, 'timestep_spacing', where, SPACINGS, 'leading');
  const n = options.steps;
  checkSteps(n, N, `num_train_timesteps (${N}) in ${where}`);
  if (!skipPrk && n < 4) {
    throw new InputError('steps', 'PNDM with PRK warm-up (skip_prk_steps false) needs at least 4 steps', 'at least 4', `${n}`);
  }
  const stride = Math.floor(N / n);
  const grid = pndmGrid(spacing, N, n, stepsOffset);

  let prkTimesteps: number[] = [];
  let plmsTimesteps: number[];
  if (skipPrk) {
    plmsTimesteps = [...grid.slice(0, -1), ...grid.slice(-2, -1), ...grid.slice(-1)].reverse();
  } else {
    const half = Math.floor(stride / 2);
    const pairs = grid.slice(-4).flatMap((t) => [t, t + half]).slice(0, -1);
    prkTimesteps = pairs.flatMap((t) => [t, t]).slice(1, -1).reverse();
    plmsTimesteps = grid.slice(0, -3).reverse();
  }
  const timesteps = [...prkTimesteps, ...plmsTimesteps];
  checkTimestepRange(timesteps, N, where);
  const numPrk = prkTimesteps.length;
  const name = 'PNDMScheduler';

  const alphaAt = (t: number) => (t >= 0 ? ac[t] : finalAlpha);

  /** diffusers' _get_prev_sample: the DDIM-style transfer from t to prevT with a noise estimate. */
  function prevSample(sample: Float32Array, t: number, prevT: number, modelOutput: Float32Array): Float32Array {
    if (t > N - 1) throw new RangeError(`${name}: timestep ${t} outside the training range`);
    const a = ac[t];
    const aPrev = alphaAt(prevT);
    const b = f32(1 - a);
    const bPrev = f32(1 - aPrev);
    const sa = f32(Math.sqrt(a));
    const sb = f32(Math.sqrt(b));
    const sampleCoef = f32(Math.sqrt(f32(aPrev / a)));
    const denom = f32(f32(a * f32(Math.sqrt(bPrev))) + f32(Math.sqrt(f32(f32(a * b) * aPrev))));
    const diff = f32(aPrev - a);
    const out = new Float32Array(sample.length);
    for (let k = 0; k < sample.length; k++) {
      let e = modelOutput[k];
      if (prediction === 'v_prediction') e = f32(f32(sa * e) + f32(sb * sample[k]));
      out[k] = f32(sampleCoef * sample[k]) - f32(f32(diff * e) / denom);
    }
    return out;
  }

  function stepPrk(s: PndmState, mo: Float32Array, t: number, sample: Float32Array): StepOutput {
    const c = s.counter;
    const prevT = t - (c % 2 ? 0 : Math.floor(stride / 2));
    const groupT = prkTimesteps[Math.floor(c / 4) * 4];
    let ets = s.ets;
    let curSample = s.curSample;
    let acc = s.curModelOutput;
    let used = mo;
    const len = mo.length;
    if (c % 4 === 0) {
      acc = new Float32Array(len);
      for (let k = 0; k < len; k++) acc[k] = SIXTH * mo[k];
      ets = [...ets, mo.slice()];
      curSample = sample.slice();
    } else if (c % 4 === 1 || c % 4 === 2) {
      const next = new Float32Array(len);
      for (let k = 0; k < len; k++) next[k] = acc![k] + f32(THIRD * mo[k]);
      acc = next;
    } else {
      used = new Float32Array(len);
      for (let k = 0; k < len; k++) used[k] = acc![k] + f32(SIXTH * mo[k]);
      acc = null;
    }
    const prev = prevSample(curSample ?? sample, groupT, prevT, used);
    return { prevSample: prev, state: Object.freeze({ index: s.index + 1, counter: c + 1, ets, curSample, curModelOutput: acc }) };
  }

  function stepPlms(s: PndmState, mo: Float32Array, t: number, sample: Float32Array): StepOutput {
    const c = s.counter;
    let prevT = t - stride;
    let ets = s.ets;
    if (c !== 1) {
      ets = [...ets.slice(-3), mo.slice()];
    } else {
      prevT = t;
      t = t + stride;
    }
    let curSample = s.curSample;
    const len = mo.length;
    let e: Float32Array;
    let from = sample;
    const E = (j: number) => ets[ets.length - j];
    if (ets.length === 1 && c === 0) {
      e = mo;
      curSample = sample.slice();
    } else if (ets.length === 1 && c === 1) {
      e = new Float32Array(len);
      const e1 = E(1);
      for (let k = 0; k < len; k++) e[k] = f32(mo[k] + e1[k]) / 2;
      from = curSample!;
      curSample = null;
    } else if (ets.length === 2) {
      e = new Float32Array(len);
      const [e1, e2] = [E(1), E(2)];
      for (let k = 0; k < len; k++) e[k] = f32(f32(3 * e1[k]) - e2[k]) / 2;
    } else if (ets.length === 3) {
      e = new Float32Array(len);
      const [e1, e2, e3] = [E(1), E(2), E(3)];
      for (let k = 0; k < len; k++) e[k] = f32(f32(f32(23 * e1[k]) - f32(16 * e2[k])) + f32(5 * e3[k])) / 12;
    } else {
      e = new Float32Array(len);
      const [e1, e2, e3, e4] = [E(1), E(2), E(3), E(4)];
      for (let k = 0; k < len; k++) {
        e[k] = TWENTY_FOURTH * f32(f32(f32(f32(55 * e1[k]) - f32(59 * e2[k])) + f32(37 * e3[k])) - f32(9 * e4[k]));
      }
    }
    const prev = prevSample(from, t, prevT, e);
    return { prevSample: prev, state: Object.freeze({ index: s.index + 1, counter: c + 1, ets, curSample, curModelOutput: s.curModelOutput }) };
  }

  const initialState: PndmState = Object.freeze({ index: 0, counter: 0, ets: [], curSample: null, curModelOutput: null });

  return withArgumentChecks({
    name: 'pndm',
    className: name,
    steps: n,
    timesteps: Object.freeze(timesteps),
    initNoiseSigma: 1,
    stochastic: false,
    initialState,
    needsNoise: () => false,
    scaleModelInput: (sample) => sample.slice(),
    step(state, modelOutput, i, sample): StepOutput {
      const s = state as PndmState;
      return s.counter < numPrk ? stepPrk(s, modelOutput, timesteps[i], sample) : stepPlms(s, modelOutput, timesteps[i], sample);
    },
    addNoise(original, noise, i) {
      return addNoiseAlphas(ac[timesteps[i]], original, noise);
    },
  });
}
