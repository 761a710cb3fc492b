/**
 * Library messages in another interface's words: the library names its request options
 * (`negativePrompt`), the CLI its flags (`--negative-prompt`), the service its body fields
 * (`negative_prompt`). The names a message starts with are renamed, and so is every camelCase
 * option name in its text outside double quotes (quoted text is the user's: a prompt, a value).
 */
import { own } from './own.ts';

/**
 * "width/height: must be…" → "--width/--height: must be…" and "negativePrompt has no effect:
 * guidanceScale 1 ≤ 1 …" → "--negative-prompt has no effect: --guidance 1 ≤ 1 …", with `names`
 * mapping them; leading names are renamed only if every one of them maps.
 */
export function withOptionNames(message: string, names: Readonly<Record<string, string>>): string {
  const m = /^[A-Za-z]+(?:\/[A-Za-z]+)*(?=[: ])/.exec(message);
  const renamed = m ? m[0].split('/').map((name) => own(names, name)) : [];
  // Two options set by one name (width/height by --size) are named once.
  const lead = m && renamed.every((f) => f !== undefined) ? [...new Set(renamed)].join('/') : '';
  const rest = lead ? message.slice(m![0].length) : message;
  // Quoted text as JSON writes it (\" inside); a name is a whole word, not part of a file name (negativePrompt.txt).
  return lead + rest.split(/("(?:[^"\\]|\\.)*")/).map((piece, i) => (i % 2 ? piece
    : piece.replace(/(?<![\w.\/-])[a-z]+(?:[A-Z][a-z0-9]*)+(?![\w-]|\.\w)/g, (name) => own(names, name) ?? name))).join('');
}
