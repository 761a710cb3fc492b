/**
 * The T5 tokenizer of PixArt folders (sentencepiece Unigram), giving the ids transformers 5's
 * T5Tokenizer (backed by the Rust `tokenizers` crate) gives for the same files.
 *
 * Folders from the Hub ship `spiece.model` (a sentencepiece ModelProto, protobuf) and no
 * tokenizer.json; transformers 5 saves tokenizer.json. Either way the tokenization is done by
 * @huggingface/tokenizers on a tokenizer.json: read as it is, or built from spiece.model the way
 * transformers converts it — the precompiled normalizer, whitespace split and Metaspace ("▁",
 * prepended), the Unigram pieces with their scores plus T5's 100 `<extra_id_N>` (N descending),
 * `</s>` appended.
 */
import { Tokenizer } from '@huggingface/tokenizers';
import { describe, InputError } from '../errors.ts';
import { fileKind, joinPath, readTextFile, readWholeFile } from '../io/files.ts';

interface SentencePiece {
  piece: string;
  score: number;
  /** sentencepiece's ModelProto.SentencePiece.Type: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte. */
  type: number;
}

export interface SentencePieceModel {
  pieces: SentencePiece[];
  unkId: number;
  /** The normalizer's precompiled character map (its rules compiled into a trie). */
  charsmap: Uint8Array;
}

/** A minimal protobuf reader: the fields of one message, in order, as raw values. */
function protoFields(bytes: Uint8Array, where: string): { field: number; value: number | Uint8Array }[] {
  const fields: { field: number; value: number | Uint8Array }[] = [];
  let at = 0;
  const varint = (): number => {
    let result = 0;
    let shift = 0;
    for (;;) {
      if (at >= bytes.length) throw new InputError(where, 'is not a sentencepiece model (truncated protobuf)');
      const b = bytes[at++];
      result += (b & 0x7f) * 2 ** shift;
      if (b < 0x80) return result;
      shift += 7;
      if (shift > 63) throw new InputError(where, 'is not a sentencepiece model (bad varint)');
    }
  };
  while (at < bytes.length) {
    const key = varint();
    const [field, wire] = [Math.floor(key / 8), key % 8];
    if (wire === 0) fields.push({ field, value: varint() });
    else if (wire === 2) {
      const length = varint();
      if (at + length > bytes.length) throw new InputError(where, 'is not a sentencepiece model (field runs past the end)');
      fields.push({ field, value: bytes.subarray(at, at + length) });
      at += length;
    } else if (wire === 5) {
      if (at + 4 > bytes.length) throw new InputError(where, 'is not a sentencepiece model (truncated protobuf)');
      fields.push({ field, value: new DataView(bytes.buffer, bytes.byteOffset + at, 4).getFloat32(0, true) });
      at += 4;
    } else if (wire === 1) {
      at += 8;
    } else {
      throw new InputError(where, `is not a sentencepiece model (protobuf wire type ${wire})`);
    }
  }
  return fields;
}

function utf8(decoder: TextDecoder, bytes: Uint8Array, file: string): string {
  try {
    return decoder.decode(bytes);
  } catch {
    throw new InputError(file, 'is not a sentencepiece model (a piece is not UTF-8)');
  }
}

