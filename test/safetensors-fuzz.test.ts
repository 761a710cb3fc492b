import { test } from 'node:test';
import assert from 'node:assert/strict';
import { InputError } from '../src/errors.ts';
import { dtypeBits, parseSafetensorsHeader, type SafetensorsHeader } from '../src/weights/safetensors.ts';
import { fuzzDraws } from './helpers/prng.ts';

const { rand, int, pick } = fuzzDraws(0x5afe7e45);

const BASE_HEADER: Record<string, unknown> = {
  __metadata__: { format: 'pt' },
  'down.0.weight': { dtype: 'F32', shape: [4, 2], data_offsets: [0, 32] },
  'down.0.bias': { dtype: 'F16', shape: [4], data_offsets: [32, 40] },
  'norm.scale': { dtype: 'BF16', shape: [3], data_offsets: [40, 46] },
  'ids': { dtype: 'I64', shape: [1], data_offsets: [48, 56] },
  'empty': { dtype: 'U8', shape: [0], data_offsets: [56, 56] },
};
const BASE_DATA = 56;

function image(headerBytes: Uint8Array, dataBytes: number): Uint8Array {
  const out = new Uint8Array(8 + headerBytes.length + dataBytes);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerBytes.length), true);
  out.set(headerBytes, 8);
  return out;
}

const WEIRD_VALUES: unknown[] = [
  -1, -0.5, 0.5, 1e300, -1e300, 2 ** 53, 2 ** 53 + 2, 2 ** 63, Number.MAX_SAFE_INTEGER, 4294967296, 0, 1, 7, 1000,
  '8', '', null, true, [], {}, [1, 2, 3], [[1]], { a: 1 }, 'F32', 'BF16', 'f32', 'F8_E4M3', 'F4', 'X',
];
const DTYPES = ['F64', 'F32', 'F16', 'BF16', 'I64', 'I32', 'I16', 'I8', 'U8', 'BOOL', 'F4', 'F6_E2M3', 'C64',
  'F8_E5M2', 'U64', 'int', 'float32', 'F 32'];

function randomValue(depth = 0): unknown {
  if (depth < 2 && rand() < 0.2) return Array.from({ length: int(4) }, () => randomValue(depth + 1));
  return pick(WEIRD_VALUES);
}

/** Structural edits on the parsed header: the kinds of lies a corrupt or hostile file tells. */
function editJson(h: Record<string, unknown>): void {
  const names = Object.keys(h).filter((k) => k !== '__metadata__');
  const name = names.length > 0 ? pick(names) : 'new';
  const entry = (typeof h[name] === 'object' && h[name] !== null ? h[name] : {}) as Record<string, unknown>;
  h[name] = entry;
  switch (int(14)) {
    case 0: entry.dtype = pick(DTYPES); break;
    case 1: entry.shape = Array.from({ length: int(5) }, () => (rand() < 0.7 ? int(10) : randomValue())); break;
    case 2: entry.shape = [2 ** int(60), 2 ** int(60), int(3)]; break;
    case 3: {
      const begin = int(BASE_DATA + 20) - 5;
      entry.data_offsets = [begin, begin + int(40) - 5];
      break;
    }
    case 4: entry.data_offsets = [randomValue(), randomValue()]; break;
    case 5: entry.data_offsets = rand() < 0.5 ? [0] : [0, 8, 16]; break;
    case 6: delete entry[pick(['dtype', 'shape', 'data_offsets'])]; break;
    case 7: h[name] = randomValue(); break;
    case 8: h.__metadata__ = rand() < 0.5 ? { k: randomValue() } : randomValue(); break;
    case 9: {
      // Copy another tensor's offsets: overlap unless one of them is empty.
      const other = h[pick(names)] as Record<string, unknown> | undefined;
      if (other && typeof other === 'object') entry.data_offsets = other.data_offsets;
      break;
    }
    case 10: h[`t${int(1000)}`] = { dtype: pick(DTYPES), shape: [int(9)], data_offsets: [int(60), int(70)] }; break;
    case 11: delete h[name]; break;
    case 12: entry[pick(['dtype', 'shape', 'data_offsets', 'extra'])] = randomValue(); break;
    default: {
      // Shape consistent with offsets, so the result is often valid and invariants get checked.
      const dtype = pick(['F32', 'F16', 'U8', 'I64'] as const);
      const size = dtypeBits(dtype) / 8;
      const count = int(4);
      const begin = int(BASE_DATA / size) * size;
      Object.assign(entry, { dtype, shape: [count], data_offsets: [begin, begin + count * size] });
    }
  }
}

function nested(depth: number): string {
  const open = rand() < 0.5 ? '[' : '{"a":';
  return `{"x":${open.repeat(depth)}1${(open === '[' ? ']' : '}').repeat(depth)}}`;
}

