/**
 * Plan files: a set of acceleration methods saved as JSON, `{ "accel": [...] }` with the list the
 * library's `accel` option takes ("tgate:gate_step=10" strings or { method, params } objects),
 * plus whatever the writer recorded about it (`tune --speedup`: model, steps, speed-up, PSNR).
 * `--accel @plan.json` runs it, in `generate` and `bench`. The service does not read them: its
 * `accel` is text only, so a request cannot name a file on the server.
 */
import * as fs from 'node:fs';
import { InputError, describe } from '../errors.ts';
import { shortAccelSpec, toAccelSpecs, type AccelSpec } from '../accel/index.ts';
import { writeFileAtomically } from '../util/files.ts';

export function readPlanFile(file: string): AccelSpec[] {
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
  const accel = typeof plan === 'object' && plan !== null && !Array.isArray(plan) ? (plan as { accel?: unknown }).accel : undefined;
  if (!Array.isArray(accel)) throw new InputError(`${where}: accel`, 'missing or not a list', 'a list of methods as --accel takes them', describe(accel));
  try {
    return toAccelSpecs(accel);
  } catch (err) {
    if (err instanceof InputError) throw new InputError(where, err.message);
    throw err;
  }
}

/** Writes a plan whole (never half a file): its methods as `--accel` text, and what else is known about it. */
export function writePlanFile(file: string, accel: AccelSpec[], about: Record<string, unknown>): void {
  writeFileAtomically(file, `${JSON.stringify({ accel: accel.map(shortAccelSpec), ...about }, null, 2)}\n`);
}
