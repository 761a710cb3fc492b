/**
 * What a method file exports for the `--accel NAME[:key=value,...]` registry (index.ts): its
 * paper, its knobs (the official code's parameter names) with their types, ranges and defaults,
 * and how to make its plan (runtime/plan.ts) from checked values.
 */
import type { Accelerator } from '../runtime/plan.ts';

export interface Knob {
  /** 'number': any finite decimal number. */
  type: 'int' | 'bool' | 'number' | 'string';
  min?: number;
  /** For 'number': min itself is refused. */
  minExclusive?: boolean;
  /** For 'number': values from this one up are refused. */
  maxExclusive?: number;
  doc: string;
}

export type KnobValues = Record<string, number | boolean | string>;

export interface MethodDefinition<P = KnobValues> {
  /** The `--accel` name. */
  name: string;
  /** Two or three capitals for tight labels (chart and grid heads), shown with the first knob's value. */
  abbreviation: string;
  paper: string;
  knobs: Record<keyof P & string, Knob>;
  defaults: P;
  create(params: P): Accelerator;
}
