/**
 * Attention-map reuse (Hunter et al., arXiv 2401.01008): on "reuse" model calls, every attention
 * layer skips to_q, to_k, QKᵀ and the softmax and applies the post-softmax map stored at the last
 * "compute" call to freshly computed values. The schedule is a binary vector over model calls
 * (1 = compute, 0 = reuse; call 0 always computes), either HURRY(N, r) — compute the first N − r
 * calls, reuse the last r — or given (a PHAST schedule found by `diffuse tune`). Maps are kept
 * per layer and batch shape (so per CFG branch), in float16 unless fp16=false; `max_map_memory`
 * (MiB) leaves the largest layers out of reuse until the rest fit.
 */
import * as fs from 'node:fs';
import { InputError } from '../errors.ts';
import type { Accelerator, MapDecision } from './plan.ts';

export interface AttnReuseParams {
  reuse: number;
  schedule: string;
  self_attn: boolean;
  cross_attn: boolean;
  fp16: boolean;
  max_map_memory: number;
}

export const ATTN_REUSE_DEFAULTS: AttnReuseParams = { reuse: 10, schedule: '', self_attn: true, cross_attn: true, fp16: true, max_map_memory: 0 };

/** HURRY(N, r): compute the first N − r calls, reuse the last r. */
export function hurry(calls: number, reuse: number): number[] {
  return Array.from({ length: calls }, (_, s) => (s < calls - reuse ? 1 : 0));
}

/**
 * The schedule knob: a string of 0/1 digits ("11110100") is the schedule itself; anything else is a
 * file holding a JSON array of 0/1, or an object with such a `schedule` (what `diffuse tune` writes).
 */
export function readSchedule(file: string): number[] {
  if (/^[01]+$/.test(file)) return [...file].map(Number);
  let value: unknown;
  try {
    value = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new InputError(`--accel attn-reuse:schedule=${file}`, `cannot read the schedule (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  const schedule = Array.isArray(value) ? value : (value as { schedule?: unknown })?.schedule;
  if (!Array.isArray(schedule) || schedule.length === 0 || schedule.some((v) => v !== 0 && v !== 1)) {
    throw new InputError(`--accel attn-reuse:schedule=${file}`, 'not a schedule', 'a JSON array of 0 (reuse) and 1 (compute), or {"schedule": [...]}');
  }
  return schedule as number[];
}

/** Checks a schedule against the run it is for. */
export function checkSchedule(schedule: number[], calls: number, where: string): void {
  if (schedule.length !== calls) throw new InputError(where, `the schedule has ${schedule.length} entries for a run of ${calls} model calls`, `${calls} entries`);
  if (schedule[0] !== 1) throw new InputError(where, 'the first model call must compute (nothing is stored before it)', 'schedule[0] = 1');
}

export function attnReuse(p: AttnReuseParams): Accelerator {
  const fromFile = p.schedule ? readSchedule(p.schedule) : undefined;
  const scheduleFor = (calls: number): number[] => {
    const where = p.schedule ? `--accel attn-reuse:schedule=${p.schedule}` : '--accel attn-reuse:reuse';
    if (!fromFile && p.reuse >= calls) throw new InputError(where, `reuse=${p.reuse} leaves no computing call in a run of ${calls} model calls`, `reuse < ${calls}`);
    const schedule = fromFile ?? hurry(calls, p.reuse);
    checkSchedule(schedule, calls, where);
    return schedule;
  };
  let schedule: number[] | undefined;
  return {
    name: 'attn-reuse',
    cfgActive: () => true,
    decide: () => 'compute',
    mapType: p.fp16 ? 'float16' : 'float32',
    mapBudgetBytes: p.max_map_memory * 2 ** 20,
    checkRun: (calls) => void scheduleFor(calls),
    attentionMap(segment: string, call: number, calls: number): MapDecision {
      const layer = (segment.endsWith('.attn1') && p.self_attn) || (segment.endsWith('.attn2') && p.cross_attn);
      if (!layer) return 'compute';
      schedule ??= scheduleFor(calls);
      if (schedule[call] === 0) return 'reuse';
      // A computing call stores its maps only when the next call reuses them.
      return schedule[call + 1] === 0 ? 'store' : 'compute';
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
