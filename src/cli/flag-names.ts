/** Library option names in CLI words: the library names its request options, the CLI its flags. */
import { withOptionNames } from '../util/option-names.ts';
import { own } from '../util/own.ts';

const FLAG_OF: Record<string, string> = {
  prompt: '--prompt', negativePrompt: '--negative-prompt', steps: '--steps', guidanceScale: '--guidance', guidanceRescale: '--guidance-rescale',
  scheduler: '--scheduler', seed: '--seed', width: '--width', height: '--height', imagesPerPrompt: '--batch', latents: '--latents',
  accel: '--accel', classLabels: '--class', maxSequenceLength: '--max-sequence-length', resolutionBinning: '--resolution-binning',
  device: '--device', threads: '--threads', precision: '--precision', memoryLimit: '--memory-limit', image: '--init-image', strength: '--strength',
};

/** Commands that set a request option by another flag than generate's: the size by --size alone. */
const COMMAND_FLAG_OF: Record<string, Record<string, string>> = Object.fromEntries(['inspect', 'bench', 'bench-generate', 'bench-unet', 'bench-transformer']
  .map((command) => [command, { ...FLAG_OF, width: '--size', height: '--size' }]));

/**
 * "width/height: must be…" → "--width/--height: must be…" ("--size" for the commands that take
 * that instead); "accel tgate:gate_step: …" → "--accel tgate:gate_step: …".
 */
export function withFlagNames(message: string, command?: string): string {
  return withOptionNames(message, (command !== undefined ? own(COMMAND_FLAG_OF, command) : undefined) ?? FLAG_OF);
}
