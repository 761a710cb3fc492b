import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { SafetensorsFile, parseSafetensorsHeader } from '../src/weights/safetensors.ts';
import { bfloat16ToFloat32, float16ToFloat32, float32ToFloat16 } from '../src/graph/half.ts';
import { writeSafetensors, writeShardedSafetensors } from '../src/weights/safetensors-write.ts';
import { openComponentWeights } from '../src/weights/diffusers-folder.ts';
import { rawSafetensors, tempDir, throwsInputError } from './helpers/files.ts';

const f32 = (...v: number[]) => new Float32Array(v);
const bits32 = (x: number) => new Uint32Array(f32(x).buffer)[0];
const halfOf = (x: number) => float32ToFloat16(f32(x))[0];
const fromHalf = (h: number) => float16ToFloat32(new Uint16Array([h]))[0];

test('write then read round-trips every writable dtype, metadata and edge shapes', (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'w.safetensors');
  const weight = f32(1, -2.5, 3.25, 0, -0, 1e-3);
  const half = float32ToFloat16(f32(0.5, -1, 65504, 2 ** -24));
  const bf = new Uint16Array([0x3f80, 0xc000, 0x7f80]);
  const ids = new BigInt64Array([1n, -2n, 2n ** 40n]);
  const counts = new Int32Array([7, -8]);
  writeSafetensors(file, {
    'w.weight': { dtype: 'F32', shape: [2, 3], data: weight },
    'h': { dtype: 'F16', shape: [4], data: half },
    'b': { dtype: 'BF16', shape: [3, 1], data: bf },
    'ids': { dtype: 'I64', shape: [3], data: ids },
    'counts': { dtype: 'I32', shape: [2], data: counts },
    'empty': { dtype: 'F32', shape: [0, 5], data: new Float32Array(0) },
    'scalar': { dtype: 'F32', shape: [], data: f32(42) },
    ['__proto__']: { dtype: 'F16', shape: [1], data: new Uint16Array([0x3c00]) },
  }, { format: 'pt', note: 'üñí' });

  const bytes = fs.readFileSync(file);
  const headerLen = Number(bytes.readBigUInt64LE(0));
  assert.equal(headerLen % 8, 0, 'header padded to a multiple of 8');
  assert.match(bytes.subarray(8, 8 + headerLen).toString('utf8'), /} *$/, 'padding is spaces');
  assert.deepEqual(fs.readdirSync(dir), ['w.safetensors'], 'no temp file left behind');

  const st = SafetensorsFile.open(file);
  t.after(() => st.close());
  assert.deepEqual(st.metadata, { format: 'pt', note: 'üñí' });
  assert.equal(st.tensors.size, 8);
  for (const info of st.tensors.values()) {
    const elem = { F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4 }[info.dtype as 'F32'];
    assert.equal(info.offset % elem, 0, `${info.name} aligned`);
    assert.equal(info.file, file);
  }
  assert.deepEqual(st.info('w.weight').shape, [2, 3]);
  assert.deepEqual(st.readFloat32('w.weight'), weight);
  assert.deepEqual([...st.readFloat32('h')], [0.5, -1, 65504, 2 ** -24]);
  assert.deepEqual([...st.readFloat32('b')], [1, -2, Infinity]);
  assert.deepEqual(new BigInt64Array(st.readRaw('ids').buffer), ids);
  assert.deepEqual(new Int32Array(st.readRaw('counts').buffer), counts);
  assert.equal(st.readRaw('empty').length, 0);
  assert.deepEqual(st.info('empty').shape, [0, 5]);
  assert.deepEqual(st.info('scalar').shape, []);
  assert.deepEqual([...st.readFloat32('scalar')], [42]);
  assert.deepEqual([...st.readFloat32('__proto__')], [1]);
  assert.equal(Object.getPrototypeOf(st.metadata), Object.prototype);
});

test('readFloat32 converts F64 and refuses integer tensors', (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'f64.safetensors');
  const header = {
    d: { dtype: 'F64', shape: [2], data_offsets: [0, 16] },
    n: { dtype: 'U8', shape: [3], data_offsets: [16, 19] },
  };
  const img = rawSafetensors(header, 19);
  const dataStart = img.length - 19;
  new DataView(img.buffer).setFloat64(dataStart, 0.1, true);
  new DataView(img.buffer).setFloat64(dataStart + 8, -1e300, true);
  fs.writeFileSync(file, img);
  const st = SafetensorsFile.open(file);
  t.after(() => st.close());
  assert.deepEqual([...st.readFloat32('d')], [Math.fround(0.1), -Infinity]);
  throwsInputError(() => st.readFloat32('n'), file, 'n', 'not floating point', 'U8');
  throwsInputError(() => st.readRaw('nope'), file, 'missing tensor "nope"');
});

