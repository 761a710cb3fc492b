/**
 * The CLIP BPE tokenizer of Stable Diffusion folders, giving the ids transformers' CLIPTokenizer
 * (5.x, backed by the Rust `tokenizers` crate) gives for the same files.
 *
 * The tokenization itself is done by @huggingface/tokenizers (pure JS), fed the tokenizer.json
 * that transformers would build from vocab.json / merges.txt. This module reads those files (or,
 * in folders transformers 5 saved, the vocabulary, merges and added tokens of their tokenizer.json),
 * works out the special tokens the way transformers does, and adds SD's truncation and padding.
 */
import { Tokenizer } from '@huggingface/tokenizers';
import { describe, InputError } from '../errors.ts';
import { fileKind, joinPath, readTextFile } from '../io/files.ts';

const BOS = '<|startoftext|>';
const EOS = '<|endoftext|>';
/** CLIP's context length; also every SD text encoder's number of positions. */
const CLIP_CONTEXT = 77;
/** The longest token sequence a tokenizer config may ask for. */
const MAX_TOKENS = 65_536;
/** transformers writes ~1e30 as model_max_length when a tokenizer has no limit. */
const NO_LIMIT = 1e12;
/**
 * CLIPTokenizer's pre-tokenizer: contractions, letter runs, single digits, other-symbol runs.
 * transformers writes `\s` where this has a space: the normalizer has already turned every
 * Oniguruma whitespace run into one space, and JavaScript's `\s` differs (it includes U+FEFF).
 */
const CLIP_SPLIT =
  "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^ \\p{L}\\p{N}]+";
/**
 * The GPT-2 split that transformers' ByteLevel pre-tokenizer (use_regex) applies to each piece
 * again; it only changes a literal `<|endoftext|>` that was not matched as a special token
 * (`<|`, `endoftext`, `|>`). Given here without its whitespace alternatives (pieces have none)
 * because the library's ByteLevel hard-codes it with JavaScript's `\s`.
 */
const GPT2_SPLIT = "'s|'t|'re|'ve|'m|'ll|'d|\\p{L}+|\\p{N}+|[^ \\p{L}\\p{N}]+";
/** transformers' order of the named special tokens; it decides which duplicate wins. */
const SPECIAL_KEYS = ['bos_token', 'eos_token', 'unk_token', 'sep_token', 'pad_token', 'cls_token', 'mask_token'];
/** CLIPTokenizer's constructor defaults. */
const CLIP_DEFAULTS: Record<string, string> = { bos_token: BOS, eos_token: EOS, unk_token: EOS, pad_token: EOS };

interface AddedTokenSpec {
  content: string;
  normalized: boolean;
  lstrip: boolean;
  rstrip: boolean;
  single_word: boolean;
  special: boolean;
}

/** A special token as written in a config: a plain string, or an AddedToken object. */
type TokenValue = string | AddedTokenSpec;

export class ClipTokenizer {
  readonly maxLength: number;
  readonly bosTokenId: number;
  readonly eosTokenId: number;
  readonly padTokenId: number;
  private readonly tokenizer: Tokenizer;

  private constructor(tokenizer: Tokenizer, ids: { max: number; bos: number; eos: number; pad: number }) {
    this.tokenizer = tokenizer;
    this.maxLength = ids.max;
    this.bosTokenId = ids.bos;
    this.eosTokenId = ids.eos;
    this.padTokenId = ids.pad;
  }

