/**
 * Euler (Karras et al. 2022, Algorithm 2 without churn), as diffusers' EulerDiscreteScheduler:
 * in the sigma parametrisation x = x0 + sigma * eps, one explicit Euler step of dx/dsigma = eps.
 * The U-Net input is scaled by 1 / sqrt(sigma^2 + 1).
 *
 * diffusers quirks reproduced:
 * - Timesteps are float32 and may be fractional ('linspace': 999, 957.375, ...); sigmas are linearly
 *   interpolated in t between the training sigmas (interpolation_type 'linear'), then a final 0 is
 *   appended (final_sigmas_type 'zero'; 'sigma_min' appends the sigma of timestep 0).
 * - init_noise_sigma is sigma_max for 'linspace' / 'trailing' but sqrt(sigma_max^2 + 1) for 'leading'.
 * - use_karras_sigmas: Karras sigmas between the first and last *interpolated* sigmas (or the
 *   config's sigma_min / sigma_max), with timesteps mapped back through log-sigma (not rounded).
 * - rescale_betas_zero_snr sets the last alphas_cumprod to 2^-24 so the top sigma is finite (4096).
 * - Euler's own default spacing is 'linspace' and default prediction 'epsilon'; s_churn is 0 as in
 *   the pipelines, so the step is deterministic.
 */
import { InputError } from '../errors.ts';
import { cfgBool, cfgInt, cfgOneOf, cfgOptionalNumber, type Config } from '../weights/config.ts';
import {
  SPACINGS, checkSteps, f32, interpIndex, karrasSigmas, leadingGrid,
  npLinspace, readNoiseSchedule, refuseOtherThan, refuseTrue, sigmaToT, trailingGrid, trainSigmas, type NoiseSchedule,
  type Spacing, withArgumentChecks,
} from './common.ts';
import type { Scheduler, SchedulerState, StepOutput } from './types.ts';

/** alphas_cumprod for the Euler family (and DPM-Solver): zero-SNR's last entry becomes 2^-24. */
export function sigmaFamilyAlphas(schedule: NoiseSchedule & { zeroSnr: boolean }): Float32Array {
  const ac = schedule.alphasCumprod.slice();
  if (schedule.zeroSnr) ac[ac.length - 1] = 2 ** -24;
  return ac;
}

/** Euler-family timesteps (float32 values as numbers), descending. */
export function eulerTimesteps(spacing: Spacing, N: number, n: number, stepsOffset: number): number[] {
  if (spacing === 'linspace') return npLinspace(0, N - 1, n).reverse().map(f32);
  if (spacing === 'leading') return leadingGrid(N, n).reverse().map((t) => f32(t + stepsOffset));
  return trailingGrid(N, n).map((t) => f32(t - 1));
}

export interface SigmaSchedule {
  timesteps: number[];
  /** float32, one per timestep plus the final one. */
  sigmas: Float32Array;
}

export interface EulerScheduleOptions {
  spacing: Spacing;
  stepsOffset: number;
  karras: boolean;
  sigmaMin?: number;
  sigmaMax?: number;
  finalSigma: 'zero' | 'sigma_min';
}

/** EulerDiscreteScheduler.set_timesteps (also EulerAncestral's, which has no Karras/final options). */
export function eulerSigmaSchedule(ac: Float32Array, n: number, o: EulerScheduleOptions): SigmaSchedule {
  const N = ac.length;
  let timesteps = eulerTimesteps(o.spacing, N, n, o.stepsOffset);
  const train = trainSigmas(ac);
  const logSigmas = train.map((s) => f32(Math.log(s)));
  let sigmas = timesteps.map((t) => interpIndex(t, train));
  if (o.karras) {
    const sigmaMin = o.sigmaMin ?? sigmas[sigmas.length - 1];
    const sigmaMax = o.sigmaMax ?? sigmas[0];
    sigmas = karrasSigmas(sigmaMin, sigmaMax, n);
    timesteps = sigmas.map((s) => f32(sigmaToT(s, logSigmas)));
  }
  const last = o.finalSigma === 'zero' ? 0 : f32(Math.sqrt(f32(f32(1 - ac[0]) / ac[0])));
  return { timesteps, sigmas: Float32Array.from([...sigmas, last]) };
}

/** sample / sqrt(sigma^2 + 1), with diffusers' float32 scalar. */
export function scaleBySigma(sample: Float32Array, sigma: number): Float32Array {
  const d = f32(Math.sqrt(f32(f32(sigma * sigma) + 1)));
  const out = new Float32Array(sample.length);
  for (let k = 0; k < sample.length; k++) out[k] = sample[k] / d;  // one rounding: the store
  return out;
}

