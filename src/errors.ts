/** `text` with its line breaks (and the spaces around them) folded into single spaces. */
export function oneLine(text: string): string {
  return text.replace(/\s*[\r\n]+\s*/g, ' ');
}

/**
 * One error type for every problem caused by the user's input (files, configs, flags).
 * The CLI prints `message` alone — no stack trace — and exits non-zero.
 * `where` names the file, key or flag; expected/found say what was wanted and what was there.
 */
export class InputError extends Error {
  readonly where: string;
  constructor(where: string, problem: string, expected?: string, found?: string) {
    let message = `${where}: ${problem}`;
    if (expected !== undefined) message += `; expected ${expected}`;
    if (found !== undefined) message += `, found ${found}`;
    // One line, whatever it quotes: parsers' own messages (V8's JSON errors) can carry the text's line breaks.
    super(oneLine(message));
    this.name = 'InputError';
    this.where = where;
  }
}

/** Short printable form of an arbitrary JSON value for error messages. */
export function describe(value: unknown): string {
  if (value === undefined) return 'nothing';
  let text: string;
  try {
    // NaN and ±Infinity as themselves (JSON would print null).
    text = JSON.stringify(value, (_key, v) => (typeof v === 'number' && !Number.isFinite(v) ? `\u0000${v}` : v))
      .replace(/"\\u0000(NaN|-?Infinity)"/g, '$1');
  } catch {
    // JSON.parse accepts nesting deeper than JSON.stringify can recurse.
    return Array.isArray(value) ? 'a deeply nested list' : 'a deeply nested object';
  }
  return text.length > 60 ? text.slice(0, 57) + '...' : text;
}

/** The user stopped the run (Ctrl-C or SIGTERM); the CLI exits with 128 + the signal's number. */
export class Interrupted extends Error {
  constructor(readonly signal: 'SIGINT' | 'SIGTERM') {
    super(`interrupted (${signal})`);
    this.name = 'Interrupted';
  }
}

/** Throws the reason of an aborted signal (a generation's `signal`), else nothing. */
export function checkAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw signal.reason ?? new DOMException('generation aborted', 'AbortError');
}
