/**
 * The registry of acceleration methods and the `--accel NAME[:key=value,...]` syntax. Keys use
 * the official code's parameter names; every value is checked against its knob's type and range.
 */
import { InputError } from '../errors.ts';
import { DEEPCACHE_DEFAULTS, deepcache, type DeepCacheParams } from './deepcache.ts';
import { combine, type Accelerator } from './plan.ts';
import { TGATE_DEFAULTS, tgate, type TgateParams } from './tgate.ts';
import { ATTN_REUSE_DEFAULTS, attnReuse, type AttnReuseParams } from './attn-reuse.ts';
import { TOME_DEFAULTS, checkTomeApplies, tome, type TomeParams } from './tome.ts';

interface Knob {
  /** 'number': any finite decimal number. */
  type: 'int' | 'bool' | 'number' | 'string';
  min?: number;
  /** For 'number': min itself is refused. */
  minExclusive?: boolean;
  /** For 'number': values from this one up are refused. */
  maxExclusive?: number;
  doc: string;
}

interface MethodDefinition {
  paper: string;
  knobs: Record<string, Knob>;
  defaults: Record<string, number | boolean | string>;
  create(params: Record<string, number | boolean | string>): Accelerator;
}

export const METHODS: Record<string, MethodDefinition> = {
  tgate: {
    paper: 'TGATE v2 (arXiv 2404.02747)',
    knobs: {
      gate_step: { type: 'int', min: 1, doc: 'model calls with CFG; cross-attention cached at call gate_step-1, reused after' },
      sp_interval: { type: 'int', min: 1, doc: 'self-attention refresh interval before the gate' },
      fi_interval: { type: 'int', min: 1, doc: 'self-attention refresh interval after the gate' },
      warm_up: { type: 'int', min: 0, doc: 'calls that always compute self-attention' },
      cache_self_attn: { type: 'bool', doc: 'false = TGATE v1 (gate cross-attention only)' },
    },
    defaults: { ...TGATE_DEFAULTS },
    create: (p) => {
      const params = p as unknown as TgateParams;
      // The gate calls need full passes of methods that cut the U-Net (T-GATE's SD_DeepCache.py
      // resets DeepCache at gate_step-1 and gate_step).
      return { ...tgate(params), fullPassCalls: [params.gate_step - 1, params.gate_step] };
    },
  },
  deepcache: {
    paper: 'DeepCache (arXiv 2312.00858)',
    knobs: {
      cache_interval: { type: 'int', min: 1, doc: 'model calls per full U-Net pass (1 = every call full)' },
      cache_branch_id: { type: 'int', min: 0, doc: 'branch recomputed on the other calls, 0 = shallowest (see src/accel/deepcache.ts)' },
      uniform: { type: 'bool', doc: 'true: a full pass every cache_interval calls; false: spaced by pow around center' },
      pow: { type: 'number', min: 1, minExclusive: true, doc: 'non-uniform spacing exponent' },
      center: { type: 'int', min: 0, doc: 'non-uniform: step where full passes are densest' },
    },
    defaults: { ...DEEPCACHE_DEFAULTS },
    create: (p) => deepcache(p as unknown as DeepCacheParams),
  },
  'attn-reuse': {
    paper: 'attention-map reuse, Hunter et al. (arXiv 2401.01008)',
    knobs: {
      reuse: { type: 'int', min: 0, doc: 'HURRY: reuse the maps on the last r model calls' },
      schedule: { type: 'string', doc: '0/1 per model call, as digits (11110100…) or a JSON file `diffuse tune` wrote; overrides reuse' },
      self_attn: { type: 'bool', doc: 'reuse self-attention maps' },
      cross_attn: { type: 'bool', doc: 'reuse cross-attention maps' },
      fp16: { type: 'bool', doc: 'store maps in float16' },
      max_map_memory: { type: 'number', min: 0, doc: 'MiB the stored maps may take (0 = no limit); the largest layers are left out first' },
    },
    defaults: { ...ATTN_REUSE_DEFAULTS },
    create: (p) => attnReuse(p as unknown as AttnReuseParams),
  },
  tome: {
    paper: 'ToMe for SD (arXiv 2303.17604), tomesd v0.1.3',
    knobs: {
      ratio: { type: 'number', min: 0, maxExclusive: 1, doc: 'share of tokens merged; capped at 1 − 1/(sx·sy)' },
      max_downsample: { type: 'int', min: 1, doc: 'merge in blocks at most this much downsampled (1, 2, 4 or 8)' },
      sx: { type: 'int', min: 1, doc: 'dst stride along x' },
      sy: { type: 'int', min: 1, doc: 'dst stride along y' },
      use_rand: { type: 'bool', doc: 'random dst within each sy×sx cell (off for an odd batch)' },
      merge_attn: { type: 'bool', doc: 'merge around self-attention' },
      merge_crossattn: { type: 'bool', doc: 'merge around cross-attention' },
      merge_mlp: { type: 'bool', doc: 'merge around the feed-forward' },
      seed: { type: 'int', min: 0, doc: 'seed of the use_rand stream' },
    },
    defaults: { ...TOME_DEFAULTS },
    create: (p) => tome(p as unknown as TomeParams),
  },
};

export interface AccelSpec {
  method: string;
  params: Record<string, number | boolean | string>;
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

/** One accelerator from several specs, composed in the order given (see plan.ts). */
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

/** Refuses methods that would do nothing on this U-Net (ToMe without a block to merge in). */
export function checkApplicable(specs: AccelSpec[], transformerLevels: number[]): void {
  for (const s of specs) if (s.method === 'tome') checkTomeApplies(s.params as unknown as TomeParams, transformerLevels);
}
