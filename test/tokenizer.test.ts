import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ClipTokenizer } from '../src/tokenizers/clip-bpe.ts';
import { tempDir, throwsInputError, writeJson } from './helpers/files.ts';

const FIXTURES = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures');

interface TokensGolden {
  model_max_length: number;
  pad_token_id: number;
  bos_token_id: number;
  eos_token_id: number;
  prompts: { prompt: string; input_ids: number[]; untruncated_ids: number[] }[];
}

const tokenizers = new Map<string, ClipTokenizer>();
function fixtureTokenizer(fixture: string): ClipTokenizer {
  let tok = tokenizers.get(fixture);
  if (tok === undefined) {
    tok = ClipTokenizer.fromFolder(path.join(FIXTURES, fixture, 'tokenizer'));
    tokenizers.set(fixture, tok);
  }
  return tok;
}

for (const fixture of ['tiny-sd1', 'tiny-sd2']) {
  const golden = JSON.parse(
    fs.readFileSync(path.join(FIXTURES, 'goldens', `${fixture}-tokens.json`), 'utf8'),
  ) as TokensGolden;

  test(`${fixture}: special ids and max length match transformers`, () => {
    const tok = fixtureTokenizer(fixture);
    assert.equal(tok.maxLength, golden.model_max_length);
    assert.equal(tok.padTokenId, golden.pad_token_id);
    assert.equal(tok.bosTokenId, golden.bos_token_id);
    assert.equal(tok.eosTokenId, golden.eos_token_id);
  });

  test(`${fixture}: ids match transformers' CLIPTokenizer on every golden prompt`, () => {
    const tok = fixtureTokenizer(fixture);
    for (const { prompt, input_ids, untruncated_ids } of golden.prompts) {
      assert.deepEqual(tok.encodeUntruncated(prompt), untruncated_ids, `untruncated ${JSON.stringify(prompt)}`);
      assert.deepEqual(tok.encode(prompt), input_ids, `padded ${JSON.stringify(prompt)}`);
    }
  });
}

test('the goldens cover truncation and the SD 2.x "!" pad quirk', () => {
  const sd1 = fixtureTokenizer('tiny-sd1');
  const sd2 = fixtureTokenizer('tiny-sd2');
  const long = 'a very long prompt '.repeat(30);
  assert.ok(sd1.encodeUntruncated(long).length > 77);
  const ids = sd1.encode(long);
  assert.equal(ids.length, 77);
  assert.equal(ids[76], sd1.eosTokenId);
  // "!" is SD 2.x's pad token and so a special token: each one becomes id 0.
  assert.deepEqual(sd2.encodeUntruncated('hi!!'), [49406, sd2.encodeUntruncated('hi')[1], 0, 0, 49407]);
  assert.notDeepEqual(sd1.encodeUntruncated('hi!!'), sd2.encodeUntruncated('hi!!'));
});

/** A small tokenizer folder: a few tokens and merges over CLIP's byte alphabet. */
function writeTinyFolder(dir: string, merges: string[], config: object = { model_max_length: 8 }): void {
  const vocab: Record<string, number> = {};
  const add = (t: string) => { if (!(t in vocab)) vocab[t] = Object.keys(vocab).length; };
  for (const c of 'abcdehlo!') add(c);
  for (const c of 'abcdehlo!') add(c + '</w>');
  for (const t of ['he', 'll', 'llo</w>', 'hello</w>', '<|startoftext|>', '<|endoftext|>']) add(t);
  writeJson(path.join(dir, 'vocab.json'), vocab);
  fs.writeFileSync(path.join(dir, 'merges.txt'), ['#version: 0.2', ...merges].join('\n') + '\n');
  writeJson(path.join(dir, 'tokenizer_config.json'), config);
}

test('a hand-made folder: merges by rank, truncation keeps EOS, padding with the pad id', (t) => {
  const dir = tempDir(t);
  writeTinyFolder(dir, ['h e', 'l l', 'll o</w>', 'he llo</w>']);
  const tok = ClipTokenizer.fromFolder(dir);
  const bos = tok.bosTokenId;
  const eos = tok.eosTokenId;
  const hello = 21; // hello</w>
  assert.equal(tok.maxLength, 8);
  assert.equal(tok.padTokenId, eos);
  assert.deepEqual(tok.encodeUntruncated('HELLO'), [bos, hello, eos]);
  assert.deepEqual(tok.encode('hello'), [bos, hello, eos, eos, eos, eos, eos, eos]);
  assert.deepEqual(tok.encode('hello '.repeat(9)), [bos, hello, hello, hello, hello, hello, hello, eos]);
});

test('missing tokenizer_config.json falls back to CLIPTokenizer defaults and 77 tokens', (t) => {
  const dir = tempDir(t);
  writeTinyFolder(dir, ['h e']);
  fs.rmSync(path.join(dir, 'tokenizer_config.json'));
  const tok = ClipTokenizer.fromFolder(dir);
  assert.equal(tok.maxLength, 77);
  assert.equal(tok.encode('').length, 77);
});

test('bad input: missing vocab.json', (t) => {
  const dir = tempDir(t);
  writeTinyFolder(dir, []);
  fs.rmSync(path.join(dir, 'vocab.json'));
  throwsInputError(() => ClipTokenizer.fromFolder(dir), 'vocab.json', 'is missing');
});

test('bad input: missing merges.txt, vocab.json not JSON, bad vocab id', (t) => {
  const dir = tempDir(t);
  writeTinyFolder(dir, []);
  fs.rmSync(path.join(dir, 'merges.txt'));
  throwsInputError(() => ClipTokenizer.fromFolder(dir), 'merges.txt', 'is missing');
  writeTinyFolder(dir, []);
  fs.writeFileSync(path.join(dir, 'vocab.json'), '{"a": 0,');
  throwsInputError(() => ClipTokenizer.fromFolder(dir), 'vocab.json', 'not valid JSON');
  writeJson(path.join(dir, 'vocab.json'), { a: 'zero' });
  throwsInputError(() => ClipTokenizer.fromFolder(dir), 'vocab.json', 'bad id');
});

test('bad input: malformed merges line names the file and line', (t) => {
  const dir = tempDir(t);
  writeTinyFolder(dir, ['h e', 'l l o']);
  throwsInputError(() => ClipTokenizer.fromFolder(dir), 'merges.txt:3', 'is not a merge');
  writeTinyFolder(dir, ['h e', '']);
  throwsInputError(() => ClipTokenizer.fromFolder(dir), 'merges.txt:3', 'is not a merge');
  writeTinyFolder(dir, ['h x']);
  throwsInputError(() => ClipTokenizer.fromFolder(dir), 'merges.txt:2', '"x" is not in vocab.json');
});

test('bad input: special tokens and model_max_length in tokenizer_config.json', (t) => {
  const dir = tempDir(t);
  writeTinyFolder(dir, [], { pad_token: '<pad>' });
  throwsInputError(() => ClipTokenizer.fromFolder(dir), '"<pad>" is not in vocab.json');
  writeTinyFolder(dir, [], { pad_token: 7 });
  throwsInputError(() => ClipTokenizer.fromFolder(dir), 'tokenizer_config.json: pad_token', 'is not a token');
  writeTinyFolder(dir, [], { model_max_length: 'long' });
  throwsInputError(() => ClipTokenizer.fromFolder(dir), 'model_max_length', 'is not usable');
});
