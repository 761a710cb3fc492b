/**
 * The registry of acceleration methods and the `--accel NAME[:key=value,...]` syntax. Each method
 * is one file exporting its MethodDefinition (method.ts); adding one is that file and one line in
 * METHODS. Keys use the official code's parameter names; every value is checked against its
 * knob's type and range.
 */
import { InputError, describe } from '../errors.ts';
import { combine, type Accelerator } from '../runtime/plan.ts';
import { ATTN_REUSE } from './attn-reuse.ts';
import { DEEPCACHE } from './deepcache.ts';
import { FIRST_BLOCK_CACHE } from './first-block-cache.ts';
import { FORA } from './fora.ts';
import { SKIP_CACHE } from './skip-cache.ts';
import { TEACACHE } from './teacache.ts';
import type { Knob, KnobValues, MethodDefinition } from './method.ts';
import { own } from '../util/own.ts';
import { TGATE } from './tgate.ts';
import { TOME } from './tome.ts';

export const METHODS: Record<string, MethodDefinition> = Object.fromEntries(
  ([TGATE, DEEPCACHE, ATTN_REUSE, TOME, FORA, SKIP_CACHE, FIRST_BLOCK_CACHE, TEACACHE] as MethodDefinition[]).map((m) => [m.name, m]),
);

export interface AccelSpec {
  method: string;
  params: KnobValues;
}

/** The method named `name`, looked up as an own key only ("toString" is no method). */
export function methodNamed(name: string): MethodDefinition | undefined {
  return own(METHODS, name);
}

/** Parses one `--accel` value, e.g. `tgate:gate_step=10,sp_interval=5`. */
export function parseAccelSpec(text: string): AccelSpec {
  const [method, rest] = text.split(/:(.*)/s, 2);
  // Split at the first "=" only: "gate_step=10=999" is the value "10=999" (refused), not 10.
  return specOf(method, (rest ? rest.split(',') : []).map((pair): [string, string | undefined] =>
    (pair.includes('=') ? [pair.slice(0, pair.indexOf('=')), pair.slice(pair.indexOf('=') + 1)] : [pair, undefined])));
}

/** A `--sweep` value: methods joined by "+", e.g. `tgate:gate_step=10+deepcache:cache_interval=3`. */
export function parseSweepSetting(text: string): AccelSpec[] {
  const specs = text.split('+').map(parseAccelSpec);
  createAccelerator(specs); // refuse impossible combinations before any work
  return specs;
}

/** The method's defaults with the given knob values (as text), each checked against its knob. */
function specOf(method: string, values: [string, string | undefined][]): AccelSpec {
  const definition = methodNamed(method);
  if (!definition) throw new InputError('accel', 'unknown method', Object.keys(METHODS).join(', '), JSON.stringify(method));
  const params: KnobValues = { ...definition.defaults };
  const given = new Set<string>();
  for (const [key, value] of values) {
    if (given.has(key)) throw new InputError(`accel ${method}:${key}`, 'given twice', 'each knob once');
    given.add(key);
    params[key] = parseKnob(`accel ${method}:${key}`, own(definition.knobs, key), key, value, Object.keys(definition.knobs));
  }
  return { method, params };
}

/** What the library's `accel` option takes per method: `"tgate"`, `"tgate:gate_step=10"` or `{ method: 'tgate', params: { gate_step: 10 } }`. */
export type AccelInput = string | { method: string; params?: Partial<KnobValues> };

/** Checked specs from the library's `accel` option, each value against its knob. */
export function toAccelSpecs(input: unknown): AccelSpec[] {
  if (input === undefined) return [];
  const expected = 'a list of method names, "name:key=value,..." strings or { method, params } objects';
  if (!Array.isArray(input)) throw new InputError('accel', 'wrong value', expected, describe(input));
  return input.map((item: unknown) => {
    if (typeof item === 'string') return parseAccelSpec(item);
    if (typeof item !== 'object' || item === null || typeof (item as { method?: unknown }).method !== 'string') {
      throw new InputError('accel', 'wrong value', expected, describe(item));
    }
    const { method, params: given = {} } = item as { method: string; params?: unknown };
    if (typeof given !== 'object' || given === null || Array.isArray(given)) throw new InputError(`accel ${method}: params`, 'wrong value', 'an object of knob values', describe(given));
    // A default value passes as it is (a spec parsed before carries every knob, 'auto' and '' too).
    const defaults: Record<string, unknown> = methodNamed(method)?.defaults ?? {};
    const values = Object.entries(given).filter(([key, value]) => !(Object.hasOwn(defaults, key) && value === defaults[key]))
      .map(([key, value]): [string, string] => [key, typeof value === 'number' || typeof value === 'boolean' || typeof value === 'string' ? String(value) : describe(value)]);
    return specOf(method, values);
  });
}

