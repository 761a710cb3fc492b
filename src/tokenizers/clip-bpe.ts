/**
 * The CLIP BPE tokenizer of Stable Diffusion folders, giving the ids transformers' CLIPTokenizer
 * (5.x, backed by the Rust `tokenizers` crate) gives for the same files.
 *
 * This module reads vocab.json / merges.txt (or, in folders transformers 5 saved, the vocabulary,
 * merges and added tokens of their tokenizer.json), works out the special tokens the way
 * transformers does, and tokenizes as the tokenizer.json transformers would build does:
 * added tokens split out first, then normalization (NFC, whitespace runs to one space, lower
 * case), CLIP's pre-tokenizer splits, byte-level characters, and BPE with CLIP's `</w>` word
 * suffix; SD's truncation and padding on top. It is written here rather than fed to a general
 * tokenizer library because building one from CLIP's 49,408 tokens and 48,894 merges took 0.2 s of
 * every start (test/tokenizer.test.ts checks it against @huggingface/tokenizers on fuzzed text).
 */
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
export const CLIP_SPLIT =
  "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^ \\p{L}\\p{N}]+";
/**
 * The GPT-2 split that transformers' ByteLevel pre-tokenizer (use_regex) applies to each piece
 * again; it only changes a literal `<|endoftext|>` that was not matched as a special token
 * (`<|`, `endoftext`, `|>`). Given here without its whitespace alternatives (pieces have none).
 */
export const GPT2_SPLIT = "'s|'t|'re|'ve|'m|'ll|'d|\\p{L}+|\\p{N}+|[^ \\p{L}\\p{N}]+";
/** transformers' order of the named special tokens; it decides which duplicate wins. */
const SPECIAL_KEYS = ['bos_token', 'eos_token', 'unk_token', 'sep_token', 'pad_token', 'cls_token', 'mask_token'];
/** CLIPTokenizer's constructor defaults. */
const CLIP_DEFAULTS: Record<string, string> = { bos_token: BOS, eos_token: EOS, unk_token: EOS, pad_token: EOS };

export interface AddedTokenSpec {
  content: string;
  normalized: boolean;
  lstrip: boolean;
  rstrip: boolean;
  single_word: boolean;
  special: boolean;
}

/** A special token as written in a config: a plain string, or an AddedToken object. */
type TokenValue = string | AddedTokenSpec;

/** What a CLIP tokenizer folder defines, checked: the tokenizer is made from this. */
export interface ClipTokenizerFiles {
  vocab: Map<string, number>;
  /** "left right" in rank order (byte-level tokens have no space, so the pair is one string, as merges.txt writes it). */
  merges: string[];
  /** Added tokens by content, with their ids. */
  added: Map<string, { id: number; spec: AddedTokenSpec }>;
  bos: string;
  eos: string;
  unk: string;
  pad: string;
  maxLength: number;
}

/** GPT-2's byte-level alphabet: each byte as one printable character (the printable Latin-1 ones as themselves, the rest from U+0100 on). */
const BYTE_CHARS: readonly string[] = (() => {
  const printable = (b: number) => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  let next = 256;
  return Array.from({ length: 256 }, (_, b) => String.fromCharCode(printable(b) ? b : next++));
})();
const UTF8 = new TextEncoder();
const CLIP_PIECES = new RegExp(CLIP_SPLIT, 'gu');
const GPT2_PIECES = new RegExp(GPT2_SPLIT, 'gu');
/** Oniguruma's `\s` (what the Rust crate's Replace matches): Unicode White_Space, unlike JavaScript's `\s`. */
const WHITESPACE_RUNS = /\p{White_Space}+/gu;
/** Words whose merges are kept; beyond this the memo starts again (a service may see unbounded text). */
const MEMO_WORDS = 10_000;

/** CLIPTokenizer's normalizer: NFC, whitespace runs to one space, lower case char by char (a word-final Σ becomes σ, not JS's ς). */
function normalize(text: string): string {
  return text.normalize('NFC').replace(WHITESPACE_RUNS, ' ').replaceAll('\u03a3', '\u03c3').toLowerCase();
}