  /**
   * Reads a diffusers `tokenizer/` folder: vocab.json, merges.txt, tokenizer_config.json,
   * special_tokens_map.json — or, without vocab.json, tokenizer.json (as transformers 5 saves).
   */
  static fromFolder(dir: string): ClipTokenizer {
    const vocabFile = joinPath(dir, 'vocab.json');
    const jsonFile = joinPath(dir, 'tokenizer.json');
    const configFile = joinPath(dir, 'tokenizer_config.json');
    const mapFile = joinPath(dir, 'special_tokens_map.json');

    const fromJson = fileKind(vocabFile) === undefined && fileKind(jsonFile) !== undefined;
    const { vocab, merges, listed } = fromJson ? readTokenizerJson(jsonFile) : readVocabAndMerges(dir);
    const vocabName = fromJson ? 'tokenizer.json' : 'vocab.json';
    const config = asObject(configFile, readJson(configFile, false) ?? {});
    const map = asObject(mapFile, readJson(mapFile, false) ?? {});

    // transformers: when tokenizer_config.json lists added_tokens_decoder, special_tokens_map.json is not read.
    const decoder = config.added_tokens_decoder;
    const added = new Map<string, { id: number; spec: AddedTokenSpec }>(listed);
    if (decoder !== undefined) {
      for (const [id, value] of Object.entries(asObject(`${configFile}: added_tokens_decoder`, decoder))) {
        const token = addedToken(`${configFile}: added_tokens_decoder.${id}`, /^\d+$/.test(id) ? Number(id) : id, value,
          'a numeric id mapped to an object with "content"');
        added.set(token.spec.content, token);
      }
    }
    const named = new Map<string, TokenValue>();
    for (const key of SPECIAL_KEYS) {
      const fromMap = decoder === undefined ? map[key] : undefined;
      if (fromMap !== undefined && fromMap !== null) named.set(key, tokenValue(`${mapFile}: ${key}`, fromMap, true));
      else if (config[key] !== undefined && config[key] !== null) named.set(key, tokenValue(`${configFile}: ${key}`, config[key], false));
      else if (CLIP_DEFAULTS[key] !== undefined) named.set(key, CLIP_DEFAULTS[key]);
    }

    // As transformers registers them: named tokens not already added, skipping one equal to an
    // earlier one (strings equal strings, tokens equal tokens, by content); a later registration
    // of the same content replaces the flags of an earlier one.
    const queued: TokenValue[] = [];
    for (const value of named.values()) {
      const content = contentOf(value);
      if (added.has(content)) continue;
      if (queued.some((q) => typeof q === typeof value && contentOf(q) === content)) continue;
      queued.push(value);
    }
    const fromNamed = new Map<string, AddedTokenSpec>();
    for (const value of queued) {
      fromNamed.set(contentOf(value), typeof value === 'string' ? plainSpecial(value) : { ...value, special: true });
    }
    for (const [content, spec] of fromNamed) {
      if (!Object.hasOwn(vocab, content)) {
        throw new InputError(dir, `special token ${JSON.stringify(content)} is not in ${vocabName}`);
      }
      added.set(content, { id: vocab[content], spec });
    }

    const idOf = (key: string): number => added.get(contentOf(named.get(key)!))!.id;
    const tokenizer = new Tokenizer(tokenizerJson(vocab, merges, added, named), {});
    return new ClipTokenizer(tokenizer, {
      max: maxLength(configFile, config.model_max_length),
      bos: idOf('bos_token'),
      eos: idOf('eos_token'),
      pad: idOf('pad_token'),
    });
  }

  /** Ids as the SD pipeline asks for them: BOS … EOS, truncated and padded to `maxLength`. */
  encode(text: string): number[] {
    const ids = this.encodeUntruncated(text);
    if (ids.length > this.maxLength) {
      // transformers truncates the text's tokens, then adds BOS/EOS: EOS always ends the row.
      return [...ids.slice(0, this.maxLength - 1), this.eosTokenId];
    }
    return ids.concat(new Array<number>(this.maxLength - ids.length).fill(this.padTokenId));
  }

  /** BOS, the text's tokens, EOS: no truncation, no padding. */
  encodeUntruncated(text: string): number[] {
    return this.tokenizer.encode(text).ids;
  }
}

/** The tokenizer.json transformers' CLIPTokenizer builds, in the shape @huggingface/tokenizers reads. */
function tokenizerJson(
  vocab: Record<string, number>,
  merges: [string, string][],
  added: Map<string, { id: number; spec: AddedTokenSpec }>,
  named: Map<string, TokenValue>,
): object {
  const bos = contentOf(named.get('bos_token')!);
  const eos = contentOf(named.get('eos_token')!);
  return {
    added_tokens: [...added.values()].sort((a, b) => a.id - b.id).map(({ id, spec }) => ({ id, ...spec })),
    normalizer: {
      type: 'Sequence',
      normalizers: [
        { type: 'NFC' },
        { type: 'Replace', pattern: { Regex: '\\s+' }, content: ' ' },
        // Rust lower-cases char by char, so a word-final Σ becomes σ, not the ς that JS's
        // context-aware toLowerCase (used by the library's Lowercase) would give.
        { type: 'Replace', pattern: { String: '\u03a3' }, content: '\u03c3' },
        { type: 'Lowercase' },
      ],
    },
    pre_tokenizer: {
      type: 'Sequence',
      pretokenizers: [
        { type: 'Split', pattern: { Regex: CLIP_SPLIT }, behavior: 'Removed', invert: true },
        { type: 'Split', pattern: { Regex: GPT2_SPLIT }, behavior: 'Removed', invert: true },
        { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
      ],
    },
    post_processor: {
      type: 'RobertaProcessing',
      sep: [eos, added.get(eos)!.id],
      cls: [bos, added.get(bos)!.id],
      trim_offsets: false,
      add_prefix_space: false,
    },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: contentOf(named.get('unk_token')!),
      continuing_subword_prefix: '',
      end_of_word_suffix: '</w>',
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges,
    },
  };
}

