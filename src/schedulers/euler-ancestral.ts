/**
 * Euler ancestral, as diffusers' EulerAncestralDiscreteScheduler: an Euler step down to
 * sigma_down, then fresh noise of std sigma_up, with sigma_down^2 + sigma_up^2 = sigma_next^2
 * (k-diffusion's sample_euler_ancestral, eta 1). Stochastic: needs noise at every step (the
 * last step multiplies it by sigma_up = 0).
 *
 * diffusers quirks reproduced: the same float32 timesteps, linearly interpolated sigmas and
 * init_noise_sigma rule as Euler (sqrt(sigma_max^2 + 1) for 'leading'); no Karras option; default
 * spacing 'linspace'; prediction_type 'sample' is not implemented in diffusers and refused here.
 */
import { cfgInt, cfgOneOf, type Config } from '../weights/config.ts';
import { SPACINGS, checkSteps, f32, readNoiseSchedule, requireNoise, withArgumentChecks } from './common.ts';
import {
  addNoiseSigma, eulerInitNoiseSigma, eulerSigmaSchedule, eulerX0, scaleBySigma, sigmaFamilyAlphas, vCoefficients,
} from './euler.ts';
import type { Scheduler, SchedulerState, StepOutput } from './types.ts';

export function createEulerAncestral(cfg: Config, where: string, options: { steps: number }): Scheduler {
  const schedule = readNoiseSchedule(cfg, where, { beta_start: 0.0001, beta_end: 0.02, beta_schedule: 'linear' }, true);
  const ac = sigmaFamilyAlphas(schedule);
  const N = schedule.numTrainTimesteps;
  const prediction = cfgOneOf(cfg, 'prediction_type', where, ['epsilon', 'v_prediction'] as const, 'epsilon');
  const spacing = cfgOneOf(cfg, 'timestep_spacing', where, SPACINGS, 'linspace');
  const stepsOffset = cfgInt(cfg, 'steps_offset', where, 0);
  const n = options.steps;
  checkSteps(n, N, `num_train_timesteps (${N}) in ${where}`);
  const { timesteps, sigmas } = eulerSigmaSchedule(ac, n, { spacing, stepsOffset, karras: false, finalSigma: 'zero' });
  const name = 'EulerAncestralDiscreteScheduler';
  const initialState: SchedulerState = Object.freeze({ index: 0 });

  return withArgumentChecks({
    name: 'euler-a',
    className: name,
    steps: n,
    timesteps: Object.freeze(timesteps),
    initNoiseSigma: eulerInitNoiseSigma(sigmas, spacing),
    stochastic: true,
    initialState,
    needsNoise: (i) => sigmas[i + 1] > 0, // sigma_up is 0 when stepping to sigma 0
    scaleModelInput(sample, i) {
      return scaleBySigma(sample, sigmas[i]);
    },
    step(state, modelOutput, i, sample, noise): StepOutput {
      const from = sigmas[i];
      const to = sigmas[i + 1];
      const from2 = f32(from * from);
      const to2 = f32(to * to);
      const up = f32(Math.sqrt(f32(f32(to2 * f32(from2 - to2)) / from2)));
      const down = f32(Math.sqrt(f32(to2 - f32(up * up))));
      const dt = f32(down - from);
      const [cm, cs] = vCoefficients(from);
      const z = up > 0 ? requireNoise(name, noise, sample.length) : undefined;
      const out = new Float32Array(sample.length);
      for (let k = 0; k < sample.length; k++) {
        const x = sample[k];
        const x0 = eulerX0(prediction, from, x, modelOutput[k], cm, cs);
        const derivative = f32(f32(x - x0) / from);
        const prev = f32(x + f32(derivative * dt));
        out[k] = z === undefined ? prev : prev + f32(z[k] * up);
      }
      return { prevSample: out, state: Object.freeze({ index: i + 1 }) };
    },
    addNoise(original, noise, i) {
      return addNoiseSigma(sigmas[i], original, noise);
    },
  });
}
