/** Library option names in CLI words: the library names its request options, the CLI its flags. */
import { withOptionNames } from '../util/option-names.ts';

const FLAG_OF: Record<string, string> = {
  prompt: '--prompt', negativePrompt: '--negative-prompt', steps: '--steps', guidanceScale: '--guidance', guidanceRescale: '--guidance-rescale',
  scheduler: '--scheduler', seed: '--seed', width: '--width', height: '--height', imagesPerPrompt: '--batch', latents: '--latents',
  accel: '--accel', classLabels: '--class', maxSequenceLength: '--max-sequence-length', resolutionBinning: '--resolution-binning',
  device: '--device', threads: '--threads', precision: '--precision', memoryLimit: '--memory-limit', image: '--init-image', strength: '--strength',
};

/** "width/height: must be…" → "--width/--height: must be…"; "accel tgate:gate_step: …" → "--accel tgate:gate_step: …". */
export function withFlagNames(message: string): string {
  return withOptionNames(message, FLAG_OF);
}
