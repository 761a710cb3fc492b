/**
 * Library messages in another interface's words: the library names its request options
 * (`negativePrompt`), the CLI its flags (`--negative-prompt`), the service its body fields
 * (`negative_prompt`). Only the name the message starts with is renamed.
 */
import { own } from './own.ts';

/** "width/height: must be…" → "--width/--height: must be…" with `names` mapping width and height; unchanged unless every leading name maps. */
export function withOptionNames(message: string, names: Readonly<Record<string, string>>): string {
  const m = /^[A-Za-z]+(?:\/[A-Za-z]+)*(?=[: ])/.exec(message);
  const renamed = m ? m[0].split('/').map((name) => own(names, name)) : [];
  if (!m || renamed.some((f) => f === undefined)) return message;
  return renamed.join('/') + message.slice(m[0].length);
}
