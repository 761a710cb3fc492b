import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { decode } from 'fast-png';
import { adherence } from '../src/metrics/adherence.ts';
import { parseCaption, readPromptFile } from '../src/scenes/captions.ts';

const dir = path.resolve(import.meta.dirname, 'fixtures/scenes');
const captions = JSON.parse(fs.readFileSync(path.join(dir, 'captions.json'), 'utf8')) as string[];

/** The renderer's ground truth (tools/train-reference/make_scene_files.py) as planar RGB in [0, 1]. */
function scene(i: number): { data: Float32Array; width: number; height: number } {
  const png = decode(fs.readFileSync(path.join(dir, `${String(i).padStart(2, '0')}.png`)));
  const plane = png.width * png.height;
  const data = new Float32Array(3 * plane);
  for (let p = 0; p < plane; p++) for (let c = 0; c < 3; c++) data[c * plane + p] = png.data[p * png.channels + c] / 255;
  return { data, width: png.width, height: png.height };
}

test('adherence: rendered scenes score (almost) 1 against their own captions, far less against others', () => {
  const own: number[] = [];
  const other: number[] = [];
  for (let i = 0; i < captions.length; i++) {
    const img = scene(i);
    own.push(adherence(img.data, img.width, img.height, captions[i]).score);
    other.push(adherence(img.data, img.width, img.height, captions[(i + 7) % captions.length]).score);
  }
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  console.log(`ground truth ${mean(own).toFixed(3)} (min ${Math.min(...own).toFixed(3)}), shuffled captions ${mean(other).toFixed(3)}`);
  assert.ok(mean(own) > 0.97, `own captions ${mean(own)}`);
  assert.ok(mean(other) < 0.5, `shuffled captions ${mean(other)}`);
});

test('adherence: each wrong attribute costs its share', () => {
  const img = scene(0);
  const truth = parseCaption(captions[0]);
  const o = truth.objects[0];
  const otherShape = ['circle', 'square', 'triangle'].find((s) => s !== o.shape)!;
  const wrong = { ...truth, objects: [{ ...o, shape: otherShape }, ...truth.objects.slice(1)] };
  const items = truth.objects.length + (truth.background ? 1 : 0) + 1;
  const perObject = o.cell ? 4 : 3;
  const score = adherence(img.data, img.width, img.height, wrong).score;
  assert.ok(Math.abs(score - (1 - 1 / perObject / items)) < 1e-9, `${captions[0]} → ${score}`);
});

test('captions: the grammar parses, with sizes, cells and background; anything else is named', () => {
  const c = parseCaption('A small red circle at the top left and a large blue square at the bottom right on a black background.');
  assert.deepEqual(c, {
    background: 'black',
    objects: [
      { size: 'small', colour: 'red', shape: 'circle', cell: [0, 0] },
      { size: 'large', colour: 'blue', shape: 'square', cell: [2, 2] },
    ],
  });
  assert.deepEqual(parseCaption('an orange triangle, a green circle and a purple square in the centre').objects.map((o) => [o.colour, o.cell]),
    [['orange', undefined], ['green', undefined], ['purple', [1, 1]]]);
  assert.throws(() => parseCaption('a red hexagon on the left', 'prompts.txt:3'), /^InputError: prompts.txt:3: cannot read "a red hexagon on the left".*expected "a \[small\|large\]/);
  assert.throws(() => parseCaption('a red circle and a red square'), /two objects share a colour/);
  assert.throws(() => parseCaption(''), /cannot read ""/);
});

test('prompt files: one prompt per line, comments and blank lines skipped; missing or empty files named', () => {
  const held = readPromptFile(path.resolve(import.meta.dirname, '../assets/scenes/held-out-prompts.txt'));
  assert.equal(held.length, 64);
  for (const [i, p] of held.entries()) parseCaption(p, `held-out-prompts.txt:${i + 1}`);
  assert.throws(() => readPromptFile('/nonexistent/prompts.txt'), /^InputError: \/nonexistent\/prompts.txt: cannot read the prompt file \(ENOENT\)/);
  const tmp = path.join(fs.mkdtempSync('/tmp/prompts-'), 'p.txt');
  fs.writeFileSync(tmp, '# nothing\n\n');
  assert.throws(() => readPromptFile(tmp), /no prompts/);
});
