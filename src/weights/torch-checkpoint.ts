/**
 * PyTorch checkpoints (`torch.save`'s zip format): the pickle read without executing anything
 * (pickle.ts), tensors read from their storages in place. `stateDict()` picks what a model loads —
 * `ema` where the checkpoint has it (as DiT's and Skip-DiT's sample.py do), else `model`, else the
 * checkpoint itself when it is a state dict.
 */
import { InputError } from '../errors.ts';
import { float16ToFloat32, bfloat16ToFloat32 } from '../graph/half.ts';
import { readPickle, torchStorage, type PickleRecord, type PickleValue, type StorageRef, type TensorRef, type TorchDtype } from './pickle.ts';
import { ZipFile, type ZipEntry } from './zip.ts';

const BYTES: Record<TorchDtype, number> = { F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1 };
/** data.pkl of a state dict is small; a pickle past this is not a checkpoint we read. */
const MAX_PICKLE_BYTES = 512 * 2 ** 20;

export class TorchCheckpoint {
  /** The unpickled checkpoint. */
  readonly root: PickleValue;
  private readonly prefix: string;

  private constructor(readonly path: string, private readonly zip: ZipFile) {
    const pickles = [...zip.entries.keys()].filter((n) => n === 'data.pkl' || n.endsWith('/data.pkl'));
    if (pickles.length !== 1) {
      throw new InputError(path, pickles.length ? 'more than one data.pkl' : 'not a PyTorch zip checkpoint (no data.pkl; files saved by torch < 1.6 are not read)',
        'a file written by torch.save');
    }
    this.prefix = pickles[0].slice(0, pickles[0].length - 'data.pkl'.length);
    const bytes = zip.readEntry(zip.entries.get(pickles[0])!, MAX_PICKLE_BYTES);
    this.root = readPickle(bytes, path, (pid) => this.storage(torchStorage(pid, path)));
  }

  static open(file: string): TorchCheckpoint {
    let zip: ZipFile;
    try {
      zip = ZipFile.open(file);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new InputError(file, 'checkpoint not found');
      throw e;
    }
    try {
      return new TorchCheckpoint(file, zip);
    } catch (e) {
      zip.close();
      throw e;
    }
  }

  close(): void {
    this.zip.close();
  }

  /** A storage's zip entry, checked to hold its elements. */
  private storage(ref: StorageRef): StorageRef {
    const entry = this.entryOf(ref);
    if (entry.size < ref.numel * BYTES[ref.dtype]) {
      throw new InputError(this.path, `storage ${ref.key} holds ${entry.size} bytes, less than its ${ref.numel} ${ref.dtype} elements`);
    }
    return ref;
  }

  private entryOf(ref: StorageRef): ZipEntry {
    const entry = this.zip.entries.get(`${this.prefix}data/${ref.key}`);
    if (!entry) throw new InputError(this.path, `storage ${ref.key} is missing from the archive`);
    return entry;
  }

  /**
   * The tensors a model loads, by name: `ema`, else `model`, else the top-level dict (nested
   * `state_dict` keys as well). `source` says which.
   */
  stateDict(): { source: string; tensors: Map<string, TensorRef> } {
    const root = this.root;
    const pick = (key: string) => (root instanceof Map ? root.get(key) : undefined);
    for (const [key, value] of [['ema', pick('ema')], ['model', pick('model')], ['state_dict', pick('state_dict')], ['', root]] as const) {
      if (value instanceof Map) {
        const tensors = new Map<string, TensorRef>();
        for (const [k, v] of value) if (typeof k === 'string' && isTensor(v)) tensors.set(k, v);
        if (tensors.size > 0) return { source: key || 'the checkpoint', tensors };
      }
    }
    throw new InputError(this.path, 'no state dict in the checkpoint', 'a dict of tensors, or one under "ema", "model" or "state_dict"');
  }

  /** The training arguments saved beside the weights (argparse.Namespace under "args"), if any. */
  args(): Map<string, PickleValue> | undefined {
    const args = this.root instanceof Map ? this.root.get('args') : undefined;
    return args !== null && typeof args === 'object' && 'kind' in args && args.kind === 'record' ? (args as PickleRecord).fields : undefined;
  }

  /** A floating-point tensor as float32, laid out contiguously. */
  readFloat32(name: string, t: TensorRef): Float32Array {
    const { dtype } = t.storage;
    if (dtype !== 'F32' && dtype !== 'F16' && dtype !== 'BF16' && dtype !== 'F64') {
      throw new InputError(`${this.path}: ${name}`, 'tensor is not floating point', 'F32, F16, BF16 or F64', dtype);
    }
    const count = t.shape.reduce((a, b) => a * b, 1);
    // A state dict's tensors never hold more elements than their storages (that would be an expanded view).
    if (count > t.storage.numel) throw new InputError(`${this.path}: ${name}`, `tensor of ${count} elements over a storage of ${t.storage.numel}`);
    // The elements it spans in its storage: offset + Σ (size − 1)·stride.
    const span = count === 0 ? 0 : t.shape.reduce((a, d, k) => a + (d - 1) * t.stride[k], 1);
    if (t.offset + span > t.storage.numel) throw new InputError(`${this.path}: ${name}`, 'tensor reaches past its storage');
    const width = BYTES[dtype];
    const raw = this.zip.readStored(this.entryOf(t.storage), t.offset * width, span * width);
    const all = decode(raw, dtype, span);
    if (isContiguous(t)) return all;
    const out = new Float32Array(count);
    const index = new Array<number>(t.shape.length).fill(0);
    for (let k = 0; k < count; k++) {
      let at = 0;
      for (let d = 0; d < index.length; d++) at += index[d] * t.stride[d];
      out[k] = all[at];
      for (let d = index.length - 1; d >= 0 && ++index[d] === t.shape[d]; d--) index[d] = 0;
    }
    return out;
  }
}

export function isTensor(v: PickleValue | undefined): v is TensorRef {
  return v !== null && typeof v === 'object' && 'kind' in v && v.kind === 'tensor';
}

function isContiguous(t: TensorRef): boolean {
  let expected = 1;
  for (let d = t.shape.length - 1; d >= 0; d--) {
    if (t.shape[d] !== 1 && t.stride[d] !== expected) return false;
    expected *= t.shape[d];
  }
  return true;
}

function decode(raw: Uint8Array, dtype: TorchDtype, count: number): Float32Array {
  const buffer = raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength);
  switch (dtype) {
    case 'F32': return new Float32Array(buffer, 0, count);
    case 'F64': return Float32Array.from(new Float64Array(buffer, 0, count));
    case 'F16': return float16ToFloat32(new Uint16Array(buffer, 0, count));
    default: return bfloat16ToFloat32(new Uint16Array(buffer, 0, count));
  }
}
