/**
 * Reading the safetensors format (writing: safetensors-write.ts): an 8-byte little-endian header length N,
 * N bytes of JSON describing each tensor (dtype, shape, data_offsets relative to the
 * end of the header), then the raw little-endian tensor bytes.
 *
 * Files may exceed 2 GiB, so only the header is read at open time and every tensor is
 * fetched with positional reads.
 */
import { InputError } from '../errors.ts';
import { openForReading, resolvePath, type ReadHandle } from '../io/files.ts';
import { describe } from '../errors.ts';
import { bfloat16ToFloat32, float16ToFloat32 } from '../graph/half.ts';

export type DType =
  | 'F64' | 'F32' | 'F16' | 'BF16'
  | 'I64' | 'I32' | 'I16' | 'I8'
  | 'U64' | 'U32' | 'U16' | 'U8'
  | 'BOOL' | 'C64'
  | 'F8_E4M3' | 'F8_E5M2' | 'F8_E8M0'
  | 'F6_E2M3' | 'F6_E3M2' | 'F4';

/** Bits per element; the sub-byte types (F4, F6_*) are packed, as in the reference implementation. */
const DTYPE_BITS: Readonly<Record<DType, number>> = {
  F64: 64, F32: 32, F16: 16, BF16: 16,
  I64: 64, I32: 32, I16: 16, I8: 8,
  U64: 64, U32: 32, U16: 16, U8: 8,
  BOOL: 8, C64: 64,
  F8_E4M3: 8, F8_E5M2: 8, F8_E8M0: 8,
  F6_E2M3: 6, F6_E3M2: 6, F4: 4,
};

export function isDType(value: unknown): value is DType {
  return typeof value === 'string' && Object.prototype.hasOwnProperty.call(DTYPE_BITS, value);
}

export function dtypeBits(dtype: DType): number {
  return DTYPE_BITS[dtype];
}

export interface TensorInfo {
  name: string;
  dtype: DType;
  shape: number[];
  /** Absolute path of the file holding the tensor. */
  file: string;
  /** Absolute byte offset of the tensor's data in the file. */
  offset: number;
  byteLength: number;
}

export interface SafetensorsHeader {
  tensors: Map<string, TensorInfo>;
  metadata: Record<string, string>;
  /** Byte offset in the file where tensor data begins (8 + header length). */
  dataStart: number;
}

/** Same limit as the reference implementation; protects against absurd allocations. */
export const MAX_HEADER_BYTES = 100_000_000;

const utf8 = new TextDecoder('utf-8', { fatal: true });

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Header length from the first 8 bytes, as a bigint because the field is a u64. */
function headerLengthField(bytes: Uint8Array): bigint {
  return new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true);
}

/**
 * Parses and validates a safetensors header. `bytes` holds at least the start of the file
 * (8-byte length + JSON header); `fileSize` is the whole file's size; `where` names the file
 * in errors and becomes each tensor's `file`.
 */
export function parseSafetensorsHeader(bytes: Uint8Array, fileSize: number, where: string): SafetensorsHeader {
  if (fileSize < 8 || bytes.length < 8) {
    throw new InputError(where, 'not a safetensors file: too short for the 8-byte header length',
      'at least 8 bytes', `${Math.min(fileSize, bytes.length)} bytes`);
  }
  const lengthField = headerLengthField(bytes);
  if (lengthField > BigInt(MAX_HEADER_BYTES)) {
    throw new InputError(where, 'header length too large (corrupt or not a safetensors file)',
      `at most ${MAX_HEADER_BYTES} bytes`, `${lengthField} bytes`);
  }
  const headerLength = Number(lengthField);
  if (headerLength > fileSize - 8) {
    throw new InputError(where, 'header length exceeds the file size (truncated file?)',
      `at most ${fileSize - 8} bytes`, `${headerLength} bytes`);
  }
  if (bytes.length < 8 + headerLength) {
    throw new InputError(where, 'header is truncated', `${headerLength} header bytes`, `${bytes.length - 8} bytes`);
  }
  const dataStart = 8 + headerLength;
  const dataSize = fileSize - dataStart;

  let text: string;
  try {
    text = utf8.decode(bytes.subarray(8, dataStart));
  } catch {
    throw new InputError(where, 'header is not valid UTF-8');
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    // RangeError (nesting too deep) lands here too.
    throw new InputError(where, `header is not valid JSON (${(err as Error).message})`);
  }
  if (!isPlainObject(json)) {
    throw new InputError(where, 'header is not a JSON object', 'an object', describe(json));
  }

  let metadata: Record<string, string> = {};
  const tensors = new Map<string, TensorInfo>();
  for (const [name, entry] of Object.entries(json)) {
    if (name === '__metadata__') {
      metadata = parseMetadata(entry, `${where}: __metadata__`);
      continue;
    }
    tensors.set(name, parseTensorEntry(name, entry, where, dataStart, dataSize));
  }
  checkNoOverlap(tensors, where, dataStart);
  return { tensors, metadata, dataStart };
}