/** One knob's value from its text, checked against its type and range. */
function parseKnob(where: string, knob: Knob | undefined, key: string, value: string | undefined, keys: string[]): number | boolean | string {
  if (!knob) throw new InputError(where, 'unknown key', keys.join(', '), key);
  if (value === undefined || value === '') throw new InputError(where, 'no value', `${key}=VALUE`);
  if (knob.type === 'string') return value;
  if ((knob.type === 'int' || knob.type === 'number') && knob.auto && value === 'auto') return 'auto';
  if (knob.type === 'bool') {
    if (value !== 'true' && value !== 'false') throw new InputError(where, 'wrong value', 'true or false', value);
    return value === 'true';
  }
  const n = Number(value);
  const syntax = knob.type === 'int' ? /^[+-]?\d+$/ : /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;
  const inRange = n > knob.min || (n === knob.min && !knob.minExclusive);
  const belowMax = n < knob.max || (n === knob.max && !knob.maxExclusive);
  if (!syntax.test(value) || !Number.isFinite(n) || (knob.type === 'int' && !Number.isSafeInteger(n)) || !inRange || !belowMax) {
    const range = `${knob.minExclusive ? '>' : '≥'} ${knob.min} and ${knob.maxExclusive ? '<' : '≤'} ${knob.max}`;
    const auto = knob.auto ? ` or auto (${knob.auto.doc})` : '';
    throw new InputError(where, 'wrong value', `${knob.type === 'int' ? 'an integer' : 'a number'} ${range}${auto} (${knob.doc})`, value);
  }
  return n;
}

/** The run length 'auto' knobs fit when a caller has no run yet (a check of the flags alone): the papers' 25 steps. */
const NOMINAL_CALLS = 25;

/** `spec` with every 'auto' knob fitted to a run of `calls` model calls. */
export function fitToRun(spec: AccelSpec, calls: number): AccelSpec {
  const { knobs } = methodNamed(spec.method)!;
  const params = { ...spec.params };
  for (const [key, value] of Object.entries(params)) {
    const knob = own(knobs, key);
    if (value === 'auto' && knob && (knob.type === 'int' || knob.type === 'number') && knob.auto) params[key] = knob.auto.of(calls);
  }
  return { method: spec.method, params };
}

/**
 * One accelerator from several specs, composed in the order given (see runtime/plan.ts), for a
 * run of `calls` model calls ('auto' knobs fit to it).
 */
export function createAccelerator(input: readonly (AccelSpec | AccelInput)[] | undefined, calls = NOMINAL_CALLS): Accelerator | undefined {
  const specs = toAccelSpecs(input).map((s) => fitToRun(s, calls));
  const seen = new Set<string>();
  for (const s of specs) {
    if (seen.has(s.method)) throw new InputError('accel', `${s.method} given twice`, 'each method once');
    seen.add(s.method);
  }
  if (specs.length === 0) return undefined;
  return combine(specs.map((s) => methodNamed(s.method)!.create(s.params)));
}

/**
 * The methods of a request to the service, as `--accel` values: parsed, refused where a value names
 * a file on the server (a request may not read its files), and checked as one combination.
 */
export function requestAccelSpecs(texts: readonly string[]): AccelSpec[] {
  const specs = texts.map(parseAccelSpec);
  for (const { method, params } of specs) {
    for (const [key, value] of Object.entries(params)) {
      const knob = own(methodNamed(method)!.knobs, key);
      if (knob?.type === 'string' && typeof value === 'string' && value !== '' && knob.file?.names(value)) {
        throw new InputError(`accel ${method}:${key}`, 'names a file, which only the command line may read', knob.file.inline, JSON.stringify(value.slice(0, 100)));
      }
    }
  }
  createAccelerator(specs);
  return specs;
}

/** `name:key=value,...` with every knob, for reports. */
export function formatAccelSpec(spec: AccelSpec): string {
  return `${spec.method}:${Object.entries(spec.params).filter(([, v]) => v !== '').map(([k, v]) => `${k}=${v}`).join(',')}`;
}

/** The method's main knob (its first) and the knobs that differ from its defaults, e.g. `tgate:gate_step=10,warm_up=1`. */
export function shortAccelSpec(spec: AccelSpec): string {
  const { defaults, knobs } = methodNamed(spec.method)!;
  const main = Object.keys(knobs)[0];
  const shown = Object.entries(spec.params).filter(([k, v]) => k === main || defaults[k] !== v);
  return `${spec.method}:${shown.map(([k, v]) => `${k}=${v}`).join(',')}`;
}
