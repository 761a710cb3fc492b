/**
 * DPM-Solver++ multistep (Lu et al. 2022), as diffusers' DPMSolverMultistepScheduler with
 * algorithm_type 'dpmsolver++': the model output is converted to a data prediction x0, and each
 * step integrates exactly in log-SNR (lambda) with the last 1, 2 (“2M”) or 3 x0 predictions.
 *
 * diffusers quirks reproduced:
 * - The first step is first order (no history yet); with solver_order 3 the second is second order.
 * - lower_order_final: the last step is first order when there are < 15 steps, or always when
 *   final_sigmas_type is 'zero' (the default; the final sigma is 0, so that step returns x0);
 *   with solver_order 3 the second-to-last step is second order when there are < 15 steps.
 * - 'leading' spacing uses arange(n + 1) * (N // (n + 1)), dropping the 0, + steps_offset
 *   (SD 1.5, 10 steps: 910, 819, ..., 91) — not DDIM's grid; 'linspace' drops the last of n + 1
 *   points; default spacing is 'linspace'.
 * - Karras sigmas run from sigma(t = 0) to sigma(t = N - 1) of the training table; their timesteps
 *   come from log-sigma interpolation and are rounded (truncated to int for squaredcos_cap_v2,
 *   which can repeat the first timestep: 998, 998, ...). Timesteps are integers.
 * - lambda_min_clipped cuts the start of the schedule; rescale_betas_zero_snr sets the last
 *   alphas_cumprod to 2^-24.
 * Not supported (refused): SDE / non-'++' variants, thresholding, learned variance, Lu / exponential
 * / beta / flow sigmas.
 */
import { InputError, describe } from '../errors.ts';
import { cfgBool, cfgInt, cfgNumber, cfgOneOf, cfgOptionalNumber, type Config } from '../weights/config.ts';
import {
  PREDICTION_TYPES, SPACINGS, checkSteps, f32,
  interpIndex, karrasSigmas, npArange, npLinspace, readNoiseSchedule, refuseTrue, roundHalfEven, sigmaToT,
  trainSigmas, type PredictionType, withArgumentChecks,
} from './common.ts';
import { sigmaFamilyAlphas } from './euler.ts';
import type { Scheduler, SchedulerName, SchedulerState, StepOutput } from './types.ts';

interface DpmState extends SchedulerState {
  /** The last (up to solver_order) x0 predictions, oldest first. */
  readonly outputs: readonly Float32Array[];
  /** diffusers' lower_order_nums. */
  readonly lowerOrderNums: number;
}

export interface DpmOverrides {
  /** Forced by the scheduler name (dpm++2m / dpm++2m-karras); otherwise the config decides. */
  karras?: boolean;
  solverOrder?: number;
  name?: SchedulerName;
}

/** (alpha_t, sigma_t) of the VP process at k-diffusion sigma, in float32. */
function alphaSigma(sigma: number): [number, number] {
  const alpha = f32(1 / f32(Math.sqrt(f32(f32(sigma * sigma) + 1))));
  return [alpha, f32(sigma * alpha)];
}

function lambdaOf(alpha: number, sigma: number): number {
  return f32(f32(Math.log(alpha)) - f32(Math.log(sigma)));
}

