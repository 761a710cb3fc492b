import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ClipTokenizer, readClipTokenizerFolder } from '../src/tokenizers/clip-bpe.ts';
import { InputError } from '../src/errors.ts';
import { tempDir, throwsInputError, writeJson } from './helpers/files.ts';
import { referenceClipTokenizer } from './helpers/clip-reference.ts';
import { prng } from './helpers/prng.ts';
import { REFERENCE_MODEL } from '../src/pipelines/reference-model.ts';

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
    const folder = path.join(FIXTURES, fixture);
    tok = ClipTokenizer.fromFolder(fs.existsSync(path.join(folder, 'tokenizer')) ? path.join(folder, 'tokenizer') : folder);
    tokenizers.set(fixture, tok);
  }
  return tok;
}

// tokenizer-json-sd2: the SD 2.x tokenizer as transformers 5 saves it (tokenizer.json, no vocab.json / merges.txt).
for (const fixture of ['tiny-sd1', 'tiny-sd2', 'tokenizer-json-sd2']) {
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

/** writeTinyFolder's tokens, as transformers 5 saves them: tokenizer.json only. */
function writeTinyJsonFolder(dir: string, edit: (json: { model: Record<string, unknown>; added_tokens: unknown[] }) => void = () => {}): void {
  writeTinyFolder(dir, ['h e', 'l l', 'll o</w>', 'he llo</w>']);
  const vocab = JSON.parse(fs.readFileSync(path.join(dir, 'vocab.json'), 'utf8')) as Record<string, number>;
  const token = (content: string) => ({ id: vocab[content], content, single_word: false, lstrip: false, rstrip: false, normalized: true, special: true });
  const json = {
    added_tokens: [token('<|startoftext|>'), token('<|endoftext|>')],
    model: { type: 'BPE', vocab, merges: [['h', 'e'], ['l', 'l'], 'll o</w>', ['he', 'llo</w>']] },
  };
  edit(json);
  writeJson(path.join(dir, 'tokenizer.json'), json);
  fs.rmSync(path.join(dir, 'vocab.json'));
  fs.rmSync(path.join(dir, 'merges.txt'));
}

test('a tokenizer.json-only folder tokenizes as its vocab.json/merges.txt twin; merges as pairs or strings', (t) => {
  const classic = tempDir(t);
  writeTinyFolder(classic, ['h e', 'l l', 'll o</w>', 'he llo</w>']);
  const dir = tempDir(t);
  writeTinyJsonFolder(dir);
  const [a, b] = [ClipTokenizer.fromFolder(classic), ClipTokenizer.fromFolder(dir)];
  for (const text of ['hello', 'HELLO hello', 'hell', 'ab cd!', '<|endoftext|>hello']) assert.deepEqual(b.encode(text), a.encode(text), text);
  assert.equal(b.eosTokenId, a.eosTokenId);
});

test('bad input: tokenizer.json names the field', (t) => {
  const dir = tempDir(t);
  writeTinyJsonFolder(dir, (j) => { j.model.type = 'WordPiece'; });
  throwsInputError(() => ClipTokenizer.fromFolder(dir), 'tokenizer.json: model.type', 'is not a BPE model');
  writeTinyJsonFolder(dir, (j) => { (j.model.merges as unknown[])[2] = 'll o x'; });
  throwsInputError(() => ClipTokenizer.fromFolder(dir), 'tokenizer.json: model.merges[2]', 'is not a merge');
  writeTinyJsonFolder(dir, (j) => { (j.model.merges as unknown[])[0] = ['h', 'q']; });
  throwsInputError(() => ClipTokenizer.fromFolder(dir), 'tokenizer.json: model.merges[0]', '"q" is not in tokenizer.json');
  writeTinyJsonFolder(dir, (j) => { j.added_tokens[0] = { content: '<|startoftext|>' }; });
  throwsInputError(() => ClipTokenizer.fromFolder(dir), 'tokenizer.json: added_tokens[0]', 'is not an added token');
  writeTinyJsonFolder(dir, (j) => { j.model.vocab = [1, 2]; });
  throwsInputError(() => ClipTokenizer.fromFolder(dir), 'tokenizer.json: model.vocab', 'a JSON object');
});

test('fuzz: mutated tokenizer.json files load or fail with an InputError, nothing else', (t) => {
  const dir = tempDir(t);
  writeTinyJsonFolder(dir);
  const original = fs.readFileSync(path.join(dir, 'tokenizer.json'), 'utf8');
  let seed = 12345;
  const rand = (n: number) => { seed = (seed * 1103515245 + 12345) % 2 ** 31; return seed % n; };
  const pieces = ['', '"', '{', '}', '[', ']', ',', ':', 'null', '-1', '1.5', '"BPE"', '"x"', 'true', '[]', '{}'];
  for (let i = 0; i < 300; i++) {
    const at = rand(original.length);
    const mutated = original.slice(0, at) + pieces[rand(pieces.length)] + original.slice(at + rand(4));
    fs.writeFileSync(path.join(dir, 'tokenizer.json'), mutated);
    try {
      ClipTokenizer.fromFolder(dir).encode('hello');
    } catch (err) {
      assert.ok(err instanceof InputError, `mutation ${i} at ${at}: ${String(err)}`);
    }
  }
});

/** Random text from pieces CLIP tokenization treats differently: cases, scripts, digits, punctuation, whitespace kinds, contractions, special tokens. */
function fuzzText(random: () => number, extra: string[] = []): string {
  const pieces = ['a', 'Hello', 'ASTRONAUT', 'riding', 'horse', 'é', 'É', 'e\u0301', 'ΣΑΣ', 'straße', 'ﬁ', '東京', '🙂', '👩‍🚀', '0', '42', '३',
    '.', ',', '!', '!!', '?', "'s", "'T", "'ll", "'", '"', '-', '_', '(', ')', '<', '>', '|', '<|', '|>', '#', '@', '\u0000', '\u00ad',
    ' ', '  ', '\t', '\n', '\r\n', '\u00a0', '\u3000', '\u2028', '\u0085', '\ufeff', '\u200b', '<|startoftext|>', '<|endoftext|>', 'endoftext', ...extra];
  let text = '';
  for (let n = Math.floor(random() * 12); n > 0; n--) text += pieces[Math.floor(random() * pieces.length)];
  return text;
}

test('fuzz: the CLIP BPE equals @huggingface/tokenizers fed transformers\' tokenizer.json, on SD 1.x, SD 2.x, tokenizer.json-only and the reference model', () => {
  const folders = [path.join(FIXTURES, 'tiny-sd1', 'tokenizer'), path.join(FIXTURES, 'tiny-sd2', 'tokenizer'), path.join(FIXTURES, 'tokenizer-json-sd2'),
    path.join(REFERENCE_MODEL, 'tokenizer')];
  for (const dir of folders) {
    const [ours, reference] = [ClipTokenizer.fromFolder(dir), referenceClipTokenizer(dir)];
    const random = prng(7);
    for (let i = 0; i < 1500; i++) {
      const text = fuzzText(random);
      assert.deepEqual(ours.encodeUntruncated(text), reference(text), `${dir}: ${JSON.stringify(text)}`);
    }
  }
});

test('fuzz: added tokens with lstrip, rstrip and normalized flags split the text as @huggingface/tokenizers does', (t) => {
  const dir = tempDir(t);
  writeTinyFolder(dir, ['h e', 'l l', 'll o</w>', 'he llo</w>'], {
    model_max_length: 77,
    added_tokens_decoder: {
      17: { content: '<|startoftext|>', special: true, normalized: false },
      18: { content: '<|endoftext|>', special: true, normalized: false },
      40: { content: '<Mark>', lstrip: true, rstrip: true, normalized: true, special: false },
      41: { content: 'LL', normalized: false, special: false, rstrip: true },
      42: { content: 'o!', normalized: true, special: true, lstrip: true },
      43: { content: 'hel', normalized: false, special: false },
    },
  });
  const [ours, reference] = [ClipTokenizer.fromFolder(dir), referenceClipTokenizer(dir)];
  const random = prng(11);
  for (let i = 0; i < 3000; i++) {
    const text = fuzzText(random, ['<Mark>', '<mark>', 'LL', 'll', 'o!', 'O!', 'hel', 'HEL', 'hello', ' <Mark> ', 'l', 'o']);
    assert.deepEqual(ours.encodeUntruncated(text), reference(text), JSON.stringify(text));
  }
});

test('fuzz: vocab.json read straight into a Map gives what JSON.parse gives, or one InputError naming it', (t) => {
  const dir = tempDir(t);
  writeTinyFolder(dir, ['h e']);
  const file = path.join(dir, 'vocab.json');
  const vocab = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, number>;
  const entries = Object.entries(vocab).map(([k, v]) => `${JSON.stringify(k)}:${v}`);
  const texts = [
    `{${entries.join(',')}}`,
    ` \n{ ${entries.join(' ,\n\t')} }\r\n`,
    `{${entries.join(',')},"\\u0068\\n\\"x":3,"a":9,"__proto__":4}`,
    `{${entries.join(',')},"big":9007199254740991,"e":1e2}`,
  ];
  const random = prng(3);
  const pieces = ['', '"', '{', '}', ',', ':', '-1', '01', '1.5', '1e3', '\\', '\\u12', 'null', ' ', '\n', '\u0001', '9999999999999999999'];
  for (let i = 0; i < 400; i++) {
    const base = texts[i % texts.length];
    const at = Math.floor(random() * base.length);
    texts.push(base.slice(0, at) + pieces[Math.floor(random() * pieces.length)] + base.slice(at + Math.floor(random() * 3)));
  }
  for (const text of texts) {
    fs.writeFileSync(file, text);
    let expected: Map<string, number> | undefined;
    try {
      const parsed = JSON.parse(text) as unknown;
      const ok = typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed) &&
        Object.values(parsed).every((v) => typeof v === 'number' && Number.isInteger(v) && v >= 0);
      expected = ok ? new Map(Object.entries(parsed as Record<string, number>)) : undefined;
    } catch {
      expected = undefined;
    }
    let got: Map<string, number> | undefined;
    try {
      got = readClipTokenizerFolder(dir).vocab;
    } catch (err) {
      assert.ok(err instanceof InputError && err.message.startsWith(expected ? dir : file), `${JSON.stringify(text)}: ${String(err)}`);
      // A well-formed vocabulary can still lack a merge's or a special token's entry: only those may fail here.
      if (expected) assert.match(err.message, /is not in vocab\.json/, JSON.stringify(text));
      continue;
    }
    assert.ok(expected, `accepted ${JSON.stringify(text)}`);
    assert.deepEqual([...got].sort(), [...expected].sort(), JSON.stringify(text));
  }
});
