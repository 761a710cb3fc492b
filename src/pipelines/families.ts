/**
 * Which pipeline runs which model_index.json `_class_name`, and the steps and guidance each
 * runs with when a request leaves them out: the one table the CLI, bench, tune and serve go by.
 */
import { InputError } from '../errors.ts';
import { own } from '../util/own.ts';
import type { PipelineFolder } from '../weights/diffusers-folder.ts';

export type PipelineFamily = 'stable-diffusion' | 'pixart' | 'dit';

/** The model_index.json `_class_name`s this engine runs, by the pipeline that runs them. */
const FAMILIES: Record<string, PipelineFamily> = {
  StableDiffusionPipeline: 'stable-diffusion', StableDiffusionXLPipeline: 'stable-diffusion', LatentConsistencyModelPipeline: 'stable-diffusion',
  PixArtAlphaPipeline: 'pixart', PixArtSigmaPipeline: 'pixart', DiTPipeline: 'dit',
};

/** Which pipeline runs a folder of this `_class_name`; undefined for one this engine does not run. */
export function pipelineFamily(className: string): PipelineFamily | undefined {
  return own(FAMILIES, className);
}

/** Which pipeline runs this folder; one error naming its model_index.json for a class this engine does not run. */
export function folderFamily(folder: PipelineFolder): PipelineFamily {
  const family = pipelineFamily(folder.className);
  if (!family) throw new InputError(`${folder.dir}/model_index.json: _class_name`, 'unsupported pipeline', pipelineClasses().join(', '), folder.className);
  return family;
}

/** The `_class_name`s of one family (all of them without one), for error messages and checks. */
export function pipelineClasses(family?: PipelineFamily): string[] {
  return Object.keys(FAMILIES).filter((name) => family === undefined || FAMILIES[name] === family);
}

/**
 * diffusers' defaults per pipeline class (its `__call__` signatures): the steps and guidance scale a
 * run uses when the request leaves them out. `generate`, `bench` and `tune` all go by this table.
 */
export function pipelineDefaults(className: string): { steps: number; guidanceScale: number } {
  const family = pipelineFamily(className);
  if (family === 'dit') return { steps: 50, guidanceScale: 4 };
  if (family === 'pixart') return { steps: 20, guidanceScale: 4.5 };
  if (className === 'LatentConsistencyModelPipeline') return { steps: 4, guidanceScale: 8.5 };
  return { steps: 50, guidanceScale: 7.5 };
}
