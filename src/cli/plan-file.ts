/**
 * Plan files: a set of acceleration methods saved as JSON, `{ "accel": [...] }` with the list the
 * library's `accel` option takes ("tgate:gate_step=10" strings or { method, params } objects), an
 * optional `"precision"` the plan runs at, plus whatever the writer recorded about it (`tune
 * --speedup`: model, steps, speed-up, PSNR). `--accel @plan.json` runs it, in `generate` and
 * `bench` (an explicit `--precision` wins over the plan's). The service does not read them: its
 * `accel` is text only, so a request cannot name a file on the server.
 */
import * as fs from 'node:fs';
import { InputError, describe } from '../errors.ts';
import { shortAccelSpec, toAccelSpecs, type AccelSpec } from '../accel/index.ts';
import { writeFileAtomically } from '../util/files.ts';
import { parsePrecision } from '../runtime/ort-executor.ts';
import type { Precision } from '../graph/quantize.ts';

export interface Plan {
  accel: AccelSpec[];
  precision?: Precision;
}

/** An `--accel` value as the flag parser keeps it: a parsed method spec, or `@plan.json` (read when the command runs). */
export type AccelFlag = AccelSpec | string;

/** `--accel` values in order: method specs and `@plan.json` files, the plans' precision if any names one. */
export function resolveAccelFlags(values: AccelFlag[]): Plan {
  const resolved: Plan = { accel: [] };
  let from = '';
  for (const value of values) {
    if (typeof value !== 'string') {
      resolved.accel.push(value);
      continue;
    }
    const plan = readPlanFile(value.slice(1));
    resolved.accel.push(...plan.accel);
    if (plan.precision === undefined) continue;
    if (resolved.precision !== undefined && resolved.precision !== plan.precision) {
      throw new InputError(`--accel ${value}: precision`, `differs from ${from}'s`, resolved.precision, plan.precision);
    }
    [resolved.precision, from] = [plan.precision, value];
  }
  return resolved;
}

export function readPlanFile(file: string): Plan {
  const where = `--accel @${file}`;
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new InputError(where, `cannot be read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`, 'a plan file: JSON with an "accel" list');
  }
  let plan: unknown;
  try {
    plan = JSON.parse(text);
  } catch (err) {
    throw new InputError(where, `is not valid JSON (${(err as Error).message})`);
  }
  const fields = typeof plan === 'object' && plan !== null && !Array.isArray(plan) ? plan as { accel?: unknown; precision?: unknown } : {};
  if (!Array.isArray(fields.accel)) throw new InputError(`${where}: accel`, 'missing or not a list', 'a list of methods as --accel takes them', describe(fields.accel));
  try {
    return { accel: toAccelSpecs(fields.accel), ...(fields.precision === undefined ? {} : { precision: parsePrecision(fields.precision) }) };
  } catch (err) {
    if (err instanceof InputError) throw new InputError(where, err.message);
    throw err;
  }
}

/** Writes a plan whole (never half a file): its methods as `--accel` text, its precision, and what else is known about it. */
export function writePlanFile(file: string, plan: Plan, about: Record<string, unknown>): void {
  writeFileAtomically(file, `${JSON.stringify({ accel: plan.accel.map(shortAccelSpec), precision: plan.precision ?? 'fp32', ...about }, null, 2)}\n`);
}