test('tensors are read positionally, after open, and beyond 2 GiB', (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'big.safetensors');
  const far = 3 * 2 ** 30; // past the 2 GiB limit of a single Buffer read
  const header = {
    head: { dtype: 'F32', shape: [2], data_offsets: [0, 8] },
    tail: { dtype: 'F32', shape: [2], data_offsets: [far, far + 8] },
  };
  const img = rawSafetensors(header, 8);
  const dataStart = img.length - 8;
  img.set(new Uint8Array(f32(1, 2).buffer), dataStart);
  fs.writeFileSync(file, img);
  // Sparse tail: no disk space is used for the gap.
  const fd = fs.openSync(file, 'r+');
  fs.ftruncateSync(fd, dataStart + far + 8);
  fs.writeSync(fd, new Uint8Array(f32(3, 4).buffer), 0, 8, dataStart + far);
  fs.closeSync(fd);

  const st = SafetensorsFile.open(file);
  t.after(() => st.close());
  assert.equal(st.info('tail').offset, dataStart + far);
  assert.deepEqual([...st.readFloat32('tail')], [3, 4]);
  // Data changed on disk after open is what a later read sees: nothing was cached at open.
  const fd2 = fs.openSync(file, 'r+');
  fs.writeSync(fd2, new Uint8Array(f32(5, 6).buffer), 0, 8, dataStart);
  fs.closeSync(fd2);
  assert.deepEqual([...st.readFloat32('head')], [5, 6]);
  assert.deepEqual([...st.readRaw('head')], [...new Uint8Array(f32(5, 6).buffer)]);
});

test('a read from a file truncated after open is an InputError', (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'cut.safetensors');
  writeSafetensors(file, { a: { dtype: 'F32', shape: [4], data: f32(1, 2, 3, 4) } });
  const st = SafetensorsFile.open(file);
  t.after(() => st.close());
  fs.truncateSync(file, fs.statSync(file).size - 4);
  throwsInputError(() => st.readFloat32('a'), file, 'ended early');
});

