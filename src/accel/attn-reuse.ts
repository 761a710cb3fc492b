/**
 * Attention-map reuse (Hunter et al., arXiv 2401.01008): on "reuse" model calls, every attention
 * layer skips to_q, to_k, QKᵀ and the softmax and applies the post-softmax map stored at the last
 * "compute" call to freshly computed values. The schedule is a binary vector over model calls
 * (1 = compute, 0 = reuse; call 0 always computes), either HURRY(N, r) — compute the first N − r
 * calls, reuse the last r — or given (a PHAST schedule found by `diffuse tune`). Maps are kept
 * per layer and batch shape (so per CFG branch), in float16 unless fp16=false; `max_map_memory`
 * (MiB) leaves the largest layers out of reuse until the rest fit. The maps come from the
 * attention core the model builds through its hooks: a storing call's core emits its map, a
 * reusing call's core is the stored map times the values.
 */
import { InputError } from '../errors.ts';
import { readTextFile } from '../io/files.ts';
import type { GraphBuilder, Value } from '../graph/builder.ts';
import type { TensorLike } from '../runtime/executor.ts';
import type { SegmentRole } from '../runtime/protocol.ts';
import type { Accelerator, PlanContext, Rehearsal, RunHooks, SegmentVariant } from '../runtime/plan.ts';
import type { MethodDefinition } from './method.ts';

export type AttnReuseParams = {
  reuse: number;
  schedule: string;
  self_attn: boolean;
  cross_attn: boolean;
  fp16: boolean;
  max_map_memory: number;
};

const ATTN_REUSE_DEFAULTS: MethodDefinition<AttnReuseParams>['defaults'] = { reuse: 'auto', schedule: '', self_attn: true, cross_attn: true, fp16: true, max_map_memory: 0 };

/** HURRY(N, r): compute the first N − r calls, reuse the last r. */
export function hurry(calls: number, reuse: number): number[] {
  return Array.from({ length: calls }, (_, s) => (s < calls - reuse ? 1 : 0));
}

/**
 * The schedule knob: a string of 0/1 digits ("11110100") is the schedule itself; anything else is a
 * file holding a JSON array of 0/1, or an object with such a `schedule` (what `diffuse tune` writes).
 */
const SCHEDULE_DIGITS = /^[01]+$/;

