/**
 * The central directory of a zip file, read with positional reads (files of many GiB stay on
 * disk): what PyTorch's `torch.save` writes (stored entries, ZIP64 past 4 GiB). Entries are read
 * whole (stored, or deflated through zlib) or located for reading in place (stored only).
 */
import * as zlib from 'node:zlib';
import { InputError } from '../errors.ts';
import { openForReading, type ReadHandle } from '../io/files.ts';
import { readExactly } from './safetensors.ts';

export interface ZipEntry {
  name: string;
  /** 0 stored, 8 deflated. */
  method: number;
  compressedSize: number;
  size: number;
  /** Offset of the entry's local header. */
  headerOffset: number;
}

const EOCD = 0x06054b50;
const EOCD64 = 0x06064b50;
const EOCD64_LOCATOR = 0x07064b50;
const CENTRAL = 0x02014b50;
const LOCAL = 0x04034b50;
/** The most entries we accept: a checkpoint has one per storage. */
const MAX_ENTRIES = 1_000_000;

export class ZipFile {
  readonly entries = new Map<string, ZipEntry>();
  readonly size: number;

  private constructor(readonly path: string, private readonly handle: ReadHandle) {
    this.size = handle.size;
  }

  static open(file: string): ZipFile {
    const handle = openForReading(file);
    try {
      const zip = new ZipFile(file, handle);
      zip.readDirectory();
      return zip;
    } catch (e) {
      handle.close();
      throw e;
    }
  }

  close(): void {
    this.handle.close();
  }

  private broken(problem: string): InputError {
    return new InputError(this.path, `not a readable zip file: ${problem}`);
  }

  private read(offset: number, length: number): Buffer {
    if (offset < 0 || length < 0 || offset + length > this.size) throw this.broken(`a record at byte ${offset} runs past the end of the file`);
    const out = Buffer.alloc(length);
    readExactly(this.handle, out, offset, this.path);
    return out;
  }

  private readDirectory(): void {
    // The end-of-central-directory record sits in the last 22 + 65535 bytes.
    const tailLength = Math.min(this.size, 22 + 65535);
    const tail = this.read(this.size - tailLength, tailLength);
    let at = -1;
    for (let i = tail.length - 22; i >= 0; i--) {
      if (tail.readUInt32LE(i) === EOCD) {
        at = i;
        break;
      }
    }
    if (at < 0) throw this.broken('no end-of-central-directory record');
    let count = tail.readUInt16LE(at + 10);
    let dirSize = tail.readUInt32LE(at + 12);
    let dirOffset = tail.readUInt32LE(at + 16);
    const eocdOffset = this.size - tailLength + at;
    if ((count === 0xffff || dirSize === 0xffffffff || dirOffset === 0xffffffff) && eocdOffset >= 20) {
      const locator = this.read(eocdOffset - 20, 20);
      if (locator.readUInt32LE(0) === EOCD64_LOCATOR) {
        const record = this.read(this.safeNumber(locator.readBigUInt64LE(8)), 56);
        if (record.readUInt32LE(0) !== EOCD64) throw this.broken('ZIP64 record missing');
        count = this.safeNumber(record.readBigUInt64LE(32));
        dirSize = this.safeNumber(record.readBigUInt64LE(40));
        dirOffset = this.safeNumber(record.readBigUInt64LE(48));
      }
    }
    if (count > MAX_ENTRIES) throw this.broken(`${count} entries`);
    const dir = this.read(dirOffset, dirSize);
    let p = 0;
    for (let k = 0; k < count; k++) {
      if (p + 46 > dir.length || dir.readUInt32LE(p) !== CENTRAL) throw this.broken(`central directory entry ${k} is damaged`);
      const method = dir.readUInt16LE(p + 10);
      let compressedSize = dir.readUInt32LE(p + 20);
      let size = dir.readUInt32LE(p + 24);
      const nameLength = dir.readUInt16LE(p + 28);
      const extraLength = dir.readUInt16LE(p + 30);
      const commentLength = dir.readUInt16LE(p + 32);
      let headerOffset = dir.readUInt32LE(p + 42);
      if (p + 46 + nameLength + extraLength > dir.length) throw this.broken(`central directory entry ${k} is damaged`);
      const name = dir.toString('utf8', p + 46, p + 46 + nameLength);
      // ZIP64 extra field: the 64-bit values of whichever fields are 0xffffffff, in order.
      let e = p + 46 + nameLength;
      const extraEnd = e + extraLength;
      while (e + 4 <= extraEnd) {
        const id = dir.readUInt16LE(e);
        const length = dir.readUInt16LE(e + 2);
        if (id === 1) {
          let q = e + 4;
          const next = () => {
            if (q + 8 > e + 4 + length) throw this.broken(`ZIP64 field of ${name} is short`);
            const v = this.safeNumber(dir.readBigUInt64LE(q));
            q += 8;
            return v;
          };
          if (size === 0xffffffff) size = next();
          if (compressedSize === 0xffffffff) compressedSize = next();
          if (headerOffset === 0xffffffff) headerOffset = next();
        }
        e += 4 + length;
      }
      this.entries.set(name, { name, method, compressedSize, size, headerOffset });
      p += 46 + nameLength + extraLength + commentLength;
    }
  }

  private safeNumber(v: bigint): number {
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw this.broken('a size or offset beyond 2⁵³');
    return Number(v);
  }

  /** Where a stored entry's bytes start in the file. */
  dataOffset(entry: ZipEntry): number {
    const local = this.read(entry.headerOffset, 30);
    if (local.readUInt32LE(0) !== LOCAL) throw this.broken(`local header of ${entry.name} missing`);
    const start = entry.headerOffset + 30 + local.readUInt16LE(26) + local.readUInt16LE(28);
    if (start + entry.compressedSize > this.size) throw this.broken(`${entry.name} runs past the end of the file`);
    return start;
  }

  /** A whole entry's bytes (at most `limit` of them). */
  readEntry(entry: ZipEntry, limit: number): Buffer {
    if (entry.size > limit || entry.compressedSize > this.size) throw this.broken(`${entry.name} is ${entry.size} bytes, more than the ${limit} expected`);
    const raw = this.read(this.dataOffset(entry), entry.compressedSize);
    if (entry.method === 0) return raw;
    if (entry.method !== 8) throw this.broken(`${entry.name} uses compression method ${entry.method} (stored or deflate expected)`);
    try {
      const out = zlib.inflateRawSync(raw, { maxOutputLength: Math.max(1, entry.size) });
      if (out.length !== entry.size) throw new Error('size differs from the directory');
      return out;
    } catch (e) {
      throw this.broken(`${entry.name} does not inflate: ${(e as Error).message}`);
    }
  }

  /** `length` bytes at `offset` of a stored entry, straight from the file. */
  readStored(entry: ZipEntry, offset: number, length: number): Uint8Array {
    if (entry.method !== 0) throw this.broken(`${entry.name} is compressed; tensors must be stored`);
    if (offset < 0 || offset + length > entry.size) throw this.broken(`read past the end of ${entry.name}`);
    return this.read(this.dataOffset(entry) + offset, length);
  }
}
