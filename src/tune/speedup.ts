/**
 * `diffuse tune --speedup X`: the composable methods' knobs searched for the plan that keeps the
 * images closest (PSNR) to the unaccelerated ones at a measured speed-up of at least X (or, with
 * `--mac-speedup X`, a MAC budget: the plain run's MACs over the plan's at least X).
 *
 * Each method has a ladder of settings from off to aggressive (DeepCache's or FORA's cache
 * interval, TGATE's gate step, ToMe's merge ratio, First-Block-Cache's and TeaCache's
 * thresholds, the number of calls reusing attention maps); the tune command keeps the ladders the model takes. The search is greedy, as
 * PHAST's is (src/tune/greedy.ts), but climbs speed instead of PSNR: from everything off, each
 * round measures every one-rung step up and takes the one that loses the least PSNR per unit of
 * speed gained (log speed-up), until the measured speed-up reaches the target. Methods that cannot
 * be composed (the block caches of a transformer each claim its blocks) are never on together: the
 * climb runs once per largest set of ladders that compose, sharing what it measured. Every plan
 * measured is kept: the frontier of speed-up against PSNR, from which the best plan at or above the
 * target wins. int8 (`--precision`) is one more rung: not a method of the plan but the arithmetic
 * the plan runs at.
 */
import { shortAccelSpec, type AccelSpec } from '../accel/index.ts';
import type { Precision } from '../graph/quantize.ts';
import type { ModelDeclaration } from '../runtime/protocol.ts';

/** The ladder of the precision rung: its one setting is int8. */
const INT8 = 'int8';

/** A rung per method: 0 is off. */
export type Rungs = Record<string, number>;

export interface Ladder {
  method: string;
  /** Settings from the first rung up (rung 0, off, has none). */
  settings: Record<string, number>[];
}

/**
 * Every method's ladder for a run of `calls` model calls (a model takes some of them); with `int8`,
 * the precision rung too. Skip-Cache's ladder cuts nearer the ends before it caches longer: its
 * official setting (4 blocks at each end) first, down to one block, as far as `model`'s long skips reach.
 */
export function methodLadders(calls: number, int8 = false, model?: ModelDeclaration): Ladder[] {
  const gates = [...new Set([0.8, 0.6, 0.4, 0.25].map((share) => Math.max(1, Math.round(share * calls))))].filter((g) => g < calls);
  const intervals = [2, 3, 4, 5].filter((n) => n < calls);
  const deepest = Math.max(1, model?.longSkips?.maxBranch ?? 1);
  const cuts = [...new Set([4, 2, 1].map((blocks) => Math.min(blocks, deepest)))];
  const skipCache = [...cuts.map((skip_at_branch) => ({ cache_interval: 2, skip_at_branch })), ...intervals.slice(1).map((cache_interval) => ({ cache_interval, skip_at_branch: 1 }))];
  return [
    { method: 'deepcache', settings: intervals.map((cache_interval) => ({ cache_interval })) },
    { method: 'skip-cache', settings: intervals.length ? skipCache : [] },
    { method: 'fora', settings: intervals.map((cache_interval) => ({ cache_interval })) },
    { method: 'fbcache', settings: [0.05, 0.1, 0.2, 0.3].map((residual_diff_threshold) => ({ residual_diff_threshold })) },
    { method: 'teacache', settings: [0.2, 0.4, 0.6, 0.8].map((rel_l1_thresh) => ({ rel_l1_thresh })) },
    { method: 'tgate', settings: gates.map((gate_step) => ({ gate_step })) },
    { method: 'tome', settings: [0.3, 0.5, 0.7].map((ratio) => ({ ratio })) },
    { method: 'attn-reuse', settings: [...new Set([0.2, 0.4, 0.5].map((share) => Math.max(1, Math.round(share * calls))))].map((reuse) => ({ reuse })) },
    ...(int8 ? [{ method: INT8, settings: [{}] }] : []),
  ].filter((l) => l.settings.length > 0);
}

/** The first setting of a ladder as a one-method plan, to ask whether a model takes it (int8 is no method: none). */
export function firstRung(ladder: Ladder): AccelSpec | undefined {
  return ladder.method === INT8 ? undefined : { method: ladder.method, params: ladder.settings[0] };
}

/**
 * The largest sets of ladders whose methods compose (`compose(a, b)`: whether two methods may be
 * on together), in the ladders' order.
 */