/** The text split around added tokens: at each position the longest one that starts there, left to right. */
function splitAround(text: string, contents: readonly string[]): string[] {
  const out: string[] = [];
  let start = 0;
  for (let i = 0; i < text.length;) {
    let match = '';
    for (const c of contents) if (c.length > match.length && text.startsWith(c, i)) match = c;
    if (match === '') {
      i++;
      continue;
    }
    if (i > start) out.push(text.slice(start, i));
    out.push(match);
    i += match.length;
    start = i;
  }
  if (start < text.length) out.push(text.slice(start));
  return out;
}

export class ClipTokenizer {
  readonly maxLength: number;
  readonly bosTokenId: number;
  readonly eosTokenId: number;
  readonly padTokenId: number;
  private readonly files: ClipTokenizerFiles;
  private readonly unkId: number | undefined;
  /** Added tokens by content, and by normalized content for those matched after normalization. */
  private readonly addedBy = new Map<string, { id: number; spec: AddedTokenSpec }>();
  private readonly rawContents: string[] = [];
  private readonly normalizedContents: string[] = [];
  /** Merge ranks by "left right" (byte-level tokens have no space, so the key is one). */
  private readonly ranks = new Map<string, number>();
  private readonly memo = new Map<string, string[]>();

  private constructor(files: ClipTokenizerFiles) {
    this.files = files;
    this.maxLength = files.maxLength;
    this.unkId = files.vocab.get(files.unk);
    for (const [content, token] of files.added) {
      this.addedBy.set(content, token);
      if (token.spec.normalized) {
        const normalized = normalize(content);
        this.normalizedContents.push(normalized);
        this.addedBy.set(normalized, token);
      } else {
        this.rawContents.push(content);
      }
    }
    // A later duplicate merge takes the later rank.
    files.merges.forEach((pair, rank) => this.ranks.set(pair, rank));
    [this.bosTokenId, this.eosTokenId, this.padTokenId] = [this.idOf(files.bos)!, this.idOf(files.eos)!, this.idOf(files.pad)!];
  }

  /**
   * Reads a diffusers `tokenizer/` folder: vocab.json, merges.txt, tokenizer_config.json,
   * special_tokens_map.json — or, without vocab.json, tokenizer.json (as transformers 5 saves).
   */
  static fromFolder(dir: string): ClipTokenizer {
    return new ClipTokenizer(readClipTokenizerFolder(dir));
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
    const tokens = [this.files.bos];
    for (const section of this.aroundAdded(text, this.rawContents)) {
      if (this.addedBy.has(section)) {
        tokens.push(section);
        continue;
      }
      for (const part of this.aroundAdded(normalize(section), this.normalizedContents)) {
        if (this.addedBy.has(part)) {
          tokens.push(part);
          continue;
        }
        tokens.push(...this.modelTokens(part));
      }
    }
    tokens.push(this.files.eos);
    return tokens.map((t) => this.idOf(t) ?? this.unkId!);
  }

  /** Normalized text outside added tokens: CLIP's and GPT-2's splits, byte-level characters, BPE; a token the vocabulary lacks is the unknown token. */
  private modelTokens(part: string): string[] {
    const tokens: string[] = [];
    for (const piece of part.match(CLIP_PIECES) ?? []) {
      for (const word of piece.match(GPT2_PIECES) ?? []) {
        for (const token of this.bpe(Array.from(UTF8.encode(word), (b) => BYTE_CHARS[b]).join(''))) {
          tokens.push(this.files.vocab.has(token) || this.files.added.has(token) ? token : this.files.unk);
        }
      }
    }
    return tokens;
  }

  /** An added token's id over the vocabulary's. */
  private idOf(token: string): number | undefined {
    return this.addedBy.get(token)?.id ?? this.files.vocab.get(token);
  }

  /** The non-empty sections of the text around added tokens, whitespace beside a token stripped where it asks. */
  private aroundAdded(text: string, contents: readonly string[]): string[] {
    const sections = splitAround(text, contents);
    for (let i = 0; i < sections.length; i++) {
      const token = this.addedBy.get(sections[i]);
      if (token?.spec.lstrip && i > 0) sections[i - 1] = sections[i - 1].trimEnd();
      if (token?.spec.rstrip && i < sections.length - 1) sections[i + 1] = sections[i + 1].trimStart();
    }
    return sections.filter((section) => section.length > 0);
  }

