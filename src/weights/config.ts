/**
 * Typed readers over parsed JSON configs (config.json, scheduler_config.json, ...).
 * Every problem is an InputError naming `file: key` with what was expected and found.
 * A key set to null counts as absent, as diffusers treats it.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { InputError, describe } from '../errors.ts';

export type Config = Record<string, unknown>;

/** Reads and parses a JSON file; missing file or bad JSON is an InputError naming the path. */
export function readJsonFile(filePath: string): unknown {
  const abs = path.resolve(filePath);
  let text: string;
  try {
    text = fs.readFileSync(abs, 'utf8');
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
    throw new InputError(path.resolve(filePath), 'top level must be a JSON object', 'an object', describe(value));
  }
  return value as Config;
}

function lookup(cfg: Config, key: string): unknown {
  return Object.prototype.hasOwnProperty.call(cfg, key) ? cfg[key] : undefined;
}

function wrongType(where: string, key: string, expected: string, found: unknown): InputError {
  return new InputError(`${where}: ${key}`, 'wrong value', expected, describe(found));
}

/** Reads a required (no default) or defaulted value, checked by `accept`. */
function read<T>(cfg: Config, key: string, where: string, expected: string,
  accept: (v: unknown) => v is T, dflt: T | undefined): T {
  const value = lookup(cfg, key);
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
  const value = lookup(cfg, key);
  if (value === undefined || value === null) return undefined;
  if (!accept(value)) throw wrongType(where, key, expected, value);
  return value;
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
  return read(cfg, key, where, 'a finite number', isNumber, dflt);
}

export function cfgInt(cfg: Config, key: string, where: string, dflt?: number): number {
  return read(cfg, key, where, 'an integer', isInt, dflt);
}

/** Sizes and counts (channels, layers, heads): integers > 0. */
export function cfgPositiveInt(cfg: Config, key: string, where: string, dflt?: number): number {
  return read(cfg, key, where, 'a positive integer', isPositiveInt, dflt);
}

export function cfgPositiveIntList(cfg: Config, key: string, where: string, dflt?: number[]): number[] {
  return [...read(cfg, key, where, 'a non-empty list of positive integers', isPositiveIntList, dflt)];
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
  return [...read(cfg, key, where, 'a list of finite numbers', isNumberList, dflt)];
}

export function cfgIntList(cfg: Config, key: string, where: string, dflt?: number[]): number[] {
  return [...read(cfg, key, where, 'a list of integers', isIntList, dflt)];
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
  if (typeof value === 'number') return new Array<number>(length).fill(value);
  if (value.length !== length) throw wrongType(where, key, expected, value);
  return [...value];
}

export function cfgOptionalNumber(cfg: Config, key: string, where: string): number | undefined {
  return readOptional(cfg, key, where, 'a finite number', isNumber);
}

export function cfgOptionalInt(cfg: Config, key: string, where: string): number | undefined {
  return readOptional(cfg, key, where, 'an integer', isInt);
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
