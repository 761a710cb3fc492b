/**
 * The scheduler interface shared by every method in this folder.
 * Each step's arithmetic mirrors torch's float32 operation order (Math.fround after every
 * operation), so results match diffusers to float32 rounding even where values cancel.
 *
 * A scheduler is built once for a number of inference steps and is immutable afterwards. The
 * denoising loop threads an immutable `state` value through `step()`; nothing is mutated behind
 * the caller's back, so a loop can be replayed, forked or resumed from any saved state.
 *
 *   let latents = noise.map((x) => x * s.initNoiseSigma);
 *   let state = s.initialState;
 *   for (let i = 0; i < s.timesteps.length; i++) {
 *     const input = s.scaleModelInput(latents, i);        // (CFG: scale each batch half the same way)
 *     const eps = unet(input, s.timesteps[i]);            // float timestep
 *     const noise = s.needsNoise(i) ? rng.fillNormal(new Float32Array(latents.length)) : undefined;
 *     ({ prevSample: latents, state } = s.step(state, eps, i, latents, noise));
 *   }
 *
 * Noise for stochastic steps (DDIM eta > 0, Euler ancestral, LCM, DDPM) is passed in by the caller, who
 * draws it from our own `Rng`: the same seed gives the same image here on every platform, but not
 * the image diffusers gives for that seed (torch's generator is a different stream).
 */

export type SchedulerName = 'ddim' | 'pndm' | 'euler' | 'euler-a' | 'dpm++2m' | 'dpm++2m-karras' | 'lcm' | 'ddpm';

export const SCHEDULER_NAMES: readonly SchedulerName[] = ['ddim', 'pndm', 'euler', 'euler-a', 'dpm++2m', 'dpm++2m-karras', 'lcm', 'ddpm'];

/** Opaque, immutable state between steps. `index` is the position of the next step. */
export interface SchedulerState {
  readonly index: number;
}

export interface StepOutput {
  /** The less noisy sample x_{t-1} (a new array; inputs are never modified). */
  prevSample: Float32Array;
  /** The state to pass to the next step. */
  state: SchedulerState;
}

export interface Scheduler {
  /** Our name for the method ('dpm++2m-karras' for DPM-Solver++ with Karras sigmas). */
  readonly name: SchedulerName;
  /** The diffusers class it reproduces, e.g. 'EulerDiscreteScheduler'. */
  readonly className: string;
  /** The number of inference steps asked for. */
  readonly steps: number;
  /**
   * One entry per U-Net call: the timestep to give the U-Net (may be fractional, e.g. Euler with
   * linspace spacing). Its length is not always `steps`: PNDM makes steps+1 calls (its first
   * timestep is repeated) and more with PRK warm-up steps.
   */
  readonly timesteps: readonly number[];
  /** Multiply the initial Gaussian noise by this (1 for DDIM/PNDM/DPM/LCM, sigma_max-ish for Euler). */
  readonly initNoiseSigma: number;
  /** True when some steps take noise (DDIM with eta > 0, Euler ancestral, LCM). */
  readonly stochastic: boolean;
  /**
   * True when step i uses a fresh standard-normal `noise` array of the sample's size; `step()`
   * requires it then and ignores it otherwise (LCM's and Euler ancestral's last steps use none).
   */
  needsNoise(i: number): boolean;
  /** True when step() takes the model's predicted variance (DDPM with variance_type learned_range). */
  readonly usesVariance?: boolean;
  /** The state before the first step. */
  readonly initialState: SchedulerState;
  /**
   * The state before step i for a loop that begins there (img2img; diffusers' set_begin_index):
   * position i, no history.
   */
  beginState(i: number): SchedulerState;
  /** The U-Net input at step i (a new array; works on any batch, as the scaling is one scalar). */
  scaleModelInput(sample: Float32Array, i: number): Float32Array;
  /**
   * One denoising step at position i (must equal `state.index`): from the model output (already
   * guided, for CFG) and the current sample to the previous sample.
   */
  step(state: SchedulerState, modelOutput: Float32Array, i: number, sample: Float32Array, noise?: Float32Array, variance?: Float32Array): StepOutput;
  /** Forward diffusion to the noise level of timestep position i (img2img): a new array. */
  addNoise(original: Float32Array, noise: Float32Array, i: number): Float32Array;
}
