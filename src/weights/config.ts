/**
 * Typed readers over parsed JSON configs (config.json, scheduler_config.json, ...).
 * Every problem is an InputError naming `file: key` with what was expected and found.
 * A key set to null counts as absent, as diffusers treats it.
 */
import { InputError, describe } from '../errors.ts';
import { readTextFile, resolvePath } from '../io/files.ts';
import { own } from '../util/own.ts';

export type Config = Record<string, unknown>;

/** Reads and parses a JSON file; missing file or bad JSON is an InputError naming the path. */
export function readJsonFile(filePath: string): unknown {
  const abs = resolvePath(filePath);
  let text: string;
  try {
    text = readTextFile(abs);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new InputError(abs, 'file not found');
    if (code === 'EISDIR') throw new InputError(abs, 'is a folder', 'a JSON file');
    throw new InputError(abs, `cannot read file (${code ?? (err as Error).message})`);
  }
  try {
    return parsePythonJson(text);
  } catch (err) {
    throw new InputError(abs, `not valid JSON (${(err as Error).message})`);
  }
}

const NON_FINITE: Record<string, number> = { NaN: NaN, Infinity: Infinity, '-Infinity': -Infinity };
const SENTINEL = '\u0000non-finite:';

/**
 * JSON as Python's json module writes it: bare NaN, Infinity and -Infinity are numbers (diffusers
 * saves DPMSolverMultistepScheduler's lambda_min_clipped as -Infinity).
 */
export function parsePythonJson(text: string): unknown {
  let out = '';
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i];
    if (inString) {
      if (ch === '\\') {
        out += ch + (text[i + 1] ?? '');
        i++;
        continue;
      }
      if (ch === '"') inString = false;
      out += ch;
      continue;
    }
    if (ch === '"') inString = true;
    const word = /^(-?Infinity|NaN)/.exec(text.slice(i, i + 9))?.[1];
    if (word) {
      out += JSON.stringify(SENTINEL + word);
      i += word.length - 1;
      continue;
    }
    out += ch;
  }
  return JSON.parse(out, (_key, value) => (typeof value === 'string' && value.startsWith(SENTINEL) ? NON_FINITE[value.slice(SENTINEL.length)] : value));
}

/** Reads a JSON file whose top level must be an object. */
export function readJsonObject(filePath: string): Config {
  const value = readJsonFile(filePath);
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new InputError(resolvePath(filePath), 'top level must be a JSON object', 'an object', describe(value));
  }
  return value as Config;
}

function wrongType(where: string, key: string, expected: string, found: unknown): InputError {
  return new InputError(`${where}: ${key}`, 'wrong value', expected, describe(found));
}

/** Reads a required (no default) or defaulted value, checked by `accept`. */
function read<T>(cfg: Config, key: string, where: string, expected: string,
  accept: (v: unknown) => v is T, dflt: T | undefined): T {
  const value = own(cfg, key);
  if (value === undefined || value === null) {
    if (dflt !== undefined) return dflt;
    throw new InputError(`${where}: ${key}`, 'missing required key', expected);
  }
  if (!accept(value)) throw wrongType(where, key, expected, value);
  return value;
}

/** Reads a value that may be absent (or null): undefined then. */
function readOptional<T>(cfg: Config, key: string, where: string, expected: string,
  accept: (v: unknown) => v is T): T | undefined {
  const value = own(cfg, key);
  if (value === undefined || value === null) return undefined;
  if (!accept(value)) throw wrongType(where, key, expected, value);
  return value;
}

/**
 * Ranges of the integer and number fields diffusers and transformers configs hold, by field name
 * (the names are the libraries' own). Past them a config is broken, not large: a layer count of
 * 65536 would build graphs for hours, 2³¹ train timesteps allocate gigabytes, a negative epsilon
 * or padding fails inside ONNX Runtime. Fields not listed: integers within ±2²⁰.
 */
const FIELD_RANGES: Record<string, [number, number]> = {
  layers_per_block: [1, 64], num_layers: [1, 1024], depth: [1, 1024], num_hidden_layers: [1, 1024], num_attention_heads: [1, 4096], num_heads: [1, 4096],
  transformer_layers_per_block: [1, 64], norm_num_groups: [1, 4096], patch_size: [1, 64], sample_size: [1, 16_384],
  num_train_timesteps: [1, 100_000], steps_offset: [0, 1000], downsample_padding: [0, 16], solver_order: [1, 3],
  original_inference_steps: [1, 1000], relative_attention_num_buckets: [4, 4096], relative_attention_max_distance: [1, 1 << 20],
  beta_start: [0, 1], beta_end: [0, 1], clip_sample_range: [0, 1e6], scaling_factor: [1e-6, 1e6], timestep_scaling: [0, 1e6],
};
const INT_RANGE: [number, number] = [-(2 ** 20), 2 ** 20];
/** Epsilons (norm_eps, layer_norm_eps, layer_norm_epsilon): in (0, 1). */
const isEpsilon = (key: string) => /(^|_)eps(ilon)?$/.test(key);

function checkRange(where: string, key: string, value: number, integer: boolean): void {
  if (isEpsilon(key)) {
    if (!(value > 0 && value < 1)) throw wrongType(where, key, 'a number in (0, 1)', value);
    return;
  }
  const [min, max] = own(FIELD_RANGES, key) ?? (integer ? INT_RANGE : [-Infinity, Infinity]);
  if (value < min || value > max) throw wrongType(where, key, `${integer ? 'an integer' : 'a number'} from ${min} to ${max}`, value);
}