function parseMetadata(entry: unknown, where: string): Record<string, string> {
  if (!isPlainObject(entry)) {
    throw new InputError(where, 'metadata must be an object of strings', 'an object', describe(entry));
  }
  for (const [key, value] of Object.entries(entry)) {
    if (typeof value !== 'string') {
      throw new InputError(`${where}.${key}`, 'metadata values must be strings', 'a string', describe(value));
    }
  }
  // fromEntries defines own properties, so a "__proto__" key stays data, not a prototype.
  return Object.fromEntries(Object.entries(entry)) as Record<string, string>;
}

function parseTensorEntry(name: string, entry: unknown, file: string, dataStart: number, dataSize: number): TensorInfo {
  const where = `${file}: ${name}`;
  if (!isPlainObject(entry)) {
    throw new InputError(where, 'tensor entry must be an object with dtype, shape and data_offsets',
      'an object', describe(entry));
  }
  const { dtype, shape, data_offsets: offsets } = entry;
  if (!isDType(dtype)) {
    throw new InputError(`${where}.dtype`, 'unknown dtype', `one of ${Object.keys(DTYPE_BITS).join(', ')}`,
      describe(dtype));
  }
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new InputError(`${where}.shape`, 'invalid shape', 'an array of non-negative integers', describe(shape));
  }
  if (!Array.isArray(offsets) || offsets.length !== 2 ||
      !offsets.every((o) => Number.isSafeInteger(o) && o >= 0)) {
    throw new InputError(`${where}.data_offsets`, 'invalid data_offsets',
      '[begin, end] non-negative integers', describe(offsets));
  }
  const [begin, end] = offsets as [number, number];
  if (begin > end) {
    throw new InputError(`${where}.data_offsets`, 'begin is after end', 'begin <= end', describe(offsets));
  }
  if (end > dataSize) {
    throw new InputError(`${where}.data_offsets`, 'tensor data extends past the end of the file (truncated file?)',
      `end <= ${dataSize}`, `${end}`);
  }
  let elements = 1;
  for (const d of shape as number[]) {
    elements *= d;
    if (elements > Number.MAX_SAFE_INTEGER) {
      throw new InputError(`${where}.shape`, 'shape has too many elements', 'a size that fits the file',
        describe(shape));
    }
  }
  const bits = elements * DTYPE_BITS[dtype];
  if (bits > Number.MAX_SAFE_INTEGER || bits % 8 !== 0 || bits / 8 !== end - begin) {
    throw new InputError(where, 'shape and dtype do not match the data size',
      `${elements} elements of ${dtype} = ${bits / 8} bytes`, `${end - begin} bytes`);
  }
  return { name, dtype, shape: [...(shape as number[])], file, offset: dataStart + begin, byteLength: end - begin };
}

function checkNoOverlap(tensors: Map<string, TensorInfo>, where: string, dataStart: number): void {
  // Empty tensors occupy no bytes, so they cannot overlap anything.
  const sorted = [...tensors.values()].filter((t) => t.byteLength > 0).sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1];
    const cur = sorted[i];
    if (cur.offset < prev.offset + prev.byteLength) {
      throw new InputError(`${where}: ${cur.name}.data_offsets`, `tensor data overlaps tensor "${prev.name}"`,
        `begin >= ${prev.offset + prev.byteLength - dataStart}`, `${cur.offset - dataStart}`);
    }
  }
}