  /** A word's BPE tokens: the lowest-ranked adjacent pair merged first (the leftmost of equals), CLIP's `</w>` on the last character. */
  private bpe(word: string): string[] {
    const known = this.memo.get(word);
    if (known) return known;
    const parts = Array.from(word);
    parts[parts.length - 1] += '</w>';
    for (;;) {
      let [best, bestRank] = [-1, Infinity];
      for (let i = 0; i < parts.length - 1; i++) {
        const rank = this.ranks.get(`${parts[i]} ${parts[i + 1]}`);
        if (rank !== undefined && rank < bestRank) [best, bestRank] = [i, rank];
      }
      if (best < 0) break;
      parts.splice(best, 2, parts[best] + parts[best + 1]);
    }
    if (this.memo.size >= MEMO_WORDS) this.memo.clear();
    this.memo.set(word, parts);
    return parts;
  }
}

/** Reads and checks a CLIP tokenizer folder (see ClipTokenizer.fromFolder). */
export function readClipTokenizerFolder(dir: string): ClipTokenizerFiles {
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
    const id = vocab.get(content);
    if (id === undefined) throw new InputError(dir, `special token ${JSON.stringify(content)} is not in ${vocabName}`);
    added.set(content, { id, spec });
  }
  const [bos, eos, unk, pad] = ['bos_token', 'eos_token', 'unk_token', 'pad_token'].map((key) => contentOf(named.get(key)!));
  return { vocab, merges, added: new Map([...added].sort(([, a], [, b]) => a.id - b.id)), bos, eos, unk, pad, maxLength: maxLength(configFile, config.model_max_length) };
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
  return text === undefined ? undefined : parseJson(file, text);
}

function parseJson(file: string, text: string): unknown {
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

function parseVocab(file: string, value: unknown): Map<string, number> {
  const vocab = asObject(file, value);
  const ids = new Map<string, number>();
  for (const token in vocab) {
    const id = vocab[token];
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0) {
      throw new InputError(file, `token ${JSON.stringify(token)} has a bad id`, 'a non-negative integer', describe(id));
    }
    ids.set(token, id);
  }
  return ids;
}

const isJsonSpace = (c: number) => c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09;

/**
 * vocab.json straight into a Map: JSON.parse would first build an object of 49,408 keys (with
 * the checks, 0.1 s of every start). A flat object of non-negative integers is read here;
 * anything else goes through JSON.parse and parseVocab, for their error.
 */
function readVocab(file: string): Map<string, number> {
  const text = readText(file, true)!;
  const slowly = () => parseVocab(file, parseJson(file, text));
  const ids = new Map<string, number>();
  const skip = (i: number) => {
    while (isJsonSpace(text.charCodeAt(i))) i++;
    return i;
  };
  let i = skip(0);
  if (text.charCodeAt(i) !== 0x7b) return slowly();
  i = skip(i + 1);
  if (text.charCodeAt(i) === 0x7d) return skip(i + 1) === text.length ? ids : slowly();
  for (;;) {
    if (text.charCodeAt(i) !== 0x22) return slowly();
    let end = i + 1;
    let escaped = false;
    for (; end < text.length; end++) {
      const c = text.charCodeAt(end);
      if (c === 0x22) break;
      if (c < 0x20) return slowly();
      if (c === 0x5c) [escaped, end] = [true, end + 1];
    }
    if (end >= text.length) return slowly();
    let token: string;
    try {
      token = escaped ? (JSON.parse(text.slice(i, end + 1)) as string) : text.slice(i + 1, end);
    } catch {
      return slowly();
    }
    i = skip(end + 1);
    if (text.charCodeAt(i) !== 0x3a) return slowly();
    const digits = (i = skip(i + 1));
    let id = 0;
    for (let c = text.charCodeAt(i); c >= 0x30 && c <= 0x39; c = text.charCodeAt(++i)) id = id * 10 + (c - 0x30);
    // None, a leading zero (not JSON) or more than a safe integer holds: JSON.parse says what.
    if (i === digits || (text.charCodeAt(digits) === 0x30 && i > digits + 1) || i - digits > 15) return slowly();
    ids.set(token, id);
    i = skip(i);
    const next = text.charCodeAt(i);
    if (next === 0x2c) {
      i = skip(i + 1);
      continue;
    }
    return next === 0x7d && skip(i + 1) === text.length ? ids : slowly();
  }
}