function readText(file: string, required: boolean): string | undefined {
  try {
    return readTextFile(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      if (!required) return undefined;
      throw new InputError(file, 'is missing', 'a CLIP tokenizer folder with vocab.json and merges.txt (or tokenizer.json)');
    }
    throw new InputError(file, `cannot be read (${(err as Error).message})`);
  }
}

function readJson(file: string, required: boolean): unknown {
  const text = readText(file, required);
  if (text === undefined) return undefined;
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new InputError(file, `is not valid JSON (${(err as Error).message})`);
  }
}

function asObject(where: string, value: unknown): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new InputError(where, 'has the wrong type', 'a JSON object', describe(value));
  }
  return value as Record<string, unknown>;
}

function parseVocab(file: string, value: unknown): Record<string, number> {
  const vocab = asObject(file, value);
  // Plain loops over 49,408 entries: this runs at every start.
  for (const token in vocab) {
    const id = vocab[token];
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0) {
      throw new InputError(file, `token ${JSON.stringify(token)} has a bad id`, 'a non-negative integer', describe(id));
    }
  }
  return vocab as Record<string, number>;
}

function readVocabAndMerges(dir: string): { vocab: Record<string, number>; merges: [string, string][]; listed: undefined } {
  const vocabFile = joinPath(dir, 'vocab.json');
  const mergesFile = joinPath(dir, 'merges.txt');
  const vocab = parseVocab(vocabFile, readJson(vocabFile, true));
  const merges = parseMerges(mergesFile, readText(mergesFile, true)!);
  checkMerges(merges, vocab, 'vocab.json', (i) => `${mergesFile}:${i + 1}`);
  return { vocab, merges: merges.map(([pair]) => pair), listed: undefined };
}

/** merges.txt as the Rust crate reads it: "#version" lines skipped, every other line "left right". Keeps each merge's line index. */
function parseMerges(file: string, text: string): [[string, string], number][] {
  const lines = text.split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  const merges: [[string, string], number][] = [];
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].endsWith('\r') ? lines[i].slice(0, -1) : lines[i];
    if (line.startsWith('#version')) continue;
    merges.push([mergePair(line, () => `${file}:${i + 1}`), i]);
  }
  return merges;
}

function mergePair(line: string, where: () => string): [string, string] {
  const space = line.indexOf(' ');
  if (space <= 0 || space === line.length - 1 || line.indexOf(' ', space + 1) !== -1) {
    throw new InputError(where(), 'is not a merge', 'two tokens separated by one space', describe(line));
  }
  return [line.slice(0, space), line.slice(space + 1)];
}

function checkMerges(merges: [[string, string], number][], vocab: Record<string, number>, vocabName: string, where: (index: number) => string): void {
  const known = (token: string) => Object.hasOwn(vocab, token);
  for (const [[left, right], index] of merges) {
    const missing = !known(left) ? left : !known(right) ? right : !known(left + right) ? left + right : undefined;
    if (missing !== undefined) throw new InputError(where(index), `token ${JSON.stringify(missing)} is not in ${vocabName}`);
  }
}

/**
 * The BPE vocabulary, merges ("a b" strings or [a, b] pairs) and added tokens of a tokenizer.json.
 * Its normalizer and pre-tokenizer are not read: transformers' CLIPTokenizer builds its own, as here.
 */
