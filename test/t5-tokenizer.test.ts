/**
 * The T5 tokenizer of PixArt folders against transformers 5's T5Tokenizer (goldens from
 * tools/reference/make_pixart_fixtures.py, the real T5 v1.1 vocabulary): from spiece.model (as
 * the Hub's folders ship it) and from tokenizer.json (as transformers 5 saves it).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { T5Tokenizer } from '../src/tokenizers/t5-unigram.ts';

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