function readSchedule(file: string): number[] {
  if (SCHEDULE_DIGITS.test(file)) return [...file].map(Number);
  let value: unknown;
  try {
    value = JSON.parse(readTextFile(file));
  } catch (e) {
    throw new InputError(`accel attn-reuse:schedule=${file}`, `cannot read the schedule (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  const schedule = Array.isArray(value) ? value : (value as { schedule?: unknown })?.schedule;
  if (!Array.isArray(schedule) || schedule.length === 0 || schedule.some((v) => v !== 0 && v !== 1)) {
    throw new InputError(`accel attn-reuse:schedule=${file}`, 'not a schedule', 'a JSON array of 0 (reuse) and 1 (compute), or {"schedule": [...]}');
  }
  return schedule as number[];
}

/** Checks a schedule against the run it is for. */
function checkSchedule(schedule: number[], calls: number, where: string): void {
  if (schedule.length !== calls) throw new InputError(where, `the schedule has ${schedule.length} entries for a run of ${calls} model calls`, `${calls} entries`);
  if (schedule[0] !== 1) throw new InputError(where, 'the first model call must compute (nothing is stored before it)', 'schedule[0] = 1');
}

type MapType = 'float16' | 'float32';

const bytesOf = (t: TensorLike) => t.dims.reduce((a, b) => a * b, 1) * (t.type === 'float16' ? 2 : 4);
const asFloat32 = (g: GraphBuilder, map: Value) => (map.dtype === 'float32' ? map : g.cast(map, 'float32'));

/** The segment run with a core that also emits its post-softmax map [B, heads, Sq, Sk], as `type`. */
function storing<T extends TensorLike>(type: MapType, store: (map: T) => void): SegmentVariant<T> {
  return {
    name: `map-${type}`,
    emits: ['map'],
    hooks: (_own, _inner, emit) => ({
      attend(g, parts) {
        const map = g.attentionMap(parts.query(), parts.keys(), parts.heads, { bias: parts.bias });
        emit('map', map.dtype === type ? map : g.cast(map, type));
        return g.attentionApply(map, parts.values());
      },
    }),
    ran: (emitted) => store(emitted.map),
  };
}

/** The segment run on a stored map: no to_q, to_k, QKᵀ or softmax. */
function reusing<T extends TensorLike>(map: T, reused: () => void): SegmentVariant<T> {
  return {
    name: 'map-reuse',
    inputs: { map },
    hooks: (own) => ({ attend: (g, parts) => g.attentionApply(asFloat32(g, own.map), parts.values()) }),
    ran: reused,
  };
}

export function attnReuse(p: AttnReuseParams): Accelerator {
  const fromFile = p.schedule ? readSchedule(p.schedule) : undefined;
  const scheduleFor = (calls: number | undefined): number[] => {
    if (calls === undefined) throw new Error('attn-reuse needs the run\'s number of model calls');
    const where = p.schedule ? `accel attn-reuse:schedule=${p.schedule}` : 'accel attn-reuse:reuse';
    if (!fromFile && p.reuse >= calls) throw new InputError(where, `reuse=${p.reuse} leaves no computing call in a run of ${calls} model calls`, `reuse < ${calls}`);
    const schedule = fromFile ?? hurry(calls, p.reuse);
    checkSchedule(schedule, calls, where);
    return schedule;
  };
  const type: MapType = p.fp16 ? 'float16' : 'float32';
  const reuses = (role: SegmentRole) => (role.layer === 'self-attention' && p.self_attn) || (role.layer === 'cross-attention' && p.cross_attn);
  /** Layers the memory budget lets reuse; undefined: all. */
  let kept: Set<string> | undefined;
  /** The maps of one call at the CFG batch (the largest), from shapes alone. */
  const mapSizes = async (rehearse: Rehearsal) => {
    const sizes: { segment: string; bytes: number }[] = [];
    await rehearse({
      name: 'attn-reuse map sizes',
      begin: <T extends TensorLike>(): RunHooks<T> => ({
        variant: async (s) => (reuses(s.role) ? storing<T>(type, (map) => sizes.push({ segment: s.name, bytes: bytesOf(map) })) : undefined),
      }),
    });
    return sizes;
  };
  return {
    name: 'attn-reuse',
    claims: { 'attention-map': 'reuse attention maps' },
    conflicts: { 'token-merge': 'token merging pairs different tokens at every call, so a stored attention map no longer fits its tokens' },
    check(_model, run) {
      scheduleFor(run.calls);
      if (p.fp16 && run.halfFloats === false) {
        throw new InputError('accel attn-reuse:fp16', 'maps are stored in float16, and this WebGPU adapter has no shader-f16 (Chromium\'s SwiftShader, for one, has none)',
          'fp16=false (float32 maps, twice the memory)', 'true');
      }
    },
    async prepare(rehearse) {
      if (!p.max_map_memory) return [];
      const sizes = await mapSizes(rehearse);
      const { kept: fitting, dropped } = fitMapBudget(sizes, p.max_map_memory * 2 ** 20);
      if (fitting.size === 0) {
        throw new InputError('accel attn-reuse:max_map_memory', 'no layer\'s attention maps fit in the budget',
          `at least ${(Math.min(...sizes.map((s) => s.bytes)) / 2 ** 20).toFixed(1)} MiB`);
      }
      kept = fitting;
      return dropped.length === 0 ? [] : [`attn-reuse: max_map_memory leaves ${dropped.length} of ${sizes.length} layers computing every call ` +
        `(${dropped.map((d) => `${d.segment} ${(d.bytes / 2 ** 20).toFixed(1)} MiB`).join(', ')})`];
    },
    // Every reused layer's map, or those the budget keeps: one call's worth at the CFG batch; none if no call reuses.
    async keeps(rehearse, run) {
      if (!scheduleFor(run.calls).includes(0)) return 0;
      const sizes = await mapSizes(rehearse);
      const budgeted = p.max_map_memory ? fitMapBudget(sizes, p.max_map_memory * 2 ** 20).kept : undefined;
      return sizes.filter((s) => !budgeted || budgeted.has(s.segment)).reduce((sum, s) => sum + s.bytes, 0);
    },
    begin<T extends TensorLike>(context: PlanContext<T>): RunHooks<T> {
      const schedule = scheduleFor(context.run.calls);
      const maps = new Map<string, T>();
      let [bytes, peak, reused] = [0, 0, 0];
      return {
        async variant(s, { call }) {
          if (!reuses(s.role) || (kept && !kept.has(s.name)) || (schedule[call] === 1 && schedule[call + 1] !== 0)) return undefined;
          // A computing call stores its maps only when the next call reuses them; a reusing call
          // with nothing stored at these shapes (e.g. the batch changed) computes and stores instead.
          const slot = `${s.name}[${s.key}]`;
          const stored = maps.get(slot);
          if (schedule[call] === 0 && stored) return reusing(stored, () => void reused++);
          return storing<T>(type, (map) => {
            bytes += bytesOf(map) - (maps.has(slot) ? bytesOf(maps.get(slot)!) : 0);
            peak = Math.max(peak, bytes);
            maps.set(slot, map);
          });
        },
        held: () => maps.values(),
        stats: () => ({ reusedMaps: reused, peakMapBytes: peak }),
        summary: () => (reused ? `${reused} attention maps reused, stored maps at most ${(peak / 2 ** 20).toFixed(1)} MiB` : undefined),
      };
    },
  };
}

/** The layers whose maps fit in `budgetBytes`, smallest first; the rest always compute. */
export function fitMapBudget(sizes: { segment: string; bytes: number }[], budgetBytes: number): { kept: Set<string>; dropped: { segment: string; bytes: number }[] } {
  const sorted = [...sizes].sort((a, b) => a.bytes - b.bytes);
  const kept = new Set<string>();
  const dropped: { segment: string; bytes: number }[] = [];
  let total = 0;
  for (const s of sorted) {
    if (total + s.bytes <= budgetBytes) {
      total += s.bytes;
      kept.add(s.segment);
    } else {
      dropped.push(s);
    }
  }
  return { kept, dropped };
}

export const ATTN_REUSE: MethodDefinition<AttnReuseParams> = {
  name: 'attn-reuse',
  abbreviation: 'AR',
  paper: 'attention-map reuse, Hunter et al. (arXiv 2401.01008)',
  knobs: {
    reuse: {
      type: 'int', min: 0, max: 10_000, doc: 'HURRY: reuse the maps on the last r model calls',
      auto: { doc: 'half of the model calls (10 of 20, the paper\'s HURRY)', of: (calls) => Math.floor(calls / 2) },
    },
    schedule: {
      type: 'string', doc: '0/1 per model call, as digits (11110100…) or a JSON file `diffuse tune` wrote; overrides reuse',
      file: { names: (value) => !SCHEDULE_DIGITS.test(value), inline: 'the schedule as 0/1 digits, one per model call (11110100…)' },
    },
    self_attn: { type: 'bool', doc: 'reuse self-attention maps' },
    cross_attn: { type: 'bool', doc: 'reuse cross-attention maps' },
    fp16: { type: 'bool', doc: 'store maps in float16' },
    max_map_memory: { type: 'number', min: 0, max: 2 ** 30, doc: 'MiB the stored maps may take (0 = no limit); the largest layers are left out first' },
  },
  defaults: ATTN_REUSE_DEFAULTS,
  create: attnReuse,
};
