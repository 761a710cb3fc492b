/**
 * The embedded reference models, trained by tools/train-reference/ on the scenes of src/scenes/:
 * - "reference" (assets/reference-model): a small Stable Diffusion pipeline, what `generate` uses
 *   without --model and the yardstick of fidelity measurements;
 * - "reference-dit" (assets/reference-dit): a class-conditional DiT, a diffusers DiTPipeline folder;
 * - "reference-skip-dit" (assets/reference-skip-dit): its twin with Skip-DiT's long skip branches,
 *   trained the same way, converted from its authors' checkpoint layout (assets/reference-skip-dit.pt).
 */
import { joinPath, resolvePath } from '../io/files.ts';

// import.meta.dirname is Node's; in a browser bundle the page mounts the models it serves instead.
const ASSETS = import.meta.dirname && resolvePath(joinPath(import.meta.dirname, '../../assets'));
export const REFERENCE_MODEL = ASSETS && joinPath(ASSETS, 'reference-model');

export const REFERENCE_MODELS: Record<string, string> = ASSETS ? {
  reference: REFERENCE_MODEL,
  'reference-dit': joinPath(ASSETS, 'reference-dit'),
  'reference-skip-dit': joinPath(ASSETS, 'reference-skip-dit'),
} : {};

/** How --model help texts name them. */
export const REFERENCE_NAMES = 'or "reference", "reference-dit", "reference-skip-dit" (the embedded models)';

/** A --model value: absent means the embedded U-Net model, a reference name its folder, anything else is a folder. */
export function modelFolder(flag: string | undefined): string {
  if (flag === undefined) return REFERENCE_MODEL;
  return Object.prototype.hasOwnProperty.call(REFERENCE_MODELS, flag) ? REFERENCE_MODELS[flag] : flag;
}
