/**
 * What a method file exports for the `--accel NAME[:key=value,...]` registry (index.ts): its
 * paper, its knobs (the official code's parameter names) with their types, ranges and defaults,
 * and how to make its plan (runtime/plan.ts) from checked values.
 */
import type { Accelerator } from '../runtime/plan.ts';

/** A knob of a method; numbers always have a range, so no value can make a plan hang or allocate without bound. */
export type Knob =
  | { type: 'bool'; doc: string }
  | {
      type: 'string';
      doc: string;
      /** Values that name a file on this machine, which a request to the service may not (files are the command line's), and the inline form it may give. */
      file?: { names(value: string): boolean; inline: string };
    }
  | {
      /** 'int': a safe integer; 'number': any finite decimal number. */
      type: 'int' | 'number';
      min: number;
      max: number;
      /** min itself is refused. */
      minExclusive?: boolean;
      /** max itself is refused. */
      maxExclusive?: boolean;
      doc: string;
      /** `auto` (the default where given): a value fitted to the run's number of model calls, so defaults suit every scheduler and step count. */
      auto?: { doc: string; of(calls: number): number };
    };

export type KnobValues = Record<string, number | boolean | string>;

export interface MethodDefinition<P = KnobValues> {
  /** The `--accel` name. */
  name: string;
  /** Two or three capitals for tight labels (chart and grid heads), shown with the first knob's value. */
  abbreviation: string;
  paper: string;
  knobs: Record<keyof P & string, Knob>;
  /** Number knobs with an `auto` rule may default to 'auto'. */
  defaults: { [K in keyof P]: P[K] | (P[K] extends number ? 'auto' : never) };
  /** Builds the plan from checked values ('auto' already fitted to the run). */
  create(params: P): Accelerator;
}
