/**
 * The registry of acceleration methods and the `--accel NAME[:key=value,...]` syntax. Each method
 * is one file exporting its MethodDefinition (method.ts); adding one is that file and one line in
 * METHODS. Keys use the official code's parameter names; every value is checked against its
 * knob's type and range.
 */
import { InputError } from '../errors.ts';
import { combine, type Accelerator } from '../runtime/plan.ts';
import { ATTN_REUSE } from './attn-reuse.ts';
import { DEEPCACHE } from './deepcache.ts';
import { FORA } from './fora.ts';
import type { KnobValues, MethodDefinition } from './method.ts';
import { TGATE } from './tgate.ts';
import { TOME } from './tome.ts';

export const METHODS: Record<string, MethodDefinition> = Object.fromEntries(
  ([TGATE, DEEPCACHE, ATTN_REUSE, TOME, FORA] as MethodDefinition[]).map((m) => [m.name, m]),
);

export interface AccelSpec {
  method: string;
  params: KnobValues;
}

/** Parses one `--accel` value, e.g. `tgate:gate_step=10,sp_interval=5`. */
export function parseAccelSpec(text: string): AccelSpec {
  const [method, rest] = text.split(/:(.*)/s, 2);
  const definition = METHODS[method];
  if (!definition) throw new InputError('--accel', 'unknown method', Object.keys(METHODS).join(', '), method);
  const params = { ...definition.defaults };
  for (const pair of rest ? rest.split(',') : []) {
    const [key, value] = pair.split('=', 2);
    const knob = definition.knobs[key];
    const where = `--accel ${method}:${key}`;
    if (!knob) throw new InputError(where, 'unknown key', Object.keys(definition.knobs).join(', '), key);
    if (value === undefined || value === '') throw new InputError(where, 'no value', `${key}=VALUE`);
    if (knob.type === 'string') {
      params[key] = value;
    } else if (knob.type === 'bool') {
      if (value !== 'true' && value !== 'false') throw new InputError(where, 'wrong value', 'true or false', value);
      params[key] = value === 'true';
    } else if (knob.type === 'number') {
      const n = Number(value);
      const min = knob.min ?? -Infinity;
      const max = knob.maxExclusive ?? Infinity;
      if (!/^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(value) || !Number.isFinite(n) || n < min || (knob.minExclusive && n === min) || n >= max) {
        const range = `${knob.minExclusive ? '>' : '≥'} ${min}${max < Infinity ? ` and < ${max}` : ''}`;
        throw new InputError(where, 'wrong value', `a number ${range} (${knob.doc})`, value);
      }
      params[key] = n;
    } else {
      const n = Number(value);
      if (!/^-?\d+$/.test(value) || (knob.min !== undefined && n < knob.min)) {
        throw new InputError(where, 'wrong value', `an integer ≥ ${knob.min ?? '-∞'} (${knob.doc})`, value);
      }
      params[key] = n;
    }
  }
  return { method, params };
}

/** One accelerator from several specs, composed in the order given (see runtime/plan.ts). */
export function createAccelerator(specs: AccelSpec[]): Accelerator | undefined {
  const seen = new Set<string>();
  for (const s of specs) {
    if (seen.has(s.method)) throw new InputError('--accel', `${s.method} given twice`, 'each method once');
    seen.add(s.method);
  }
  if (specs.length === 0) return undefined;
  return combine(specs.map((s) => METHODS[s.method].create(s.params)));
}

/** `name:key=value,...` with every knob, for reports. */
export function formatAccelSpec(spec: AccelSpec): string {
  return `${spec.method}:${Object.entries(spec.params).filter(([, v]) => v !== '').map(([k, v]) => `${k}=${v}`).join(',')}`;
}

/** The method's main knob (its first) and the knobs that differ from its defaults, e.g. `tgate:gate_step=10,warm_up=1`. */
export function shortAccelSpec(spec: AccelSpec): string {
  const { defaults, knobs } = METHODS[spec.method];
  const main = Object.keys(knobs)[0];
  const shown = Object.entries(spec.params).filter(([k, v]) => k === main || defaults[k] !== v);
  return `${spec.method}:${shown.map(([k, v]) => `${k}=${v}`).join(',')}`;
}
