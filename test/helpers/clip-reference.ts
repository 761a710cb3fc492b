/**
 * The CLIP tokenizer of a folder as @huggingface/tokenizers runs it: fed the tokenizer.json that
 * transformers' CLIPTokenizer builds from the same files (the way this project tokenized before it
 * had its own BPE, and what its goldens matched). Tests compare src/tokenizers/clip-bpe.ts with it.
 */
import { Tokenizer } from '@huggingface/tokenizers';
import { CLIP_SPLIT, GPT2_SPLIT, readClipTokenizerFolder } from '../../src/tokenizers/clip-bpe.ts';

export function referenceClipTokenizer(dir: string): (text: string) => number[] {
  const files = readClipTokenizerFolder(dir);
  const id = (content: string) => files.added.get(content)?.id ?? files.vocab.get(content)!;
  const json = {
    added_tokens: [...files.added.values()].map(({ id, spec }) => ({ id, ...spec })),
    normalizer: {
      type: 'Sequence',
      normalizers: [
        { type: 'NFC' },
        { type: 'Replace', pattern: { Regex: '\\s+' }, content: ' ' },
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
    post_processor: { type: 'RobertaProcessing', sep: [files.eos, id(files.eos)], cls: [files.bos, id(files.bos)], trim_offsets: false, add_prefix_space: false },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE', dropout: null, unk_token: files.unk, continuing_subword_prefix: '', end_of_word_suffix: '</w>', fuse_unk: false, byte_fallback: false,
      ignore_merges: false, vocab: Object.fromEntries(files.vocab), merges: files.merges,
    },
  };
  const tokenizer = new Tokenizer(json, {});
  return (text) => tokenizer.encode(text).ids;
}
