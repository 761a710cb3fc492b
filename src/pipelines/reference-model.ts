/**
 * The embedded reference model (assets/reference-model): a small Stable Diffusion pipeline trained
 * by tools/train-reference/ on the captioned scenes of src/scenes/. It is what `generate` uses
 * without --model, and the yardstick of fidelity measurements.
 */
import * as path from 'node:path';

export const REFERENCE_MODEL = path.resolve(import.meta.dirname, '../../assets/reference-model');

/** A --model value: absent or "reference" means the embedded model, anything else is a folder. */
export function modelFolder(flag: string | undefined): string {
  return flag === undefined || flag === 'reference' ? REFERENCE_MODEL : flag;
}
