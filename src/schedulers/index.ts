/**
 * Choosing and building a scheduler from a diffusers `scheduler/scheduler_config.json`.
 *
 * Without a name the folder's own class (`_class_name`) is used. With a name, the folder's config
 * keys that the chosen class also has (betas, prediction_type, steps_offset, timestep_spacing,
 * clip_sample, ...) are kept and the others take the chosen class's defaults — exactly what
 * diffusers' `XScheduler.from_config(pipe.scheduler.config)` does. The names also force what they
 * mean: `dpm++2m` is DPM-Solver++ (algorithm_type dpmsolver++) of order 2 without Karras sigmas,
 * `dpm++2m-karras` the same with use_karras_sigmas true.
 */
import { InputError, describe } from '../errors.ts';
import type { Config } from '../weights/config.ts';
import { createDdim } from './ddim.ts';
import { createDdpm } from './ddpm.ts';
import { createDpmSolverMultistep } from './dpm-solver-multistep.ts';
import { createEulerAncestral } from './euler-ancestral.ts';
import { createEuler } from './euler.ts';
import { createLcm } from './lcm.ts';
import { createPndm } from './pndm.ts';
import { SCHEDULER_NAMES, type Scheduler, type SchedulerName } from './types.ts';

export { SCHEDULER_NAMES, type Scheduler, type SchedulerName, type SchedulerState, type StepOutput } from './types.ts';

/** diffusers class → the name we build it under (DPM's Karras-ness comes from its config). */
export const SCHEDULER_CLASSES: Readonly<Record<string, SchedulerName>> = {
  DDIMScheduler: 'ddim',
  PNDMScheduler: 'pndm',
  EulerDiscreteScheduler: 'euler',
  EulerAncestralDiscreteScheduler: 'euler-a',
  DPMSolverMultistepScheduler: 'dpm++2m',
  LCMScheduler: 'lcm',
  DDPMScheduler: 'ddpm',
};

export interface CreateSchedulerOptions {
  /** Which method; default: the folder's class (`className`, else the config's `_class_name`). */
  name?: string;
  /**
   * The folder's scheduler class as model_index.json names it (diffusers instantiates that class,
   * whatever the config's `_class_name` says); used when no name is given.
   */
  className?: string;
  /** The parsed scheduler_config.json. */
  config: Config;
  /** Its path (or any label), used to name config keys in errors. */
  configFile: string;
  /** Number of inference steps. */
  steps: number;
  /** DDIM's eta (0 = deterministic); ignored by the other methods. */
  eta?: number;
}

export function isSchedulerName(value: string): value is SchedulerName {
  return (SCHEDULER_NAMES as readonly string[]).includes(value);
}

/** Builds the scheduler for `steps` inference steps. Every problem with the input is an InputError. */
export function createScheduler(options: CreateSchedulerOptions): Scheduler {
  const { config, configFile: where, steps } = options;
  let name: SchedulerName;
  let byName: boolean;
  if (options.name !== undefined) {
    if (!isSchedulerName(options.name)) {
      throw new InputError('scheduler', `unknown scheduler "${options.name}"`, `one of ${SCHEDULER_NAMES.join(', ')}`, describe(options.name));
    }
    name = options.name;
    byName = true;
  } else {
    const fromIndex = options.className !== undefined;
    const cls = fromIndex ? options.className : config._class_name;
    const clsWhere = fromIndex ? 'model_index.json: scheduler' : `${where}: _class_name`;
    if (cls === undefined || cls === null) {
      throw new InputError(clsWhere, 'missing; cannot tell which scheduler the folder uses',
        `a diffusers scheduler class, or choose one by name: ${SCHEDULER_NAMES.join(', ')}`);
    }
    if (typeof cls !== 'string' || !Object.prototype.hasOwnProperty.call(SCHEDULER_CLASSES, cls)) {
      throw new InputError(clsWhere, 'unsupported scheduler class',
        `one of ${Object.keys(SCHEDULER_CLASSES).join(', ')} (or choose one by name: ${SCHEDULER_NAMES.join(', ')})`, describe(cls));
    }
    name = SCHEDULER_CLASSES[cls];
    byName = false;
  }
  const s = { steps };
  switch (name) {
    case 'ddim': return createDdim(config, where, { steps, eta: options.eta });
    case 'pndm': return createPndm(config, where, s);
    case 'euler': return createEuler(config, where, s);
    case 'euler-a': return createEulerAncestral(config, where, s);
    case 'lcm': return createLcm(config, where, s);
    case 'ddpm': return createDdpm(config, where, s);
    case 'dpm++2m':
    case 'dpm++2m-karras':
      return byName
        ? createDpmSolverMultistep(config, where, s, { name, karras: name === 'dpm++2m-karras', solverOrder: 2 })
        : createDpmSolverMultistep(config, where, s);
  }
}