test('a write clears temporary files that killed writes of the same file left, not those of live or recent ones', (t) => {
  const dir = tempDir(t);
  const dead = Number(spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' }).stdout);
  const abandoned = `.w.safetensors.${dead}.1.tmp`;
  const live = `.w.safetensors.${process.ppid}.1.tmp`;
  const recent = `.w.safetensors.${dead}.2.tmp`;
  for (const name of [abandoned, live, recent, '.other.safetensors.1.1.tmp']) fs.writeFileSync(path.join(dir, name), 'x');
  const hourAgo = new Date(Date.now() - 3_600_000);
  for (const name of [abandoned, live, '.other.safetensors.1.1.tmp']) fs.utimesSync(path.join(dir, name), hourAgo, hourAgo);
  writeSafetensors(path.join(dir, 'w.safetensors'), { a: { dtype: 'F32', shape: [1], data: f32(1) } });
  // Written to within ten minutes: a writer this process cannot see (another container's) may own it.
  assert.deepEqual(fs.readdirSync(dir).sort(), [live, recent, '.other.safetensors.1.1.tmp', 'w.safetensors'].sort());
});

test('float16 decoding of representative values', () => {
  assert.equal(fromHalf(0x3c00), 1);
  assert.equal(fromHalf(0xc000), -2);
  assert.equal(fromHalf(0x7bff), 65504);
  assert.equal(fromHalf(0x0400), 2 ** -14, 'smallest normal');
  assert.equal(fromHalf(0x0001), 2 ** -24, 'smallest subnormal');
  assert.equal(fromHalf(0x03ff), 1023 * 2 ** -24, 'largest subnormal');
  assert.equal(fromHalf(0x8001), -(2 ** -24));
  assert.ok(Object.is(fromHalf(0x8000), -0));
  assert.equal(fromHalf(0x7c00), Infinity);
  assert.equal(fromHalf(0xfc00), -Infinity);
  assert.ok(Number.isNaN(fromHalf(0x7e00)));
  assert.ok(Number.isNaN(fromHalf(0x7c01)), 'signalling NaN stays NaN');
});

test('float16 exhaustive: every half decodes and encodes back to itself', () => {
  const all = new Uint16Array(65536).map((_, i) => i);
  const back = float32ToFloat16(float16ToFloat32(all));
  for (let h = 0; h < 65536; h++) {
    const isNaN = (h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0;
    if (isNaN) {
      assert.ok((back[h] & 0x7c00) === 0x7c00 && (back[h] & 0x3ff) !== 0, `NaN ${h} stays NaN`);
      assert.equal(back[h] & 0x8000, h & 0x8000);
    } else if (back[h] !== h) {
      assert.fail(`half 0x${h.toString(16)} came back as 0x${back[h].toString(16)}`);
    }
  }
});

test('float32 to float16 rounds to nearest even, including subnormals and overflow', () => {
  assert.equal(halfOf(1 + 2 ** -11), 0x3c00, 'tie rounds down to even');
  assert.equal(halfOf(1 + 3 * 2 ** -11), 0x3c02, 'tie rounds up to even');
  assert.equal(halfOf(1 + 2 ** -11 + 2 ** -20), 0x3c01, 'above tie rounds up');
  assert.equal(halfOf(65504), 0x7bff);
  assert.equal(halfOf(65519.99), 0x7bff, 'just below the overflow tie');
  assert.equal(halfOf(65520), 0x7c00, 'overflow tie goes to inf');
  assert.equal(halfOf(1e10), 0x7c00);
  assert.equal(halfOf(-1e10), 0xfc00);
  assert.equal(halfOf(2 ** -24), 0x0001);
  assert.equal(halfOf(2 ** -25), 0x0000, 'half of the smallest subnormal ties to zero');
  assert.equal(halfOf(2 ** -25 * 1.5), 0x0001);
  assert.equal(halfOf(3 * 2 ** -25), 0x0002, 'subnormal tie to even');
  assert.equal(halfOf(2 ** -14 - 2 ** -25), 0x0400, 'rounds up into the normal range');
  assert.equal(halfOf(1e-30), 0x0000);
  assert.equal(halfOf(-1e-30), 0x8000);
  assert.equal(halfOf(1e-45), 0x0000, 'float32 subnormal');
  assert.equal(halfOf(-0), 0x8000);
  assert.equal(halfOf(Infinity), 0x7c00);
  assert.equal(halfOf(-Infinity), 0xfc00);
  const nan = halfOf(NaN);
  assert.ok((nan & 0x7c00) === 0x7c00 && (nan & 0x3ff) !== 0);
  // A NaN whose payload sits only in the low bits must not become inf.
  const lowNaN = float32ToFloat16(new Float32Array(new Uint32Array([0x7f800001]).buffer))[0];
  assert.ok((lowNaN & 0x3ff) !== 0);
});

test('float32 to float16 picks the nearest half for random float32 values', () => {
  let seed = 12345;
  const next = () => (seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0);
  const raw = new Uint32Array(20000);
  for (let i = 0; i < raw.length; i++) {
    // Bias exponents toward the half range so rounding cases are common.
    raw[i] = (next() & 0x807fffff) | ((100 + (next() % 45)) << 23);
  }
  const values = new Float32Array(raw.buffer);
  const halves = float32ToFloat16(values);
  for (let i = 0; i < values.length; i++) {
    const x = values[i];
    const h = halves[i];
    const mag = h & 0x7fff;
    if (mag === 0x7c00) {
      assert.ok(Math.abs(x) >= 65520, `x=${x} overflowed to inf`);
      continue;
    }
    const err = Math.abs(fromHalf(h) - x);
    for (const n of [mag - 1, mag + 1]) {
      if (n < 0 || n >= 0x7c00) continue; // inf is never "nearer"
      const other = Math.abs(fromHalf(n | (h & 0x8000)) - x);
      assert.ok(err < other || (err === other && (mag & 1) === 0), `x=${x} -> 0x${h.toString(16)}`);
    }
  }
});

test('bfloat16 decoding', () => {
  const out = bfloat16ToFloat32(new Uint16Array([0x3f80, 0xbf80, 0x4049, 0x0001, 0x8000, 0x7f80, 0xff80, 0x7fc0]));
  assert.equal(out[0], 1);
  assert.equal(out[1], -1);
  assert.equal(bits32(out[2]), 0x40490000);
  assert.equal(out[3], 2 ** -133, 'subnormal');
  assert.ok(Object.is(out[4], -0));
  assert.equal(out[5], Infinity);
  assert.equal(out[6], -Infinity);
  assert.ok(Number.isNaN(out[7]));
});

test('open errors name the path', (t) => {
  const dir = tempDir(t);
  const missing = path.join(dir, 'missing.safetensors');
  throwsInputError(() => SafetensorsFile.open(missing), missing, 'not found');
  throwsInputError(() => SafetensorsFile.open(dir), dir, 'not a regular file');
  const tiny = path.join(dir, 'tiny.safetensors');
  fs.writeFileSync(tiny, new Uint8Array(5));
  throwsInputError(() => SafetensorsFile.open(tiny), tiny, 'too short', '5 bytes');
  const huge = path.join(dir, 'huge.safetensors');
  const img = rawSafetensors({}, 0);
  new DataView(img.buffer).setBigUint64(0, 2n ** 64n - 1n, true);
  fs.writeFileSync(huge, img);
  throwsInputError(() => SafetensorsFile.open(huge), huge, 'header length too large', '18446744073709551615');
});

test('header validation errors name the file, tensor and field', () => {
  const f = '/models/x.safetensors';
  const parse = (header: unknown, dataBytes = 64) => {
    const img = rawSafetensors(header, dataBytes);
    return () => parseSafetensorsHeader(img, img.length, f);
  };
  const ok = { dtype: 'F32', shape: [2], data_offsets: [0, 8] };
  assert.equal(parse({ a: ok })().tensors.get('a')!.byteLength, 8);

  throwsInputError(parse({ a: { ...ok, dtype: 'F31' } }), `${f}: a.dtype`, 'unknown dtype', '"F31"');
  throwsInputError(parse({ a: { ...ok, shape: [-2] } }), `${f}: a.shape`, 'non-negative integers', '[-2]');
  throwsInputError(parse({ a: { ...ok, shape: [1.5] } }), `${f}: a.shape`);
  throwsInputError(parse({ a: { ...ok, shape: '2' } }), `${f}: a.shape`);
  throwsInputError(parse({ a: { ...ok, data_offsets: [8, 0] } }), `${f}: a.data_offsets`, 'begin is after end');
  throwsInputError(parse({ a: { ...ok, data_offsets: [0] } }), `${f}: a.data_offsets`, '[begin, end]');
  throwsInputError(parse({ a: { ...ok, data_offsets: [-8, 0] } }), `${f}: a.data_offsets`);
  throwsInputError(parse({ a: { ...ok, data_offsets: [0, 72] } }), `${f}: a.data_offsets`, 'past the end',
    'end <= 64', 'found 72');
  throwsInputError(parse({ a: { ...ok, shape: [3] } }), `${f}: a`, 'do not match', '12 bytes', 'found 8 bytes');
  throwsInputError(parse({ a: { ...ok, shape: [2 ** 40, 2 ** 40] } }), `${f}: a.shape`, 'too many elements');
  throwsInputError(parse({ a: { dtype: 'F32', shape: [2] } }), `${f}: a.data_offsets`);
  throwsInputError(parse({ a: [1, 2] }), `${f}: a`, 'tensor entry must be an object');
  throwsInputError(parse({ a: ok, b: { ...ok, data_offsets: [4, 12] } }), `${f}: b.data_offsets`,
    'overlaps tensor "a"');
  throwsInputError(parse({ __metadata__: { k: 1 } }), `${f}: __metadata__.k`, 'must be strings', 'found 1');
  throwsInputError(parse({ __metadata__: ['x'] }), `${f}: __metadata__`, 'object of strings');
  throwsInputError(parse([ok]), f, 'not a JSON object');
  throwsInputError(parse('{"a": '), f, 'not valid JSON');
  throwsInputError(parse('['.repeat(200000)), f, 'not valid JSON');

  const bad = rawSafetensors('{"a":"\u00e9"}', 0);
  bad[bad.length - 3] = 0xff; // break the UTF-8 sequence
  throwsInputError(() => parseSafetensorsHeader(bad, bad.length, f), f, 'not valid UTF-8');

  const img = rawSafetensors({ a: ok }, 8);
  throwsInputError(() => parseSafetensorsHeader(img, img.length - 20, f), f, 'exceeds the file size');
  throwsInputError(() => parseSafetensorsHeader(img.subarray(0, 12), img.length, f), f, 'header is truncated');

  // Zero-size tensors may share offsets; sub-byte dtypes pack elements.
  const fine = parse({
    a: ok,
    e: { dtype: 'F16', shape: [0], data_offsets: [4, 4] },
    p: { dtype: 'F4', shape: [2, 3], data_offsets: [8, 11] },
  })();
  assert.equal(fine.tensors.get('p')!.byteLength, 3);
  throwsInputError(parse({ p: { dtype: 'F4', shape: [3], data_offsets: [0, 2] } }), `${f}: p`, 'do not match');
});

test('writeSafetensors rejects bad input and leaves nothing behind', (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'bad.safetensors');
  throwsInputError(() => writeSafetensors(file, { a: { dtype: 'F32', shape: [3], data: f32(1, 2) } }),
    `${file}: a`, '12 bytes', 'found 8 bytes');
  throwsInputError(() => writeSafetensors(file, { a: { dtype: 'F32', shape: [-1], data: f32() } }), `${file}: a.shape`);
  throwsInputError(() => writeSafetensors(file, { __metadata__: { dtype: 'F32', shape: [0], data: f32() } }),
    'reserved');
  assert.deepEqual(fs.readdirSync(dir), []);

  // Overwriting replaces the old file whole.
  writeSafetensors(file, { a: { dtype: 'F32', shape: [1], data: f32(1) } });
  writeSafetensors(file, { b: { dtype: 'I32', shape: [2], data: new Int32Array([1, 2]) } });
  const st = SafetensorsFile.open(file);
  t.after(() => st.close());
  assert.deepEqual([...st.tensors.keys()], ['b']);
  assert.deepEqual(fs.readdirSync(dir), ['bad.safetensors']);
});

test('tensors made lazily are written one at a time and checked like the others; a bad one leaves nothing behind', (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'lazy.safetensors');
  const made: string[] = [];
  writeSafetensors(file, {
    a: { dtype: 'F32', shape: [2], data: () => (made.push('a'), f32(1, 2)) },
    b: { dtype: 'F16', shape: [1], data: () => (made.push('b'), float32ToFloat16(f32(3))) },
  });
  assert.deepEqual(made, ['a', 'b']);
  const st = SafetensorsFile.open(file);
  assert.deepEqual([...st.readFloat32('a')], [1, 2]);
  assert.deepEqual([...st.readFloat32('b')], [3]);
  st.close();
  const bad = path.join(dir, 'bad.safetensors');
  throwsInputError(() => writeSafetensors(bad, { a: { dtype: 'F32', shape: [3], data: () => f32(1, 2) } }), `${bad}: a`, '12 bytes', 'found 8 bytes');
  assert.deepEqual(fs.readdirSync(dir), ['lazy.safetensors']);
});

