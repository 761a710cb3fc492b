/**
 * Binds a model's parameter names to a component's safetensors tensors, checking each tensor's
 * shape against the shape the config implies (a mismatch means config and weights disagree).
 */
import { InputError } from '../errors.ts';
import type { ParamSource, WeightRef } from '../graph/builder.ts';
import type { WeightSet } from './diffusers-folder.ts';

export interface WeightParamsOptions {
  /** Alternative key prefixes tried in order, e.g. transformers 4.x's `text_model.`. */
  prefixes?: string[];
  /** Names the config file that the expected shapes come from. */
  configFile: string;
}

export function weightParams(weights: WeightSet, options: WeightParamsOptions): ParamSource {
  const prefixes = options.prefixes ?? [''];
  return {
    param(name: string, shape: number[]): WeightRef {
      const key = prefixes.map((p) => p + name).find((k) => weights.has(k));
      if (key === undefined) {
        throw new InputError(weights.source, `tensor "${prefixes[0]}${name}" is missing`,
          `a weight of shape [${shape.join(', ')}] as ${options.configFile} implies`);
      }
      const info = weights.info(key);
      if (info.dtype !== 'F32' && info.dtype !== 'F16' && info.dtype !== 'BF16') {
        throw new InputError(`${info.file}: ${key}`, 'unsupported weight dtype', 'F32, F16 or BF16', info.dtype);
      }
      if (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i])) {
        throw new InputError(`${info.file}: ${key}`, `shape disagrees with ${options.configFile}`,
          `[${shape.join(', ')}]`, `[${info.shape.join(', ')}]`);
      }
      return { name, shape, dtype: info.dtype, location: { file: info.file, offset: info.offset, byteLength: info.byteLength } };
    },
  };
}