export function createDpmSolverMultistep(cfg: Config, where: string, options: { steps: number }, overrides: DpmOverrides = {}): Scheduler {
  const schedule = readNoiseSchedule(cfg, where, { beta_start: 0.0001, beta_end: 0.02, beta_schedule: 'linear' }, true);
  const ac = sigmaFamilyAlphas(schedule);
  const N = schedule.numTrainTimesteps;
  const prediction: PredictionType = cfgOneOf(cfg, 'prediction_type', where, PREDICTION_TYPES, 'epsilon');
  const algorithm = cfgOneOf(cfg, 'algorithm_type', where, ['dpmsolver++', 'deis', 'dpmsolver', 'sde-dpmsolver', 'sde-dpmsolver++'] as const, 'dpmsolver++');
  if (algorithm !== 'dpmsolver++' && algorithm !== 'deis' && overrides.name === undefined) {
    // A name (dpm++2m, dpm++2m-karras) selects dpmsolver++ whatever the folder says.
    throw new InputError(`${where}: algorithm_type`, 'only DPM-Solver++ is supported (the SDE and non-++ variants are not)', '"dpmsolver++"', describe(algorithm));
  }
  const solverOrder = overrides.solverOrder ?? cfgInt(cfg, 'solver_order', where, 2);
  if (![1, 2, 3].includes(solverOrder)) {
    throw new InputError(`${where}: solver_order`, 'unsupported solver order', '1, 2 or 3', `${solverOrder}`);
  }
  const solverType = cfgOneOf(cfg, 'solver_type', where, ['midpoint', 'heun', 'logrho', 'bh1', 'bh2'] as const, 'midpoint');
  const heun = solverType === 'heun'; // diffusers maps logrho/bh1/bh2 to midpoint
  refuseTrue(cfg, 'thresholding', where, 'dynamic thresholding is for pixel-space models, not latent diffusion');
  if (cfg.variance_type !== undefined && cfg.variance_type !== null) {
    throw new InputError(`${where}: variance_type`, 'learned variance (model output with extra channels) is not supported', 'null', describe(cfg.variance_type));
  }
  for (const key of ['use_lu_lambdas', 'use_exponential_sigmas', 'use_beta_sigmas', 'use_flow_sigmas']) {
    refuseTrue(cfg, key, where, 'only the default and Karras sigma schedules are implemented');
  }
  const lowerOrderFinal = cfgBool(cfg, 'lower_order_final', where, true);
  const eulerAtFinal = cfgBool(cfg, 'euler_at_final', where, false);
  const karras = overrides.karras ?? cfgBool(cfg, 'use_karras_sigmas', where, false);
  const finalSigmaType = cfgOneOf(cfg, 'final_sigmas_type', where, ['zero', 'sigma_min'] as const, 'zero');
  // diffusers' default is -inf, which Python's json writes as -Infinity.
  const lambdaMinClipped = cfg.lambda_min_clipped === undefined || cfg.lambda_min_clipped === null || cfg.lambda_min_clipped === -Infinity
    ? -Infinity : cfgNumber(cfg, 'lambda_min_clipped', where);
  const spacing = cfgOneOf(cfg, 'timestep_spacing', where, SPACINGS, 'linspace');
  const stepsOffset = cfgInt(cfg, 'steps_offset', where, 0);
  const n = options.steps;
  checkSteps(n, N, `num_train_timesteps (${N}) in ${where}`);

  // lambda_t = log(alpha_t) - log(sigma_t) per training timestep (float32), and the clipped end.
  let clipped = 0;
  for (let t = N - 1; t >= 0; t--) {
    const lambda = f32(f32(Math.log(f32(Math.sqrt(ac[t])))) - f32(Math.log(f32(Math.sqrt(f32(1 - ac[t]))))));
    if (lambda < lambdaMinClipped) clipped++;
    else break;
  }
  const lastTimestep = N - clipped;

  let timesteps: number[];
  if (spacing === 'linspace') {
    timesteps = npLinspace(0, lastTimestep - 1, n + 1).map(roundHalfEven).reverse().slice(0, -1);
  } else if (spacing === 'leading') {
    const ratio = Math.floor(lastTimestep / (n + 1));
    timesteps = Array.from({ length: n + 1 }, (_, i) => i * ratio).reverse().slice(0, -1).map((t) => t + stepsOffset);
  } else {
    timesteps = npArange(lastTimestep, 0, -(N / n)).map((t) => roundHalfEven(t) - 1);
  }
  const train = trainSigmas(ac);
  const logSigmas = train.map((s) => f32(Math.log(s)));
  let sigmas: number[];
  if (karras) {
    // diffusers reads sigma_min / sigma_max from the config when present (e.g. carried over from an
    // Euler folder config); DPM's own config has neither.
    const sigmaMin = cfgOptionalNumber(cfg, 'sigma_min', where) ?? train[0];
    const sigmaMax = cfgOptionalNumber(cfg, 'sigma_max', where) ?? train[N - 1];
    sigmas = karrasSigmas(sigmaMin, sigmaMax, n);
    const ts = sigmas.map((s) => sigmaToT(s, logSigmas));
    timesteps = ts.map((t) => Math.trunc(schedule.betaSchedule === 'squaredcos_cap_v2' ? t : roundHalfEven(t)));
  } else {
    sigmas = timesteps.map((t) => interpIndex(t, train));
  }
  const last = finalSigmaType === 'zero' ? 0 : f32(Math.sqrt(f32(f32(1 - ac[0]) / ac[0])));
  const sig = Float32Array.from([...sigmas, last]);
  const count = timesteps.length;
  const name = 'DPMSolverMultistepScheduler';

  /** x0 from the model output at sigmas[i]. */
  function toX0(mo: Float32Array, sample: Float32Array, i: number): Float32Array {
    const [alpha, sigma] = alphaSigma(sig[i]);
    const out = new Float32Array(mo.length);
    for (let k = 0; k < mo.length; k++) {
      if (prediction === 'epsilon') out[k] = f32(sample[k] - f32(sigma * mo[k])) / alpha;
      else if (prediction === 'sample') out[k] = mo[k];
      else out[k] = f32(alpha * sample[k]) - f32(sigma * mo[k]);
    }
    return out;
  }

  function firstOrder(x0: Float32Array, sample: Float32Array, i: number): Float32Array {
    const [alphaT, sigmaT] = alphaSigma(sig[i + 1]);
    const [alphaS, sigmaS] = alphaSigma(sig[i]);
    const h = f32(lambdaOf(alphaT, sigmaT) - lambdaOf(alphaS, sigmaS));
    const cs = f32(sigmaT / sigmaS);
    const cx = f32(alphaT * f32(f32(Math.exp(-h)) - 1));
    const out = new Float32Array(sample.length);
    for (let k = 0; k < sample.length; k++) out[k] = f32(cs * sample[k]) - f32(cx * x0[k]);
    return out;
  }

  function secondOrder(outputs: readonly Float32Array[], sample: Float32Array, i: number): Float32Array {
    const [alphaT, sigmaT] = alphaSigma(sig[i + 1]);
    const [alphaS0, sigmaS0] = alphaSigma(sig[i]);
    const [alphaS1, sigmaS1] = alphaSigma(sig[i - 1]);
    const lt = lambdaOf(alphaT, sigmaT);
    const l0 = lambdaOf(alphaS0, sigmaS0);
    const l1 = lambdaOf(alphaS1, sigmaS1);
    const h = f32(lt - l0);
    const h0 = f32(l0 - l1);
    const r0 = f32(h0 / h);
    const invR0 = f32(1 / r0);
    const m0 = outputs[outputs.length - 1];
    const m1 = outputs[outputs.length - 2];
    const cs = f32(sigmaT / sigmaS0);
    const em1 = f32(f32(Math.exp(-h)) - 1);
    const c0 = f32(alphaT * em1);
    // midpoint: - 0.5 * alpha_t (e^-h - 1) D1; heun: + alpha_t ((e^-h - 1) / h + 1) D1
    const c1 = heun ? f32(alphaT * f32(f32(em1 / h) + 1)) : -f32(0.5 * c0);
    const out = new Float32Array(sample.length);
    for (let k = 0; k < sample.length; k++) {
      const d1 = f32(invR0 * f32(m0[k] - m1[k]));
      out[k] = f32(f32(cs * sample[k]) - f32(c0 * m0[k])) + f32(c1 * d1);
    }
    return out;
  }

  function thirdOrder(outputs: readonly Float32Array[], sample: Float32Array, i: number): Float32Array {
    const [alphaT, sigmaT] = alphaSigma(sig[i + 1]);
    const [alphaS0, sigmaS0] = alphaSigma(sig[i]);
    const [alphaS1, sigmaS1] = alphaSigma(sig[i - 1]);
    const [alphaS2, sigmaS2] = alphaSigma(sig[i - 2]);
    const lt = lambdaOf(alphaT, sigmaT);
    const l0 = lambdaOf(alphaS0, sigmaS0);
    const l1 = lambdaOf(alphaS1, sigmaS1);
    const l2 = lambdaOf(alphaS2, sigmaS2);
    const h = f32(lt - l0);
    const h0 = f32(l0 - l1);
    const h1 = f32(l1 - l2);
    const r0 = f32(h0 / h);
    const r1 = f32(h1 / h);
    const m0 = outputs[outputs.length - 1];
    const m1 = outputs[outputs.length - 2];
    const m2 = outputs[outputs.length - 3];
    const invR0 = f32(1 / r0);
    const invR1 = f32(1 / r1);
    const w1 = f32(r0 / f32(r0 + r1));
    const w2 = f32(1 / f32(r0 + r1));
    const cs = f32(sigmaT / sigmaS0);
    const em1 = f32(f32(Math.exp(-h)) - 1);
    const c0 = f32(alphaT * em1);
    const c1 = f32(alphaT * f32(f32(em1 / h) + 1));
    const c2 = f32(alphaT * f32(f32(f32(em1 + h) / f32(h * h)) - 0.5));
    const out = new Float32Array(sample.length);
    for (let k = 0; k < sample.length; k++) {
      const d10 = f32(invR0 * f32(m0[k] - m1[k]));
      const d11 = f32(invR1 * f32(m1[k] - m2[k]));
      const d1 = f32(d10 + f32(w1 * f32(d10 - d11)));
      const d2 = f32(w2 * f32(d10 - d11));
      out[k] = f32(f32(f32(cs * sample[k]) - f32(c0 * m0[k])) + f32(c1 * d1)) - f32(c2 * d2);
    }
    return out;
  }

  const initialState: DpmState = Object.freeze({ index: 0, outputs: [], lowerOrderNums: 0 });

  return withArgumentChecks({
    name: overrides.name ?? (karras ? 'dpm++2m-karras' : 'dpm++2m'),
    className: name,
    steps: n,
    timesteps: Object.freeze(timesteps),
    initNoiseSigma: 1,
    stochastic: false,
    initialState,
    needsNoise: () => false,
    scaleModelInput: (sample) => sample.slice(),
    step(state, modelOutput, i, sample): StepOutput {
      const s = state as DpmState;
      const finalFirstOrder = i === count - 1 && (eulerAtFinal || (lowerOrderFinal && count < 15) || finalSigmaType === 'zero');
      const secondToLastSecondOrder = i === count - 2 && lowerOrderFinal && count < 15;
      const x0 = toX0(modelOutput, sample, i);
      const outputs = [...s.outputs, x0].slice(-solverOrder);
      let prev: Float32Array;
      if (solverOrder === 1 || s.lowerOrderNums < 1 || finalFirstOrder) prev = firstOrder(x0, sample, i);
      else if (solverOrder === 2 || s.lowerOrderNums < 2 || secondToLastSecondOrder) prev = secondOrder(outputs, sample, i);
      else prev = thirdOrder(outputs, sample, i);
      const lowerOrderNums = Math.min(s.lowerOrderNums + 1, solverOrder);
      return { prevSample: prev, state: Object.freeze({ index: i + 1, outputs, lowerOrderNums }) };
    },
    addNoise(original, noise, i) {
      const [alpha, sigma] = alphaSigma(sig[i]);
      const out = new Float32Array(original.length);
      for (let k = 0; k < original.length; k++) out[k] = f32(alpha * original[k]) + f32(sigma * noise[k]);
      return out;
    },
  });
}