/** The denoised estimate x0 for the Euler family at noise level sigma. */
export function eulerX0(prediction: 'epsilon' | 'v_prediction' | 'sample', sigma: number, x: number, m: number,
  vCoefModel: number, vDivSample: number): number {
  if (prediction === 'epsilon') return f32(x - f32(sigma * m));
  if (prediction === 'sample') return m;
  return f32(f32(m * vCoefModel) + f32(x / vDivSample));
}

/** v-prediction x0 = model * (-sigma / sqrt(sigma^2+1)) + sample / (sigma^2+1): both scalars in float32. */
export function vCoefficients(sigma: number): [number, number] {
  const s2p1 = f32(f32(sigma * sigma) + 1);
  return [f32(-sigma / f32(Math.sqrt(s2p1))), s2p1];
}

/** initNoiseSigma of the Euler family. */
export function eulerInitNoiseSigma(sigmas: Float32Array, spacing: Spacing): number {
  let max = 0;
  for (const s of sigmas) max = Math.max(max, s);
  return spacing === 'leading' ? f32(Math.sqrt(f32(f32(max * max) + 1))) : max;
}

export function createEuler(cfg: Config, where: string, options: { steps: number }): Scheduler {
  const schedule = readNoiseSchedule(cfg, where, { beta_start: 0.0001, beta_end: 0.02, beta_schedule: 'linear' }, true);
  const ac = sigmaFamilyAlphas(schedule);
  const N = schedule.numTrainTimesteps;
  const prediction = cfgOneOf(cfg, 'prediction_type', where, ['epsilon', 'v_prediction', 'sample', 'original_sample'] as const, 'epsilon');
  const pred = prediction === 'original_sample' ? 'sample' : prediction;
  refuseOtherThan(cfg, 'interpolation_type', where, ['linear'] as const, 'linear', "only diffusers' default linear interpolation is implemented");
  refuseTrue(cfg, 'use_exponential_sigmas', where, 'exponential sigmas are not implemented; use use_karras_sigmas');
  refuseTrue(cfg, 'use_beta_sigmas', where, 'beta sigmas are not implemented; use use_karras_sigmas');
  const karras = cfgBool(cfg, 'use_karras_sigmas', where, false);
  const timestepType = cfgOneOf(cfg, 'timestep_type', where, ['discrete', 'continuous'] as const, 'discrete');
  if (timestepType === 'continuous' && pred === 'v_prediction') {
    throw new InputError(`${where}: timestep_type`, 'continuous timesteps (0.25 * log sigma, for EDM-style v-prediction models) are not supported', '"discrete"', '"continuous"');
  }
  const spacing = cfgOneOf(cfg, 'timestep_spacing', where, SPACINGS, 'linspace');
  const stepsOffset = cfgInt(cfg, 'steps_offset', where, 0);
  const finalSigma = cfgOneOf(cfg, 'final_sigmas_type', where, ['zero', 'sigma_min'] as const, 'zero');
  const n = options.steps;
  checkSteps(n, N, `num_train_timesteps (${N}) in ${where}`);
  const { timesteps, sigmas } = eulerSigmaSchedule(ac, n, {
    spacing, stepsOffset, karras, finalSigma,
    sigmaMin: cfgOptionalNumber(cfg, 'sigma_min', where), sigmaMax: cfgOptionalNumber(cfg, 'sigma_max', where),
  });
  const name = 'EulerDiscreteScheduler';
  const initialState: SchedulerState = Object.freeze({ index: 0 });

  return withArgumentChecks({
    name: 'euler',
    className: name,
    steps: n,
    timesteps: Object.freeze(timesteps),
    initNoiseSigma: eulerInitNoiseSigma(sigmas, spacing),
    stochastic: false,
    initialState,
    needsNoise: () => false,
    scaleModelInput(sample, i) {
      return scaleBySigma(sample, sigmas[i]);
    },
    step(state, modelOutput, i, sample): StepOutput {
      const sigma = sigmas[i];
      const dt = f32(sigmas[i + 1] - sigma);
      const [cm, cs] = vCoefficients(sigma);
      const out = new Float32Array(sample.length);
      for (let k = 0; k < sample.length; k++) {
        const x = sample[k];
        const x0 = eulerX0(pred, sigma, x, modelOutput[k], cm, cs);
        const derivative = f32(f32(x - x0) / sigma);
        out[k] = x + f32(derivative * dt);
      }
      return { prevSample: out, state: Object.freeze({ index: i + 1 }) };
    },
    addNoise(original, noise, i) {
      return addNoiseSigma(sigmas[i], original, noise);
    },
  });
}

/** x0 + sigma * noise. */
export function addNoiseSigma(sigma: number, original: Float32Array, noise: Float32Array): Float32Array {
  const out = new Float32Array(original.length);
  for (let k = 0; k < original.length; k++) out[k] = original[k] + f32(noise[k] * sigma);
  return out;
}
