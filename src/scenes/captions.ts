/**
 * The caption grammar of the reference model's training scenes (assets/scenes/grammar.json,
 * rendered for training by tools/train-reference/scenes.py):
 *
 *   caption  := objects [" on a " background " background"]
 *   objects  := object | object (", " object)* " and " object
 *   object   := ("a" | "an") ["small" | "large"] colour shape [position]
 *
 * No size word means medium. An object without a position may sit in any cell of the 3×3 grid.
 */
import { InputError } from '../errors.ts';
import { joinPath, readTextFile, resolvePath } from '../io/files.ts';

export type Rgb = [number, number, number];

export interface SceneGrammar {
  imageSize: number;
  colours: Record<string, Rgb>;
  backgrounds: Record<string, Rgb>;
  shapes: string[];
  /** Half-width in pixels at imageSize. */
  sizes: Record<string, number>;
  cellCentres: number[];
  positions: Record<string, [number, number]>;
}

export interface SceneObject {
  colour: string;
  shape: string;
  size: string;
  /** [column, row] of the 3×3 grid; undefined when the caption leaves it open. */
  cell?: [number, number];
}

export interface SceneCaption {
  objects: SceneObject[];
  background?: string;
}

// import.meta.dirname is Node's; a browser bundle has no package folder to read assets from.
const SCENES = import.meta.dirname && resolvePath(joinPath(import.meta.dirname, '../../assets/scenes'));
const GRAMMAR_FILE = SCENES && joinPath(SCENES, 'grammar.json');
/** Captions training never saw (tools/train-reference/make_scene_files.py). */
export const HELD_OUT_PROMPTS = SCENES && joinPath(SCENES, 'held-out-prompts.txt');
let cached: SceneGrammar | undefined;

export function sceneGrammar(): SceneGrammar {
  return (cached ??= JSON.parse(readTextFile(GRAMMAR_FILE)) as SceneGrammar);
}

const alternatives = (words: string[]) => words.map((w) => w.replace(/ /g, '\\s+')).join('|');

/** Parses one caption of the grammar; anything else is an InputError naming `where`. */
export function parseCaption(text: string, where = 'caption'): SceneCaption {
  const g = sceneGrammar();
  let rest = text.trim().toLowerCase().replace(/\.$/, '');
  let background: string | undefined;
  const bg = new RegExp(`\\s+on\\s+an?\\s+(${alternatives(Object.keys(g.backgrounds))})\\s+background$`).exec(rest);
  if (bg) {
    background = bg[1];
    rest = rest.slice(0, bg.index);
  }
  const object = new RegExp(`^an?\\s+(?:(small|large)\\s+)?(${alternatives(Object.keys(g.colours))})\\s+` +
    `(${alternatives(g.shapes)})(?:\\s+(${alternatives(Object.keys(g.positions))}))?$`);
  const phrases = rest.split(/\s*,\s*|\s+and\s+/);
  const expected = `"a [small|large] <${Object.keys(g.colours).join('|')}> <${g.shapes.join('|')}> [<position>]", ` +
    `joined by ", " and " and ", optionally ending "on a <${Object.keys(g.backgrounds).join('|')}> background"`;
  const objects = phrases.map((phrase): SceneObject => {
    const m = object.exec(phrase);
    if (!m) throw new InputError(where, `cannot read "${phrase}" in "${text.trim()}"`, expected);
    const position = m[4]?.replace(/\s+/g, ' ');
    return { size: m[1] ?? 'medium', colour: m[2], shape: m[3], cell: position ? g.positions[position] : undefined };
  });
  const colours = objects.map((o) => o.colour);
  if (new Set(colours).size !== colours.length) {
    throw new InputError(where, `two objects share a colour in "${text.trim()}"`, 'one colour per object (the scenes never repeat one)');
  }
  return { objects, background };
}

/** A prompt file: one caption per line; blank lines and lines starting with # are skipped. */
export function readPromptFile(file: string): string[] {
  let text: string;
  try {
    text = readTextFile(file);
  } catch (e) {
    throw new InputError(file, `cannot read the prompt file (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  const prompts = text.split(/\r?\n/).map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('#'));
  if (prompts.length === 0) throw new InputError(file, 'no prompts', 'one prompt per line');
  return prompts;
}
