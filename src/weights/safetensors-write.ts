/**
 * Writing safetensors files (Node only): atomically, tensors aligned, optionally sharded with an
 * index as diffusers saves large models.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { InputError, describe } from '../errors.ts';
import { dtypeBits } from './safetensors.ts';
import { processGone } from '../util/files.ts';

/** Largest single write; Node refuses lengths of 2 GiB and more. */
const IO_CHUNK = 1 << 30;

export type WritableDType = 'F32' | 'F16' | 'BF16' | 'I64' | 'I32';

export interface TensorToWrite {
  dtype: WritableDType;
  shape: number[];
  /** The bytes, or a function making them when the writer gets to this tensor (one in memory at a time). */
  data: ArrayBufferView | (() => ArrayBufferView);
}

/**
 * Writes a safetensors file atomically (temp file + rename). Tensors are laid out by
 * decreasing element size after a header padded to 8 bytes, so every tensor is aligned.
 */
export function writeSafetensors(filePath: string, tensors: Record<string, TensorToWrite>,
  metadata?: Record<string, string>): void {
  const abs = path.resolve(filePath);
  const header: Record<string, unknown> = {};
  if (metadata !== undefined) {
    for (const [key, value] of Object.entries(metadata)) {
      if (typeof value !== 'string') {
        throw new InputError(`${abs}: __metadata__.${key}`, 'metadata values must be strings', 'a string',
          describe(value));
      }
    }
    header.__metadata__ = metadata;
  }
  const order = Object.keys(tensors).sort((a, b) => dtypeBits(tensors[b].dtype) - dtypeBits(tensors[a].dtype));
  let offset = 0;
  for (const name of order) {
    const where = `${abs}: ${name}`;
    if (name === '__metadata__') throw new InputError(where, 'tensor name is reserved for metadata');
    const { dtype, shape, data } = tensors[name];
    if (!['F32', 'F16', 'BF16', 'I64', 'I32'].includes(dtype)) {
      throw new InputError(`${where}.dtype`, 'unsupported dtype for writing', 'F32, F16, BF16, I64 or I32',
        describe(dtype));
    }
    if (!shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      throw new InputError(`${where}.shape`, 'invalid shape', 'non-negative integers', describe(shape));
    }
    const bytes = byteSize(shape, dtype);
    if (typeof data !== 'function') checkDataSize(where, bytes, data);
    // Using Object.defineProperty keeps a tensor called "__proto__" an ordinary key.
    Object.defineProperty(header, name, {
      value: { dtype, shape, data_offsets: [offset, offset + bytes] },
      enumerable: true, writable: true, configurable: true,
    });
    offset += bytes;
  }

  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const padded = Math.ceil(json.length / 8) * 8;
  const head = Buffer.alloc(8 + padded, 0x20);
  head.writeBigUInt64LE(BigInt(padded), 0);
  json.copy(head, 8);

  removeAbandonedTemps(abs);
  const tmp = path.join(path.dirname(abs), `.${path.basename(abs)}.${process.pid}.${Date.now()}.tmp`);
  let fd: number | null = null;
  try {
    fd = fs.openSync(tmp, 'w');
    writeAll(fd, head);
    for (const name of order) {
      const { dtype, shape, data } = tensors[name];
      const bytes = typeof data === 'function' ? data() : data;
      checkDataSize(`${abs}: ${name}`, byteSize(shape, dtype), bytes);
      writeAll(fd, new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength));
    }
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fd = null;
    fs.renameSync(tmp, abs);
  } catch (err) {
    if (fd !== null) fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    throw err;
  }
}

/**
 * Temporary files of earlier writes of `abs` whose process was killed mid-write (gigabytes for a
 * random SD U-Net): its process gone and the file untouched for ten minutes (a writer in another
 * container, whose process this one cannot see, keeps writing to it).
 */
function removeAbandonedTemps(abs: string): void {
  const prefix = `.${path.basename(abs)}.`;
  let names: string[] = [];
  try {
    names = fs.readdirSync(path.dirname(abs));
  } catch {
    return; // no folder yet: nothing abandoned in it
  }
  for (const name of names) {
    const pid = Number(name.slice(prefix.length).split('.')[0]);
    const file = path.join(path.dirname(abs), name);
    if (name.startsWith(prefix) && name.endsWith('.tmp') && Number.isSafeInteger(pid) && pid !== process.pid && processGone(pid) &&
      (fs.statSync(file, { throwIfNoEntry: false })?.mtimeMs ?? Infinity) < Date.now() - 600_000) {
      fs.rmSync(file, { force: true });
    }
  }
}

const byteSize = (shape: number[], dtype: WritableDType) => shape.reduce((n, d) => n * d, 1) * (dtypeBits(dtype) / 8);

function checkDataSize(where: string, bytes: number, data: ArrayBufferView): void {
  if (bytes !== data.byteLength) {
    throw new InputError(where, 'data size does not match shape and dtype', `${bytes} bytes`, `${data.byteLength} bytes`);
  }
}

/**
 * Writes tensors as transformers and diffusers shard them: `<base>-00001-of-0000N.safetensors`
 * files of at most `maxShardBytes` each (a larger tensor gets a file of its own), in the order
 * given, and `<base>.safetensors.index.json` mapping each tensor to its file. Returns the index path.
 */
export function writeShardedSafetensors(dir: string, base: string, tensors: Record<string, TensorToWrite>, maxShardBytes: number): string {
  const shards: string[][] = [[]];
  let shardBytes = 0;
  let total = 0;
  for (const [name, t] of Object.entries(tensors)) {
    const bytes = byteSize(t.shape, t.dtype);
    if (shardBytes > 0 && shardBytes + bytes > maxShardBytes) {
      shards.push([]);
      shardBytes = 0;
    }
    shards[shards.length - 1].push(name);
    shardBytes += bytes;
    total += bytes;
  }
  const pad = (n: number) => String(n).padStart(5, '0');
  const weightMap: Record<string, string> = {};
  shards.forEach((names, i) => {
    const file = `${base}-${pad(i + 1)}-of-${pad(shards.length)}.safetensors`;
    writeSafetensors(path.join(dir, file), Object.fromEntries(names.map((n) => [n, tensors[n]])));
    for (const n of names) weightMap[n] = file;
  });
  const index = path.join(dir, `${base}.safetensors.index.json`);
  fs.writeFileSync(index, JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2));
  return index;
}

function writeAll(fd: number, bytes: Uint8Array): void {
  let done = 0;
  while (done < bytes.length) {
    done += fs.writeSync(fd, bytes, done, Math.min(IO_CHUNK, bytes.length - done));
  }
}