interface Case { bytes: Uint8Array; fileSize: number }

function mutate(): Case {
  let dataBytes = BASE_DATA + (rand() < 0.2 ? int(16) - 8 : 0);
  let headerBytes: Uint8Array;
  const kind = int(10);
  if (kind < 4) {
    const h = structuredClone(BASE_HEADER);
    const edits = 1 + int(3);
    for (let i = 0; i < edits; i++) editJson(h);
    headerBytes = Buffer.from(JSON.stringify(h) + ' '.repeat(int(8)));
  } else if (kind === 4) {
    headerBytes = Buffer.from(rand() < 0.5 ? nested(1 + int(100_000)) : pick(['[]', '1', '"x"', 'null', '{}', '']));
  } else {
    headerBytes = Buffer.from(JSON.stringify(BASE_HEADER));
  }
  let bytes = image(headerBytes, Math.max(dataBytes, 0));
  let fileSize = bytes.length;

  const byteEdits = kind >= 5 ? 1 + int(4) : int(2);
  for (let i = 0; i < byteEdits; i++) {
    switch (int(6)) {
      case 0: bytes[int(bytes.length)] ^= 1 << int(8); break; // bit flip anywhere
      case 1: bytes[8 + int(Math.max(1, headerBytes.length))] = int(256); break; // random header byte
      case 2: // JSON-significant or UTF-8-breaking byte
        bytes[8 + int(Math.max(1, headerBytes.length))] = pick([0x22, 0x7b, 0x7d, 0x5b, 0x2c, 0xff, 0xc3, 0x00]);
        break;
      case 3: {
        // Lying header length field.
        const v = pick([2n ** 64n - 1n, 2n ** 63n, 2n ** 53n + 1n, 100_000_001n, BigInt(fileSize - 7), BigInt(fileSize),
          BigInt(int(fileSize)), 0n, BigInt(headerBytes.length + 1), BigInt(headerBytes.length - 1)]);
        new DataView(bytes.buffer, bytes.byteOffset).setBigUint64(0, v < 0n ? 0n : v, true);
        break;
      }
      case 4: {
        // Truncated file: both the bytes and the size shrink.
        const cut = int(bytes.length + 1);
        bytes = bytes.subarray(0, cut);
        fileSize = cut;
        break;
      }
      default: fileSize = Math.max(0, fileSize + int(20) - 10); // size disagreeing with the bytes
    }
  }
  return { bytes, fileSize };
}

function checkInvariants(h: SafetensorsHeader, c: Case): void {
  assert.ok(h.dataStart >= 8 && h.dataStart <= c.fileSize);
  for (const v of Object.values(h.metadata)) assert.equal(typeof v, 'string');
  const spans: Array<[number, number]> = [];
  for (const [name, t] of h.tensors) {
    assert.equal(t.name, name);
    assert.equal(t.file, 'fuzz.safetensors');
    assert.ok(t.shape.every((d) => Number.isSafeInteger(d) && d >= 0));
    const elements = t.shape.reduce((a, d) => a * d, 1);
    assert.equal(elements * dtypeBits(t.dtype), t.byteLength * 8);
    assert.ok(t.offset >= h.dataStart && t.offset + t.byteLength <= c.fileSize, `${name} in range`);
    if (t.byteLength > 0) spans.push([t.offset, t.offset + t.byteLength]);
  }
  spans.sort((a, b) => a[0] - b[0]);
  for (let i = 1; i < spans.length; i++) assert.ok(spans[i][0] >= spans[i - 1][1], 'no overlap');
}

test('5000 mutated headers either parse with sound invariants or throw InputError', () => {
  const base = Buffer.from(JSON.stringify(BASE_HEADER));
  const baseImage = image(base, BASE_DATA);
  checkInvariants(parseSafetensorsHeader(baseImage, baseImage.length, 'fuzz.safetensors'),
    { bytes: baseImage, fileSize: baseImage.length });

  let parsed = 0;
  let rejected = 0;
  for (let i = 0; i < 5000; i++) {
    const c = mutate();
    let result: SafetensorsHeader;
    try {
      result = parseSafetensorsHeader(c.bytes, c.fileSize, 'fuzz.safetensors');
    } catch (err) {
      if (!(err instanceof InputError)) {
        assert.fail(`case ${i}: ${(err as Error).name}: ${(err as Error).message}`);
      }
      assert.ok(err.message.startsWith('fuzz.safetensors'), err.message);
      rejected++;
      continue;
    }
    checkInvariants(result, c);
    parsed++;
  }
  // Both outcomes must be exercised, or the mutations are too tame or too wild.
  assert.ok(parsed > 200, `parsed ${parsed}`);
  assert.ok(rejected > 2000, `rejected ${rejected}`);
});
