/**
 * The T5 tokenizer of PixArt folders against transformers 5's T5Tokenizer (goldens from
 * tools/reference/make_pixart_fixtures.py, the real T5 v1.1 vocabulary): from spiece.model (as
 * the Hub's folders ship it) and from tokenizer.json (as transformers 5 saves it).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { InputError } from '../src/errors.ts';
import { T5Tokenizer } from '../src/tokenizers/t5-unigram.ts';
import { tempDir, throwsInputError } from './helpers/files.ts';

const FIXTURES = path.join(import.meta.dirname, 'fixtures');

interface TokensCase {
  prompt: string;
  ids: number[];
  preprocessed: string;
  preprocessed_ids: number[];
  max_120: { input_ids: number[]; attention_mask: number[] };
  max_300: { input_ids: number[]; attention_mask: number[] };
}

const golden = JSON.parse(fs.readFileSync(path.join(FIXTURES, 'goldens', 'pixart', 't5-tokens.json'), 'utf8')) as { prompts: TokensCase[] };

for (const [fixture, source] of [['tiny-pixart-alpha', 'spiece.model'], ['tiny-pixart-sigma', 'tokenizer.json']]) {
  test(`T5 tokenizer from ${source} (${fixture}) gives transformers' ids on ${golden.prompts.length} prompts, padded and truncated to 120 and 300`, () => {
    const tokenizer = T5Tokenizer.fromFolder(path.join(FIXTURES, fixture, 'tokenizer'));
    const wrong: string[] = [];
    for (const c of golden.prompts) {
      const check = (what: string, actual: unknown, expected: unknown) => {
        try {
          assert.deepEqual(actual, expected);
        } catch {
          wrong.push(`${JSON.stringify(c.prompt.slice(0, 40))} ${what}: ${JSON.stringify(actual).slice(0, 120)} vs ${JSON.stringify(expected).slice(0, 120)}`);
        }
      };
      check('ids', tokenizer.encodeUntruncated(c.prompt), c.ids);
      for (const n of [120, 300] as const) {
        const { ids, mask } = tokenizer.encode(c.prompt, n);
        check(`max ${n}`, { ids, mask }, { ids: c[`max_${n}`].input_ids, mask: c[`max_${n}`].attention_mask });
      }
    }
    assert.deepEqual(wrong, []);
  });
}

test('bad input: a tokenizer folder without spiece.model or tokenizer.json, a tokenizer.json of another kind', (t) => {
  const dir = tempDir(t);
  throwsInputError(() => T5Tokenizer.fromFolder(dir), dir, 'has no T5 tokenizer', 'spiece.model (sentencepiece) or tokenizer.json', 'found neither');
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify({ model: { type: 'BPE', vocab: {}, merges: [] } }));
  throwsInputError(() => T5Tokenizer.fromFolder(dir), 'tokenizer.json: model.type', 'not a T5 tokenizer', '"Unigram"', 'BPE');
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), '{ not json');
  throwsInputError(() => T5Tokenizer.fromFolder(dir), 'tokenizer.json', 'is not valid JSON');
});

test('fuzz: mutated spiece.model files load and tokenize, or fail with one InputError', (t) => {
  const dir = tempDir(t);
  const original = new Uint8Array(fs.readFileSync(path.join(FIXTURES, 'tiny-pixart-alpha', 'tokenizer', 'spiece.model')));
  let seed = 2026;
  const rand = (n: number) => { seed = (seed * 1103515245 + 12345) % 2 ** 31; return seed % n; };
  let loaded = 0;
  for (let i = 0; i < 40; i++) {
    // Half the mutations in the first 4 KB (field headers, the first pieces), the rest anywhere.
    const at = i % 2 ? rand(4096) : rand(original.length);
    const mutated = i % 5 === 4 ? original.slice(0, at) : original.slice();
    if (i % 5 !== 4) for (let k = 0; k < 1 + rand(4); k++) mutated[Math.min(mutated.length - 1, at + k)] = rand(256);
    fs.writeFileSync(path.join(dir, 'spiece.model'), mutated);
    try {
      T5Tokenizer.fromFolder(dir).encode('a photo of a cat', 16);
      loaded++;
    } catch (err) {
      assert.ok(err instanceof InputError, `mutation ${i} at ${at}: ${String(err)}`);
      assert.equal(err.message.split('\n').length, 1);
    }
  }
  t.diagnostic(`${loaded} of 40 mutated models still loaded`);
});
