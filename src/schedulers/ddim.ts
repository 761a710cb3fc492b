/**
 * DDIM (Song et al. 2020), as diffusers' DDIMScheduler: predict x0 from the model output, then
 * move to the previous timestep along the deterministic (eta = 0) or partly stochastic (eta > 0)
 * non-Markovian path.
 *
 * diffusers quirks reproduced:
 * - 'leading' spacing is arange(n) * (N // n) + steps_offset (SD 1.x/2.x: 901, 801, ..., 1 for 10 steps).
 * - The previous timestep is always t - N // n, whatever the spacing: with 'linspace' or 'trailing'
 *   it is not the next entry of `timesteps` (999 steps to 899 although the next U-Net call is at 888).
 * - When t - N // n < 0 the "previous" alphas_cumprod is 1 (set_alpha_to_one) or alphas_cumprod[0].
 * - Defaults are DDIM's own for keys the folder config lacks: clip_sample=true, set_alpha_to_one=true
 *   (so DDIM on a PNDM folder without clip_sample clips x0 to [-1, 1], as diffusers does).
 */
import { InputError } from '../errors.ts';
import { cfgBool, cfgInt, cfgNumber, cfgOneOf, type Config } from '../weights/config.ts';
import {
  PREDICTION_TYPES, SPACINGS, checkSteps, checkTimestepRange,
  f32, leadingGrid, npLinspace, readNoiseSchedule, refuseTrue, requireNoise, roundHalfEven, trailingGrid,
  type PredictionType, type Spacing, withArgumentChecks,
} from './common.ts';
import type { Scheduler, SchedulerState, StepOutput } from './types.ts';

export interface DdimOptions {
  steps: number;
  /** 0: deterministic DDIM; 1: DDPM-like variance. */
  eta?: number;
}

/** The integer timesteps of DDIM (also used by PNDM's and LCM's add_noise conventions). */
export function ddimTimesteps(spacing: Spacing, numTrain: number, n: number, stepsOffset: number): number[] {
  if (spacing === 'linspace') return npLinspace(0, numTrain - 1, n).map(roundHalfEven).reverse();
  if (spacing === 'leading') return leadingGrid(numTrain, n).reverse().map((t) => t + stepsOffset);
  return trailingGrid(numTrain, n).map((t) => t - 1);
}

export function createDdim(cfg: Config, where: string, options: DdimOptions): Scheduler {
  const schedule = readNoiseSchedule(cfg, where, { beta_start: 0.0001, beta_end: 0.02, beta_schedule: 'linear' }, true);
  const ac = schedule.alphasCumprod;
  const N = schedule.numTrainTimesteps;
  const prediction: PredictionType = cfgOneOf(cfg, 'prediction_type', where, PREDICTION_TYPES, 'epsilon');
  refuseTrue(cfg, 'thresholding', where, 'dynamic thresholding is for pixel-space models, not latent diffusion');
  const clipSample = cfgBool(cfg, 'clip_sample', where, true);
  const clipRange = cfgNumber(cfg, 'clip_sample_range', where, 1);
  const finalAlpha = cfgBool(cfg, 'set_alpha_to_one', where, true) ? 1 : ac[0];
  const stepsOffset = cfgInt(cfg, 'steps_offset', where, 0);
  const spacing = cfgOneOf(cfg, 'timestep_spacing', where, SPACINGS, 'leading');
  const eta = options.eta ?? 0;
  if (!(Number.isFinite(eta) && eta >= 0)) throw new InputError('eta', 'DDIM eta must be a finite number >= 0', '>= 0', `${eta}`);
  const n = options.steps;
  checkSteps(n, N, `num_train_timesteps (${N}) in ${where}`);

  const timesteps = ddimTimesteps(spacing, N, n, stepsOffset);
  checkTimestepRange(timesteps, N, where);
  const stride = Math.floor(N / n);
  const name = 'DDIMScheduler';
  const initialState: SchedulerState = Object.freeze({ index: 0 });

  return withArgumentChecks({
    name: 'ddim',
    className: name,
    steps: n,
    timesteps: Object.freeze(timesteps),
    initNoiseSigma: 1,
    stochastic: eta > 0,
    initialState,
    needsNoise: () => eta > 0,
    scaleModelInput: (sample) => sample.slice(),
    step(state, modelOutput, i, sample, noise): StepOutput {
      const t = timesteps[i];
      const prevT = t - stride;
      const a = ac[t];
      const aPrev = prevT >= 0 ? ac[prevT] : finalAlpha;
      const b = f32(1 - a);
      const bPrev = f32(1 - aPrev);
      const sa = f32(Math.sqrt(a));
      const sb = f32(Math.sqrt(b));
      const variance = f32(f32(bPrev / b) * f32(1 - f32(a / aPrev)));
      const std = f32(eta * f32(Math.sqrt(variance)));
      const dirCoef = f32(Math.sqrt(f32(f32(1 - aPrev) - f32(std * std))));
      const x0Coef = f32(Math.sqrt(aPrev));
      const z = eta > 0 ? requireNoise(name, noise, sample.length) : undefined;
      const lo = f32(-clipRange);
      const hi = f32(clipRange);
      const out = new Float32Array(sample.length);
      for (let k = 0; k < sample.length; k++) {
        const x = sample[k];
        const m = modelOutput[k];
        let x0: number;
        let e: number;
        if (prediction === 'epsilon') {
          x0 = f32(f32(x - f32(sb * m)) / sa);
          e = m;
        } else if (prediction === 'sample') {
          x0 = m;
          e = f32(f32(x - f32(sa * x0)) / sb);
        } else {
          x0 = f32(f32(sa * x) - f32(sb * m));
          e = f32(f32(sa * m) + f32(sb * x));
        }
        if (clipSample) x0 = Math.min(Math.max(x0, lo), hi);
        let prev = f32(f32(x0Coef * x0) + f32(dirCoef * e));
        if (z !== undefined) prev = f32(prev + f32(std * z[k]));
        out[k] = prev;
      }
      return { prevSample: out, state: Object.freeze({ index: i + 1 }) };
    },
    addNoise(original, noise, i) {
      return addNoiseAlphas(ac[timesteps[i]], original, noise);
    },
  });
}

/** sqrt(a) * x0 + sqrt(1 - a) * noise (DDPM forward process), float32 coefficients. */
export function addNoiseAlphas(a: number, original: Float32Array, noise: Float32Array): Float32Array {
  const sa = f32(Math.sqrt(a));
  const sb = f32(Math.sqrt(f32(1 - a)));
  const out = new Float32Array(original.length);
  for (let k = 0; k < original.length; k++) out[k] = f32(sa * original[k]) + f32(sb * noise[k]);
  return out;
}
