/**
 * Latent Consistency Model sampling (Luo et al. 2023), as diffusers' LCMScheduler: each step
 * maps the sample to the consistency function's output (c_skip * x + c_out * x0) and, except at
 * the last step, re-noises it to the next timestep with fresh noise. Stochastic.
 *
 * diffusers quirks reproduced:
 * - Timesteps ignore timestep_spacing and steps_offset: the grid is the distillation schedule
 *   k*(N // original_inference_steps) - 1 (19, 39, ..., 999 for 50), read backwards at
 *   floor(linspace(0, 50, n, endpoint=False)) (4 steps: 999, 759, 499, 259).
 * - c_skip / c_out use timestep * timestep_scaling (10) with sigma_data 0.5.
 * - The last step returns the denoised sample and uses no noise (needsNoise is false there).
 * - Defaults are LCM's own (scaled_linear 0.00085–0.012, set_alpha_to_one true, clip_sample false).
 */
import { InputError } from '../errors.ts';
import { cfgBool, cfgInt, cfgNumber, cfgOneOf, type Config } from '../weights/config.ts';
import {
  PREDICTION_TYPES, checkSteps, f32, npLinspace, readNoiseSchedule,
  refuseTrue, requireNoise, type PredictionType, withArgumentChecks,
} from './common.ts';
import { addNoiseAlphas } from './ddim.ts';
import type { Scheduler, SchedulerState, StepOutput } from './types.ts';

export function createLcm(cfg: Config, where: string, options: { steps: number }): Scheduler {
  const schedule = readNoiseSchedule(cfg, where, { beta_start: 0.00085, beta_end: 0.012, beta_schedule: 'scaled_linear' }, true);
  const ac = schedule.alphasCumprod;
  const N = schedule.numTrainTimesteps;
  const prediction: PredictionType = cfgOneOf(cfg, 'prediction_type', where, PREDICTION_TYPES, 'epsilon');
  refuseTrue(cfg, 'thresholding', where, 'dynamic thresholding is for pixel-space models, not latent diffusion');
  const clipSample = cfgBool(cfg, 'clip_sample', where, false);
  const clipRange = cfgNumber(cfg, 'clip_sample_range', where, 1);
  const finalAlpha = cfgBool(cfg, 'set_alpha_to_one', where, true) ? 1 : ac[0];
  const originalSteps = cfgInt(cfg, 'original_inference_steps', where, 50);
  const timestepScaling = cfgNumber(cfg, 'timestep_scaling', where, 10);
  if (originalSteps < 1 || originalSteps > N) {
    throw new InputError(`${where}: original_inference_steps`, 'out of range', `1 to num_train_timesteps (${N})`, `${originalSteps}`);
  }
  const n = options.steps;
  checkSteps(n, originalSteps, `LCM's original_inference_steps (${originalSteps}) in ${where}`);

  const k = Math.floor(N / originalSteps);
  const origin = Array.from({ length: originalSteps }, (_, j) => (j + 1) * k - 1).reverse();
  const timesteps = npLinspace(0, origin.length, n, false).map((x) => origin[Math.floor(x)]);
  const name = 'LCMScheduler';
  const initialState: SchedulerState = Object.freeze({ index: 0 });

  return withArgumentChecks({
    name: 'lcm',
    className: name,
    steps: n,
    timesteps: Object.freeze(timesteps),
    initNoiseSigma: 1,
    stochastic: true,
    initialState,
    needsNoise: (i) => i < timesteps.length - 1, // the last step returns the denoised sample
    scaleModelInput: (sample) => sample.slice(),
    step(state, modelOutput, i, sample, noise): StepOutput {
      const isLast = i === timesteps.length - 1;
      const z = isLast ? undefined : requireNoise(name, noise, sample.length);
      const t = timesteps[i];
      const prevT = isLast ? t : timesteps[i + 1];
      const a = ac[t];
      const aPrev = prevT >= 0 ? ac[prevT] : finalAlpha;
      const sa = f32(Math.sqrt(a));
      const sb = f32(Math.sqrt(f32(1 - a)));
      const saPrev = f32(Math.sqrt(aPrev));
      const sbPrev = f32(Math.sqrt(f32(1 - aPrev)));
      const scaled = f32(t * timestepScaling);
      const s2 = f32(scaled * scaled);
      const cSkip = f32(0.25 / f32(s2 + 0.25));
      const cOut = f32(scaled / f32(Math.sqrt(f32(s2 + 0.25))));
      const lo = f32(-clipRange);
      const hi = f32(clipRange);
      const out = new Float32Array(sample.length);
      for (let j = 0; j < sample.length; j++) {
        const x = sample[j];
        const m = modelOutput[j];
        let x0 = prediction === 'epsilon' ? f32(f32(x - f32(sb * m)) / sa)
          : prediction === 'sample' ? m : f32(f32(sa * x) - f32(sb * m));
        if (clipSample) x0 = Math.min(Math.max(x0, lo), hi);
        const denoised = f32(f32(cOut * x0) + f32(cSkip * x));
        out[j] = z === undefined ? denoised : f32(saPrev * denoised) + f32(sbPrev * z[j]);
      }
      return { prevSample: out, state: Object.freeze({ index: i + 1 }) };
    },
    addNoise(original, noise, i) {
      return addNoiseAlphas(ac[timesteps[i]], original, noise);
    },
  });
}