function readVocabAndMerges(dir: string): { vocab: Map<string, number>; merges: string[]; listed: undefined } {
  const vocabFile = joinPath(dir, 'vocab.json');
  const mergesFile = joinPath(dir, 'merges.txt');
  const vocab = readVocab(vocabFile);
  const merges = parseMerges(mergesFile, readText(mergesFile, true)!, vocab);
  return { vocab, merges, listed: undefined };
}

/**
 * merges.txt as the Rust crate reads it: "#version" lines skipped, every other line "left right",
 * whose tokens and their join the vocabulary must have.
 */
function parseMerges(file: string, text: string, vocab: Map<string, number>): string[] {
  const merges: string[] = [];
  for (let start = 0, line = 1; start < text.length; line++) {
    const newline = text.indexOf('\n', start);
    const end = newline < 0 ? text.length : newline;
    const pair = text.slice(start, text.charCodeAt(end - 1) === 0x0d && end > start ? end - 1 : end);
    start = end + 1;
    if (pair.startsWith('#version')) continue;
    checkMerge(pair, vocab, 'vocab.json', () => `${file}:${line}`);
    merges.push(pair);
  }
  return merges;
}

/** Refuses a merge that is not "left right" or names a token the vocabulary lacks. */
function checkMerge(pair: string, vocab: Map<string, number>, vocabName: string, where: () => string): void {
  const space = pair.indexOf(' ');
  if (space <= 0 || space === pair.length - 1 || pair.indexOf(' ', space + 1) !== -1) {
    throw new InputError(where(), 'is not a merge', 'two tokens separated by one space', describe(pair));
  }
  checkPair(pair.slice(0, space), pair.slice(space + 1), vocab, vocabName, where);
}

function checkPair(left: string, right: string, vocab: Map<string, number>, vocabName: string, where: () => string): void {
  const missing = !vocab.has(left) ? left : !vocab.has(right) ? right : !vocab.has(left + right) ? left + right : undefined;
  if (missing !== undefined) throw new InputError(where(), `token ${JSON.stringify(missing)} is not in ${vocabName}`);
}

/**
 * The BPE vocabulary, merges ("a b" strings or [a, b] pairs) and added tokens of a tokenizer.json.
 * Its normalizer and pre-tokenizer are not read: transformers' CLIPTokenizer builds its own, as here.
 */
function readTokenizerJson(file: string): { vocab: Map<string, number>; merges: string[]; listed: Map<string, { id: number; spec: AddedTokenSpec }> } {
  const json = asObject(file, readJson(file, true));
  const model = asObject(`${file}: model`, json.model);
  if (model.type !== 'BPE') throw new InputError(`${file}: model.type`, 'is not a BPE model', '"BPE" (a CLIP tokenizer)', describe(model.type));
  const vocab = parseVocab(`${file}: model.vocab`, model.vocab);
  if (!Array.isArray(model.merges)) throw new InputError(`${file}: model.merges`, 'has the wrong type', 'an array of merges', describe(model.merges));
  const merges = model.merges.map((m: unknown, i: number): string => {
    const where = () => `${file}: model.merges[${i}]`;
    if (typeof m === 'string') {
      checkMerge(m, vocab, 'tokenizer.json', where);
      return m;
    }
    if (!Array.isArray(m) || m.length !== 2 || !m.every((t) => typeof t === 'string' && t !== '')) {
      throw new InputError(where(), 'is not a merge', '"left right" or ["left", "right"]', describe(m));
    }
    checkPair(m[0], m[1], vocab, 'tokenizer.json', where);
    // A pair whose token holds a space can never apply (byte-level text has none), so joining with one is safe.
    return `${m[0]} ${m[1]}`;
  });
  const listed = new Map<string, { id: number; spec: AddedTokenSpec }>();
  const addedTokens = json.added_tokens ?? [];
  if (!Array.isArray(addedTokens)) throw new InputError(`${file}: added_tokens`, 'has the wrong type', 'an array of tokens', describe(addedTokens));
  addedTokens.forEach((value: unknown, i: number) => {
    const token = addedToken(`${file}: added_tokens[${i}]`, (value as { id?: unknown } | null)?.id, value,
      'an object with a non-negative integer "id" and a string "content"');
    listed.set(token.spec.content, token);
  });
  return { vocab, merges, listed };
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