/** Fills `target` from the file at `position`, in chunks Node accepts; a short file is an InputError naming `where`. */
export function readExactly(handle: ReadHandle, target: ArrayBufferView, position: number, where: string): void {
  const bytes = new Uint8Array(target.buffer, target.byteOffset, target.byteLength);
  const done = handle.read(bytes, position);
  if (done < bytes.length) {
    throw new InputError(where, 'file ended early (truncated or changed while reading?)',
      `${bytes.length} bytes at offset ${position}`, `${done} bytes`);
  }
}

export class SafetensorsFile {
  readonly path: string;
  readonly tensors: Map<string, TensorInfo>;
  readonly metadata: Record<string, string>;
  readonly dataStart: number;
  private handle: ReadHandle | null;

  private constructor(filePath: string, handle: ReadHandle, header: SafetensorsHeader) {
    this.path = filePath;
    this.handle = handle;
    this.tensors = header.tensors;
    this.metadata = header.metadata;
    this.dataStart = header.dataStart;
  }

  /** Opens a file and reads its header only. */
  static open(filePath: string): SafetensorsFile {
    const abs = resolvePath(filePath);
    let handle: ReadHandle;
    try {
      handle = openForReading(abs);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') throw new InputError(abs, 'safetensors file not found');
      if (code === 'EISDIR' || code === 'EINVAL') throw new InputError(abs, 'not a regular file', 'a .safetensors file');
      throw new InputError(abs, `cannot open safetensors file (${code ?? (err as Error).message})`);
    }
    try {
      const size = handle.size;
      const head = new Uint8Array(Math.min(8, size));
      readExactly(handle, head, 0, abs);
      let bytes = head;
      if (size >= 8) {
        const n = headerLengthField(head);
        // Only read the header when its length is plausible; otherwise the parser reports why not.
        if (n <= BigInt(Math.min(MAX_HEADER_BYTES, size - 8))) {
          bytes = new Uint8Array(8 + Number(n));
          bytes.set(head);
          readExactly(handle, bytes.subarray(8), 8, abs);
        }
      }
      return new SafetensorsFile(abs, handle, parseSafetensorsHeader(bytes, size, abs));
    } catch (err) {
      handle.close();
      throw err;
    }
  }

  info(name: string): TensorInfo {
    const info = this.tensors.get(name);
    if (info === undefined) throw new InputError(this.path, `missing tensor "${name}"`);
    return info;
  }

  /** The tensor's raw little-endian bytes, in a buffer of its own (not pooled). */
  readRaw(name: string): Uint8Array {
    const info = this.info(name);
    const out = new Uint8Array(info.byteLength);
    readExactly(this.openHandle(), out, info.offset, this.path);
    return out;
  }

  /** The tensor converted to float32; F32, F16, BF16 and F64 are accepted. */
  readFloat32(name: string): Float32Array {
    const info = this.info(name);
    const handle = this.openHandle();
    const count = info.byteLength / (DTYPE_BITS[info.dtype] / 8);
    switch (info.dtype) {
      case 'F32': {
        const out = new Float32Array(count);
        readExactly(handle, out, info.offset, this.path);
        return out;
      }
      case 'F16':
      case 'BF16': {
        const half = new Uint16Array(count);
        readExactly(handle, half, info.offset, this.path);
        return info.dtype === 'F16' ? float16ToFloat32(half) : bfloat16ToFloat32(half);
      }
      case 'F64': {
        const wide = new Float64Array(count);
        readExactly(handle, wide, info.offset, this.path);
        return Float32Array.from(wide);
      }
      default:
        throw new InputError(`${this.path}: ${name}`, 'tensor is not floating point', 'F32, F16, BF16 or F64',
          info.dtype);
    }
  }

  close(): void {
    this.handle?.close();
    this.handle = null;
  }

  private openHandle(): ReadHandle {
    if (this.handle === null) throw new Error(`${this.path}: safetensors file already closed`);
    return this.handle;
  }
}