const isNumber = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);
const isInt = (v: unknown): v is number => Number.isSafeInteger(v);
const isString = (v: unknown): v is string => typeof v === 'string';
const isBool = (v: unknown): v is boolean => typeof v === 'boolean';
const isStringList = (v: unknown): v is string[] => Array.isArray(v) && v.every(isString);
const isNumberList = (v: unknown): v is number[] => Array.isArray(v) && v.every(isNumber);
const isIntList = (v: unknown): v is number[] => Array.isArray(v) && v.every(isInt);
const isPositiveInt = (v: unknown): v is number => isInt(v) && v > 0;
const isPositiveIntList = (v: unknown): v is number[] => Array.isArray(v) && v.length > 0 && v.every(isPositiveInt);

export function cfgNumber(cfg: Config, key: string, where: string, dflt?: number): number {
  const value = read(cfg, key, where, 'a finite number', isNumber, dflt);
  checkRange(where, key, value, false);
  return value;
}

export function cfgInt(cfg: Config, key: string, where: string, dflt?: number): number {
  const value = read(cfg, key, where, 'an integer', isInt, dflt);
  checkRange(where, key, value, true);
  return value;
}

/** Sizes and counts (channels, layers, heads): integers > 0. */
export function cfgPositiveInt(cfg: Config, key: string, where: string, dflt?: number): number {
  const value = read(cfg, key, where, 'a positive integer', isPositiveInt, dflt);
  checkRange(where, key, value, true);
  return value;
}

export function cfgPositiveIntList(cfg: Config, key: string, where: string, dflt?: number[]): number[] {
  const values = [...read(cfg, key, where, 'a non-empty list of positive integers', isPositiveIntList, dflt)];
  if (values.length > 64) throw wrongType(where, key, 'at most 64 entries', values);
  for (const v of values) checkRange(where, key, v, true);
  return values;
}

export function cfgString(cfg: Config, key: string, where: string, dflt?: string): string {
  return read(cfg, key, where, 'a string', isString, dflt);
}

export function cfgBool(cfg: Config, key: string, where: string, dflt?: boolean): boolean {
  return read(cfg, key, where, 'true or false', isBool, dflt);
}

export function cfgStringList(cfg: Config, key: string, where: string, dflt?: string[]): string[] {
  return [...read(cfg, key, where, 'a list of strings', isStringList, dflt)];
}

export function cfgNumberList(cfg: Config, key: string, where: string, dflt?: number[]): number[] {
  const values = [...read(cfg, key, where, 'a list of finite numbers', isNumberList, dflt)];
  for (const v of values) checkRange(where, key, v, false);
  return values;
}

export function cfgIntList(cfg: Config, key: string, where: string, dflt?: number[]): number[] {
  const values = [...read(cfg, key, where, 'a list of integers', isIntList, dflt)];
  for (const v of values) checkRange(where, key, v, true);
  return values;
}

/** A string restricted to `allowed` (activation names, prediction types, ...). */
export function cfgOneOf<T extends string>(cfg: Config, key: string, where: string, allowed: readonly T[],
  dflt?: T): T {
  const expected = `one of ${allowed.map((a) => JSON.stringify(a)).join(', ')}`;
  const accept = (v: unknown): v is T => typeof v === 'string' && (allowed as readonly string[]).includes(v);
  return read(cfg, key, where, expected, accept, dflt);
}

/**
 * diffusers lets per-block settings (attention_head_dim, transformer_layers_per_block, ...) be
 * one int for all blocks or a list with one int per block; returns the per-block list.
 */
export function cfgIntOrIntList(cfg: Config, key: string, where: string, length: number,
  dflt?: number | number[]): number[] {
  const expected = `a positive integer or a list of ${length} positive integers`;
  const value = read(cfg, key, where, expected, (v): v is number | number[] => isPositiveInt(v) || isPositiveIntList(v), dflt);
  const values = typeof value === 'number' ? [value] : value;
  for (const v of values) checkRange(where, key, v, true);
  if (typeof value === 'number') return new Array<number>(length).fill(value);
  if (value.length !== length) throw wrongType(where, key, expected, value);
  return [...value];
}

export function cfgOptionalNumber(cfg: Config, key: string, where: string): number | undefined {
  const value = readOptional(cfg, key, where, 'a finite number', isNumber);
  if (value !== undefined) checkRange(where, key, value, false);
  return value;
}

export function cfgOptionalInt(cfg: Config, key: string, where: string): number | undefined {
  const value = readOptional(cfg, key, where, 'an integer', isInt);
  if (value !== undefined) checkRange(where, key, value, true);
  return value;
}

export function cfgOptionalString(cfg: Config, key: string, where: string): string | undefined {
  return readOptional(cfg, key, where, 'a string', isString);
}

export function cfgOptionalBool(cfg: Config, key: string, where: string): boolean | undefined {
  return readOptional(cfg, key, where, 'true or false', isBool);
}

/** E.g. GroupNorm needs every channel count divisible by the group count. */
export function checkDivisible(where: string, key: string, divisor: number, values: number[], valuesKey: string): void {
  const bad = values.find((v) => v % divisor !== 0);
  if (bad !== undefined) {
    throw new InputError(`${where}: ${key}`, `${valuesKey} entry ${bad} is not divisible by ${divisor}`, `a divisor of every ${valuesKey} entry`, `${divisor}`);
  }
}