function readTokenizerJson(file: string): { vocab: Record<string, number>; merges: [string, string][]; listed: Map<string, { id: number; spec: AddedTokenSpec }> } {
  const json = asObject(file, readJson(file, true));
  const model = asObject(`${file}: model`, json.model);
  if (model.type !== 'BPE') throw new InputError(`${file}: model.type`, 'is not a BPE model', '"BPE" (a CLIP tokenizer)', describe(model.type));
  const vocab = parseVocab(`${file}: model.vocab`, model.vocab);
  if (!Array.isArray(model.merges)) throw new InputError(`${file}: model.merges`, 'has the wrong type', 'an array of merges', describe(model.merges));
  const merges = model.merges.map((m: unknown, i: number): [[string, string], number] => {
    const where = `${file}: model.merges[${i}]`;
    if (typeof m === 'string') return [mergePair(m, () => where), i];
    if (Array.isArray(m) && m.length === 2 && m.every((t) => typeof t === 'string' && t !== '')) return [[m[0], m[1]], i];
    throw new InputError(where, 'is not a merge', '"left right" or ["left", "right"]', describe(m));
  });
  checkMerges(merges, vocab, 'tokenizer.json', (i) => `${file}: model.merges[${i}]`);
  const listed = new Map<string, { id: number; spec: AddedTokenSpec }>();
  const addedTokens = json.added_tokens ?? [];
  if (!Array.isArray(addedTokens)) throw new InputError(`${file}: added_tokens`, 'has the wrong type', 'an array of tokens', describe(addedTokens));
  addedTokens.forEach((value: unknown, i: number) => {
    const token = addedToken(`${file}: added_tokens[${i}]`, (value as { id?: unknown } | null)?.id, value,
      'an object with a non-negative integer "id" and a string "content"');
    listed.set(token.spec.content, token);
  });
  return { vocab, merges: merges.map(([pair]) => pair), listed };
}

/** An added token with its id (tokenizer_config.json's added_tokens_decoder, tokenizer.json's added_tokens). */
function addedToken(where: string, id: unknown, value: unknown, expected: string): { id: number; spec: AddedTokenSpec } {
  const spec = tokenValue(where, value, false);
  if (typeof spec === 'string' || typeof id !== 'number' || !Number.isInteger(id) || id < 0) {
    throw new InputError(where, 'is not an added token', expected, describe(value));
  }
  return { id, spec };
}

/**
 * A special token from a config. transformers forces `special` on tokens from
 * special_tokens_map.json; elsewhere an unset `normalized` defaults to `!special`.
 */
function tokenValue(where: string, value: unknown, forceSpecial: boolean): TokenValue {
  if (typeof value === 'string') return value;
  const obj = typeof value === 'object' && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined;
  if (obj === undefined || typeof obj.content !== 'string') {
    throw new InputError(where, 'is not a token', 'a string or an object with a string "content"', describe(value));
  }
  const flag = (name: string, fallback: boolean): boolean => {
    const v = obj[name];
    if (v === undefined || v === null) return fallback;
    if (typeof v !== 'boolean') throw new InputError(`${where}.${name}`, 'has the wrong type', 'true or false', describe(v));
    return v;
  };
  const special = forceSpecial || flag('special', false);
  return {
    content: obj.content,
    normalized: flag('normalized', !special),
    lstrip: flag('lstrip', false),
    rstrip: flag('rstrip', false),
    single_word: flag('single_word', false),
    special,
  };
}

function contentOf(value: TokenValue): string {
  return typeof value === 'string' ? value : value.content;
}

/** A special token given as a plain string: matched in the raw (not normalized) text. */
function plainSpecial(content: string): AddedTokenSpec {
  return { content, normalized: false, lstrip: false, rstrip: false, single_word: false, special: true };
}

function maxLength(configFile: string, value: unknown): number {
  // Missing or "no limit": SD pipelines pad to model_max_length, so fall back to CLIP's 77.
  if (value === undefined || value === null || (typeof value === 'number' && value >= NO_LIMIT)) return CLIP_CONTEXT;
  // Above this the text encoder's position table is the bound anyway; ids padded that far only exhaust memory.
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 2 || value > MAX_TOKENS) {
    throw new InputError(`${configFile}: model_max_length`, 'is not usable', `an integer from 2 to ${MAX_TOKENS} (or ${NO_LIMIT.toExponential(0)} and above for no limit)`, describe(value));
  }
  return value;
}