/** Reads the parts of a sentencepiece ModelProto a Unigram tokenizer needs. */
export function readSentencePieceModel(file: string): SentencePieceModel {
  const bytes = readWholeFile(file);
  const decoder = new TextDecoder('utf-8', { fatal: true });
  const pieces: SentencePiece[] = [];
  let unkId = 0;
  let modelType = 1;
  let charsmap: Uint8Array = new Uint8Array(0);
  for (const { field, value } of protoFields(bytes, file)) {
    if (field === 1 && value instanceof Uint8Array) {
      const p: SentencePiece = { piece: '', score: 0, type: 1 };
      for (const f of protoFields(value, file)) {
        if (f.field === 1 && f.value instanceof Uint8Array) p.piece = utf8(decoder, f.value, file);
        else if (f.field === 2 && typeof f.value === 'number') p.score = f.value;
        else if (f.field === 3 && typeof f.value === 'number') p.type = f.value;
      }
      pieces.push(p);
    } else if (field === 2 && value instanceof Uint8Array) {
      for (const f of protoFields(value, file)) {
        if (f.field === 3 && typeof f.value === 'number') modelType = f.value;
        else if (f.field === 40 && typeof f.value === 'number') unkId = f.value;
      }
    } else if (field === 3 && value instanceof Uint8Array) {
      for (const f of protoFields(value, file)) if (f.field === 2 && f.value instanceof Uint8Array) charsmap = f.value;
    }
  }
  if (pieces.length === 0) throw new InputError(file, 'is not a sentencepiece model', 'a ModelProto with pieces', 'none');
  if (modelType !== 1) throw new InputError(file, 'unsupported sentencepiece model type', 'UNIGRAM (1), as T5 uses', `${modelType}`);
  if (unkId >= pieces.length) throw new InputError(file, 'unk_id outside the vocabulary', `< ${pieces.length}`, `${unkId}`);
  return { pieces, unkId, charsmap };
}

interface AddedToken {
  id: number;
  content: string;
  single_word: boolean;
  lstrip: boolean;
  rstrip: boolean;
  normalized: boolean;
  special: boolean;
}

/** Standard base64 of bytes, with what both Node and browsers have (btoa). */
function base64(bytes: Uint8Array): string {
  let binary = '';
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

/** The tokenizer.json transformers builds for a T5 sentencepiece model with `extraIds` sentinel tokens. */
function tokenizerJsonFromModel(model: SentencePieceModel, extraIds: number, added: AddedToken[]): Record<string, unknown> {
  const vocab: [string, number][] = model.pieces.map((p) => [p.piece, p.score]);
  for (let i = extraIds - 1; i >= 0; i--) vocab.push([`<extra_id_${i}>`, 0]);
  const metaspace = { type: 'Metaspace', replacement: '▁', prepend_scheme: 'always', split: true };
  return {
    version: '1.0',
    added_tokens: added,
    normalizer: model.charsmap.length ? { type: 'Precompiled', precompiled_charsmap: base64(model.charsmap) } : null,
    pre_tokenizer: { type: 'Sequence', pretokenizers: [{ type: 'WhitespaceSplit' }, metaspace] },
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: '</s>', type_id: 0 } }],
      pair: [{ Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: '</s>', type_id: 0 } }, { Sequence: { id: 'B', type_id: 0 } }, { SpecialToken: { id: '</s>', type_id: 0 } }],
      special_tokens: { '</s>': { id: '</s>', ids: [1], tokens: ['</s>'] } },
    },
    decoder: metaspace,
    model: { type: 'Unigram', unk_id: model.unkId, vocab, byte_fallback: false },
  };
}