test('sharded writing: files of at most the limit (a bigger tensor alone), an index that opens as one weight set', (t) => {
  const dir = tempDir(t);
  const tensors = {
    'x.weight': { dtype: 'F32' as const, shape: [4], data: f32(1, 2, 3, 4) }, // 16 bytes
    'y.weight': { dtype: 'F32' as const, shape: [2], data: f32(5, 6) }, // 8: fits beside x under 24
    'big.weight': { dtype: 'F32' as const, shape: [10], data: f32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9) }, // 40: over the limit, alone
    'z.bias': { dtype: 'F16' as const, shape: [1], data: float32ToFloat16(f32(7)) },
  };
  const index = writeShardedSafetensors(dir, 'model', tensors, 24);
  assert.equal(path.basename(index), 'model.safetensors.index.json');
  assert.deepEqual(fs.readdirSync(dir).sort(), [
    'model-00001-of-00003.safetensors', 'model-00002-of-00003.safetensors', 'model-00003-of-00003.safetensors', 'model.safetensors.index.json']);
  const json = JSON.parse(fs.readFileSync(index, 'utf8'));
  assert.equal(json.metadata.total_size, 16 + 8 + 40 + 2);
  assert.deepEqual(json.weight_map, {
    'x.weight': 'model-00001-of-00003.safetensors', 'y.weight': 'model-00001-of-00003.safetensors',
    'big.weight': 'model-00002-of-00003.safetensors', 'z.bias': 'model-00003-of-00003.safetensors',
  });
  const weights = openComponentWeights(dir);
  t.after(() => weights.close());
  assert.deepEqual([...weights.readFloat32('big.weight')], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  assert.deepEqual([...weights.readFloat32('z.bias')], [7]);
  assert.equal(weights.float32Bytes(), (4 + 2 + 10 + 1) * 4);
});
