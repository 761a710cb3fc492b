/**
 * DDPM (Ho et al. 2020), as diffusers' DDPMScheduler: predict x0, take the posterior mean of
 * x_{t-1} given x_t and x0, and add noise scaled by the step's variance (none at t = 0).
 *
 * Variance types: "fixed_small" (the posterior variance β̃_t, diffusers' default), "fixed_large"
 * (β_t), and "learned_range" (DiT, Skip-DiT: the model's extra output channels v ∈ [−1, 1]
 * interpolate log β̃_t and log β_t, passed to step() as `variance`).
 *
 * diffusers quirks reproduced:
 * - The previous timestep is the next entry of `timesteps` (−1 after the last), unlike DDIM's t − N // n.
 * - Leading spacing is DDIM's (steps_offset added); trailing and linspace as DDIM's too.
 * - Defaults are DDPM's own for keys the folder config lacks: clip_sample=true, variance fixed_small.
 */
import { cfgBool, cfgNumber, cfgInt, cfgOneOf, type Config } from '../weights/config.ts';
import { addNoiseAlphas, ddimTimesteps } from './ddim.ts';
import {
  PREDICTION_TYPES, SPACINGS, checkSteps, checkTimestepRange, f32, readNoiseSchedule, refuseTrue, requireNoise, withArgumentChecks, type PredictionType,
} from './common.ts';
import type { Scheduler, SchedulerState, StepOutput } from './types.ts';

const VARIANCE_TYPES = ['fixed_small', 'fixed_large', 'learned_range'] as const;

export function createDdpm(cfg: Config, where: string, options: { steps: number }): Scheduler {
  const schedule = readNoiseSchedule(cfg, where, { beta_start: 0.0001, beta_end: 0.02, beta_schedule: 'linear' }, true);
  const ac = schedule.alphasCumprod;
  const N = schedule.numTrainTimesteps;
  const prediction: PredictionType = cfgOneOf(cfg, 'prediction_type', where, PREDICTION_TYPES, 'epsilon');
  refuseTrue(cfg, 'thresholding', where, 'dynamic thresholding is for pixel-space models, not latent diffusion');
  const varianceType = cfg.variance_type === null ? 'fixed_small' : cfgOneOf(cfg, 'variance_type', where, VARIANCE_TYPES, 'fixed_small');
  const clipSample = cfgBool(cfg, 'clip_sample', where, true);
  const clipRange = cfgNumber(cfg, 'clip_sample_range', where, 1);
  const stepsOffset = cfgInt(cfg, 'steps_offset', where, 0);
  const spacing = cfgOneOf(cfg, 'timestep_spacing', where, SPACINGS, 'leading');
  const n = options.steps;
  checkSteps(n, N, `num_train_timesteps (${N}) in ${where}`);
  const timesteps = ddimTimesteps(spacing, N, n, stepsOffset);
  checkTimestepRange(timesteps, N, where);
  const name = 'DDPMScheduler';
  const learned = varianceType === 'learned_range';

  return withArgumentChecks({
    name: 'ddpm',
    className: name,
    steps: n,
    timesteps: Object.freeze(timesteps),
    initNoiseSigma: 1,
    stochastic: true,
    usesVariance: learned,
    initialState: Object.freeze({ index: 0 }) as SchedulerState,
    needsNoise: (i) => timesteps[i] > 0,
    scaleModelInput: (sample) => sample.slice(),
    step(state, modelOutput, i, sample, noise, variance): StepOutput {
      const t = timesteps[i];
      const prevT = i + 1 < timesteps.length ? timesteps[i + 1] : -1;
      const a = ac[t];
      const aPrev = prevT >= 0 ? ac[prevT] : 1;
      const b = f32(1 - a);
      const bPrev = f32(1 - aPrev);
      const currentAlpha = f32(a / aPrev);
      const currentBeta = f32(1 - currentAlpha);
      const sa = f32(Math.sqrt(a));
      const sb = f32(Math.sqrt(b));
      const x0Coef = f32(f32(f32(Math.sqrt(aPrev)) * currentBeta) / b);
      const xCoef = f32(f32(f32(Math.sqrt(currentAlpha)) * bPrev) / b);
      // The posterior variance β̃_t (clamped at 1e-20) and β_t, for the noise term.
      const small = Math.max(f32(f32(bPrev / b) * currentBeta), 1e-20);
      const z = t > 0 ? requireNoise(name, noise, sample.length) : undefined;
      if (learned && (variance === undefined || variance.length !== sample.length)) {
        throw new Error(`${name}.step: variance_type learned_range needs the model's predicted variance, as long as the sample`);
      }
      const [minLog, maxLog] = [f32(Math.log(small)), f32(Math.log(currentBeta))];
      const fixedStd = f32(Math.sqrt(varianceType === 'fixed_large' ? currentBeta : small));
      const lo = f32(-clipRange);
      const hi = f32(clipRange);
      const out = new Float32Array(sample.length);
      for (let k = 0; k < sample.length; k++) {
        const x = sample[k];
        const m = modelOutput[k];
        let x0 = prediction === 'epsilon' ? f32(f32(x - f32(sb * m)) / sa) : prediction === 'sample' ? m : f32(f32(sa * x) - f32(sb * m));
        if (clipSample) x0 = Math.min(Math.max(x0, lo), hi);
        let prev = f32(f32(x0Coef * x0) + f32(xCoef * x));
        if (z !== undefined) {
          let std = fixedStd;
          if (learned) {
            const frac = f32(f32(variance![k] + 1) / 2);
            std = f32(Math.exp(f32(0.5 * f32(f32(frac * maxLog) + f32(f32(1 - frac) * minLog)))));
          }
          prev = f32(prev + f32(std * z[k]));
        }
        out[k] = prev;
      }
      return { prevSample: out, state: Object.freeze({ index: i + 1 }) };
    },
    addNoise(original, noise, i) {
      return addNoiseAlphas(ac[timesteps[i]], original, noise);
    },
  });
}