export function composableSets(ladders: Ladder[], compose: (a: Ladder, b: Ladder) => boolean): Ladder[][] {
  const contains = (big: Ladder[], small: Ladder[]) => small.every((l) => big.includes(l));
  let sets: Ladder[][] = [[]];
  // Each set grows by the ladder where all of it composes with it; otherwise it stays, and the part that composes starts one with it.
  for (const ladder of ladders) {
    const next = sets.flatMap((set) => {
      const fits = set.filter((other) => compose(other, ladder));
      return fits.length === set.length ? [[...set, ladder]] : [set, [...fits, ladder]];
    });
    sets = next.filter((s, i) => !next.some((t, j) => contains(t, s) && (t.length > s.length || j < i)));
  }
  const order = (set: Ladder[]) => set.map((l) => String(ladders.indexOf(l)).padStart(4, '0')).join();
  return sets.sort((a, b) => order(a).localeCompare(order(b)));
}

export function planOf(ladders: Ladder[], rungs: Rungs): AccelSpec[] {
  return ladders.filter((l) => l.method !== INT8 && (rungs[l.method] ?? 0) > 0).map((l) => ({ method: l.method, params: l.settings[rungs[l.method] - 1] }));
}

export function precisionOf(rungs: Rungs): Precision {
  return (rungs[INT8] ?? 0) > 0 ? 'int8' : 'fp32';
}

export function describePlan(plan: AccelSpec[], precision: Precision = 'fp32'): string {
  const methods = plan.length === 0 ? 'none' : plan.map(shortAccelSpec).join(' + ');
  if (precision === 'fp32') return methods;
  return plan.length === 0 ? precision : `${methods} at ${precision}`;
}

export interface Measured {
  plan: AccelSpec[];
  precision: Precision;
  /** Plain run's denoising seconds over this plan's, measured. */
  speedup: number;
  /** Plain run's MACs over this plan's. */
  macSpeedup: number;
  psnr: number;
  /** Why the plan cannot run here (e.g. over the memory limit): checked, never run, never picked. */
  refused?: string;
}

export type Measure = (plan: AccelSpec[], precision: Precision) => Promise<Measured>;

/** What the climb raises to the target: the measured speed-up, or the MAC speed-up (a MAC budget: no timing noise). */
export type Gain = (m: Measured) => number;
export const measuredGain: Gain = (m) => m.speedup;
export const macGain: Gain = (m) => m.macSpeedup;

/**
 * Climbs from nothing to the target speed-up. `measure` runs a plan on the tuning prompts; it is
 * called once per distinct plan (`measured`, by describePlan, may hold plans of earlier climbs).
 * Returns every plan measured and the rounds' picks.
 */
export async function climbToSpeedup(ladders: Ladder[], target: number, measure: Measure,
  onRound?: (round: number, pick: Measured, tried: number) => void, measured = new Map<string, Measured>(), gainOf: Gain = measuredGain,
): Promise<{ measured: Measured[]; path: Measured[] }> {
  const run = async (rungs: Rungs) => {
    const [plan, precision] = [planOf(ladders, rungs), precisionOf(rungs)];
    const key = describePlan(plan, precision);
    let m = measured.get(key);
    if (!m) measured.set(key, (m = await measure(plan, precision)));
    return m;
  };
  let rungs: Rungs = Object.fromEntries(ladders.map((l) => [l.method, 0]));
  let current = await run(rungs);
  const path = [current];
  for (let round = 1; gainOf(current) < target; round++) {
    const steps = ladders.filter((l) => rungs[l.method] < l.settings.length).map((l) => ({ ...rungs, [l.method]: rungs[l.method] + 1 }));
    if (steps.length === 0) break;
    let pick: { rungs: Rungs; m: Measured; cost: number } | undefined;
    for (const next of steps) {
      const m = await run(next);
      if (m.refused) continue;
      const gain = Math.log(gainOf(m)) - Math.log(gainOf(current));
      // PSNR lost per unit of log speed-up; a step that is not faster costs without bound.
      const cost = gain > 0 ? (current.psnr - m.psnr) / gain : Infinity;
      if (!pick || cost < pick.cost || (cost === pick.cost && gainOf(m) > gainOf(pick.m))) pick = { rungs: next, m, cost };
    }
    // Every step up refused: this climb ends below the target.
    if (!pick) break;
    [rungs, current] = [pick.rungs, pick.m];
    path.push(current);
    onRound?.(round, current, steps.length);
  }
  return { measured: [...measured.values()], path };
}

/** The plans no other plan beats in both speed-up (`gainOf`) and PSNR, fastest last. */
export function frontier(measured: Measured[], gainOf: Gain = measuredGain): Measured[] {
  const beats = (b: Measured, a: Measured) => gainOf(b) >= gainOf(a) && b.psnr >= a.psnr && (gainOf(b) > gainOf(a) || b.psnr > a.psnr);
  const ran = measured.filter((m) => !m.refused);
  return ran.filter((a) => !ran.some((b) => b !== a && beats(b, a))).sort((a, b) => gainOf(a) - gainOf(b));
}
