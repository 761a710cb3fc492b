/**
 * Flags of the measurement tools in tools/, with the CLI's manners: each flag is declared once
 * with its kind and range, and a flag or value that does not fit is one line naming it (exit 2),
 * never a stack trace or a run on NaN.
 */
import { parseArgs } from 'node:util';
import { InputError, oneLine } from '../src/errors.ts';

type FlagSpec =
  | { kind: 'integer' | 'number'; min: number; max: number; default: number }
  | { kind: 'numbers'; min: number; max: number; default: number[] }
  | { kind: 'text'; default?: string; oneOf?: readonly string[] };

type FlagValues<S extends Record<string, FlagSpec>> = {
  [K in keyof S]: S[K] extends { kind: 'numbers' } ? number[]
    : S[K] extends { kind: 'integer' | 'number' } ? number
    : S[K] extends { default: string } ? string : string | undefined;
};

/** Prints `tool: message` on one line and exits 2 (the CLI's code for bad input). */
export function refuse(tool: string, message: string): never {
  console.error(`${tool}: ${oneLine(message)}`);
  process.exit(2);
}

function checkedNumber(tool: string, flag: string, text: string, spec: { kind: string; min: number; max: number }): number {
  const value = text.trim() === '' ? NaN : Number(text);
  const integer = spec.kind === 'integer';
  if (!Number.isFinite(value) || (integer && !Number.isInteger(value)) || value < spec.min || value > spec.max) {
    refuse(tool, `--${flag}: expected ${integer ? 'an integer' : 'a number'} from ${spec.min} to ${spec.max}${spec.kind === 'numbers' ? ' in a comma-separated list' : ''}, found "${text}"`);
  }
  return value;
}

/** The command line's flags (process.argv) as `specs` declare them; defaults where a flag is not given. */
export function toolFlags<S extends Record<string, FlagSpec>>(tool: string, specs: S): FlagValues<S> {
  let given: Record<string, string | undefined>;
  try {
    const options = Object.fromEntries(Object.keys(specs).map((name) => [name, { type: 'string' as const }]));
    given = parseArgs({ options, strict: true, allowPositionals: false }).values as Record<string, string | undefined>;
  } catch (err) {
    refuse(tool, `${(err as Error).message} (flags: ${Object.keys(specs).map((name) => `--${name}`).join(', ')})`);
  }
  const values: Record<string, unknown> = {};
  for (const [flag, spec] of Object.entries(specs)) {
    const text = given[flag];
    if (text === undefined) values[flag] = spec.default;
    else if (spec.kind === 'text') {
      if (spec.oneOf && !spec.oneOf.includes(text)) refuse(tool, `--${flag}: expected one of ${spec.oneOf.join(', ')}, found "${text}"`);
      values[flag] = text;
    } else if (spec.kind === 'numbers') values[flag] = text.split(',').map((part) => checkedNumber(tool, flag, part, spec));
    else values[flag] = checkedNumber(tool, flag, text, spec);
  }
  return values as FlagValues<S>;
}

/** `work`'s value; an InputError it throws (a --model folder that is not one, say) is refused as a flag is. */
export async function orRefuse<T>(tool: string, work: Promise<T>): Promise<T> {
  try {
    return await work;
  } catch (err) {
    if (err instanceof InputError) refuse(tool, err.message);
    throw err;
  }
}
