/**
 * Greedy local search over a method's discrete knobs (`diffuse tune`). A Tunable names a starting
 * state, the moves from a state and the --accel spec a state stands for; the objective is the mean
 * PSNR of the accelerated images against the unaccelerated ones (same prompts, same seeds).
 * A round tries every move from the current state and takes the best one if it raises the
 * objective by more than ε; the search stops after a round that improves nothing.
 * PHAST (HURRY's search over attention-reuse schedules) is the first Tunable; other methods'
 * knobs plug in the same way.
 */
import type { AccelSpec } from '../accel/index.ts';

export interface Tunable<S> {
  method: string;
  initial: S;
  /** Neighbouring states, in the order they are tried. */
  moves(state: S): S[];
  spec(state: S): AccelSpec;
  describe(state: S): string;
}

export interface Round<S> {
  round: number;
  state: S;
  objective: number;
  /** Whether the round's best move was taken. */
  improved: boolean;
  tried: number;
}

export async function greedySearch<S>(tunable: Tunable<S>, objective: (spec: AccelSpec) => Promise<number>, epsilon: number,
  onRound?: (r: Round<S>, rounds: readonly Round<S>[]) => void, maxRounds = 100): Promise<{ state: S; objective: number; rounds: Round<S>[] }> {
  const seen = new Map<string, number>();
  const score = async (s: S) => {
    const key = tunable.describe(s);
    let v = seen.get(key);
    if (v === undefined) seen.set(key, (v = await objective(tunable.spec(s))));
    return v;
  };
  let state = tunable.initial;
  let best = await score(state);
  const rounds: Round<S>[] = [{ round: 0, state, objective: best, improved: false, tried: 1 }];
  onRound?.(rounds[0], rounds);
  for (let round = 1; round <= maxRounds; round++) {
    let pick: { state: S; v: number } | undefined;
    const moves = tunable.moves(state);
    for (const candidate of moves) {
      const v = await score(candidate);
      if (!pick || v > pick.v) pick = { state: candidate, v };
    }
    const improved = pick !== undefined && pick.v > best + epsilon;
    if (improved) [state, best] = [pick!.state, pick!.v];
    const r = { round, state, objective: best, improved, tried: moves.length };
    rounds.push(r);
    onRound?.(r, rounds);
    if (!improved) break;
  }
  return { state, objective: best, rounds };
}

/** PHAST: schedules over model calls with r reusing calls; a move swaps one reusing call with one computing call (never call 0). */
export function phast(calls: number, reuse: number, initial: number[]): Tunable<number[]> {
  return {
    method: 'attn-reuse',
    initial,
    moves(state) {
      const out: number[][] = [];
      for (let i = 1; i < calls; i++) {
        if (state[i] !== 1) continue;
        for (let j = 1; j < calls; j++) {
          if (state[j] !== 0) continue;
          const next = [...state];
          next[i] = 0;
          next[j] = 1;
          out.push(next);
        }
      }
      return out;
    },
    spec: (state) => ({ method: 'attn-reuse', params: { reuse, schedule: state.join(''), self_attn: true, cross_attn: true, fp16: true, max_map_memory: 0 } }),
    describe: (state) => state.join(''),
  };
}