function readJson(file: string): Record<string, unknown> | undefined {
  if (fileKind(file) === undefined) return undefined;
  let value: unknown;
  try {
    value = JSON.parse(readTextFile(file));
  } catch (e) {
    throw new InputError(file, `is not valid JSON (${(e as Error).message})`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new InputError(file, 'has the wrong type', 'a JSON object', describe(value));
  return value as Record<string, unknown>;
}

/**
 * The special tokens of a T5 folder: tokenizer_config.json's added_tokens_decoder where it lists
 * them, else T5's own — the control pieces, then the sentinels with lstrip/rstrip as transformers sets them.
 */
function addedTokens(configFile: string, config: Record<string, unknown>, model: SentencePieceModel, extraIds: number): AddedToken[] {
  const listed = config.added_tokens_decoder;
  if (listed !== undefined) {
    if (typeof listed !== 'object' || listed === null || Array.isArray(listed)) {
      throw new InputError(`${configFile}: added_tokens_decoder`, 'has the wrong type', 'an object of id → token', describe(listed));
    }
    return Object.entries(listed as Record<string, unknown>).map(([id, value]) => {
      const v = value as Record<string, unknown> | null;
      if (!/^\d+$/.test(id) || typeof v !== 'object' || v === null || typeof v.content !== 'string') {
        throw new InputError(`${configFile}: added_tokens_decoder.${id}`, 'is not an added token', 'a numeric id mapped to an object with "content"', describe(value));
      }
      const flag = (k: string, d: boolean) => (typeof v[k] === 'boolean' ? (v[k] as boolean) : d);
      return { id: Number(id), content: v.content, single_word: flag('single_word', false), lstrip: flag('lstrip', false), rstrip: flag('rstrip', false),
        normalized: flag('normalized', false), special: flag('special', true) };
    });
  }
  const controls = model.pieces.flatMap((p, id) => (p.type === 2 || p.type === 3 ? [{ id, content: p.piece, lstrip: false, rstrip: false }] : []));
  const sentinels = Array.from({ length: extraIds }, (_, k) => ({ id: model.pieces.length + k, content: `<extra_id_${extraIds - 1 - k}>`, lstrip: true, rstrip: true }));
  return [...controls, ...sentinels].map((t) => ({ ...t, single_word: false, normalized: false, special: true }));
}

export class T5Tokenizer {
  private constructor(
    private readonly tokenizer: Tokenizer,
    readonly padTokenId: number,
    readonly eosTokenId: number,
  ) {}

  /** Reads a diffusers `tokenizer/` folder: tokenizer.json, or spiece.model (+ tokenizer_config.json). */
  static fromFolder(dir: string): T5Tokenizer {
    const jsonFile = joinPath(dir, 'tokenizer.json');
    const modelFile = joinPath(dir, 'spiece.model');
    const configFile = joinPath(dir, 'tokenizer_config.json');
    const config = readJson(configFile) ?? {};
    let json: Record<string, unknown>;
    if (fileKind(jsonFile) !== undefined) {
      json = readJson(jsonFile)!;
      const model = json.model as Record<string, unknown> | undefined;
      if (model?.type !== 'Unigram') throw new InputError(`${jsonFile}: model.type`, 'not a T5 tokenizer', '"Unigram"', describe(model?.type));
    } else if (fileKind(modelFile) !== undefined) {
      const model = readSentencePieceModel(modelFile);
      const extraIds = typeof config.extra_ids === 'number' && Number.isInteger(config.extra_ids) && config.extra_ids >= 0 ? config.extra_ids : 100;
      json = tokenizerJsonFromModel(model, extraIds, addedTokens(configFile, config, model, extraIds));
    } else {
      throw new InputError(dir, 'has no T5 tokenizer', 'spiece.model (sentencepiece) or tokenizer.json', 'neither');
    }
    let tokenizer: Tokenizer;
    try {
      tokenizer = new Tokenizer(json, config);
    } catch (e) {
      throw new InputError(fileKind(jsonFile) !== undefined ? jsonFile : modelFile, `cannot be used as a tokenizer (${(e as Error).message})`);
    }
    const idOf = (token: string) => {
      const id = tokenizer.token_to_id(token);
      if (id === undefined) throw new InputError(dir, `the vocabulary has no ${token}`, 'T5\'s <pad> and </s>');
      return id;
    };
    return new T5Tokenizer(tokenizer, idOf('<pad>'), idOf('</s>'));
  }

  /** Ids with `</s>` appended, not truncated. */
  encodeUntruncated(text: string): number[] {
    // U+0085 (next line) is whitespace to the Rust tokenizers' WhitespaceSplit (char::is_whitespace)
    // but not to JavaScript's \s, which the JS WhitespaceSplit uses; the other White_Space
    // characters agree (U+FEFF, whitespace only to JS, is already a space after normalisation).
    return this.tokenizer.encode(text.replaceAll('\u0085', ' '), { add_special_tokens: true }).ids;
  }

  /**
   * As the PixArt pipelines tokenize (padding "max_length", truncation): the ids cut to
   * `maxLength` with `</s>` kept last, padded with `<pad>`, and the attention mask.
   */
  encode(text: string, maxLength: number): { ids: number[]; mask: number[] } {
    let ids = this.encodeUntruncated(text);
    if (ids.length > maxLength) ids = [...ids.slice(0, maxLength - 1), this.eosTokenId];
    const mask = ids.map(() => 1).concat(new Array<number>(maxLength - ids.length).fill(0));
    return { ids: ids.concat(new Array<number>(maxLength - ids.length).fill(this.padTokenId)), mask };
  }
}
