/**
 * A Python pickle reader that creates data only: what a PyTorch checkpoint's `data.pkl` needs
 * (protocols 2–5). Nothing is executed: every GLOBAL is looked up in an allow-list — torch's
 * `weights_only=True` list (OrderedDict, tensor and parameter rebuilds, storage types, torch.Size)
 * plus argparse.Namespace, read as a plain record (DiT's and Skip-DiT's train.py save their
 * arguments that way) — and anything else is refused with an InputError naming it. Tensors come
 * out as references into the checkpoint's storages (`TensorRef`), read later by the caller.
 */
import { InputError } from '../errors.ts';

/** A storage of the checkpoint: the zip entry `data/<key>`, `numel` elements of `dtype`. */
export interface StorageRef {
  kind: 'storage';
  key: string;
  dtype: TorchDtype;
  numel: number;
}

export interface TensorRef {
  kind: 'tensor';
  storage: StorageRef;
  offset: number;
  shape: number[];
  stride: number[];
}

/** argparse.Namespace and similar records: their attributes. */
export interface PickleRecord {
  kind: 'record';
  className: string;
  fields: Map<string, PickleValue>;
}

export type PickleValue = null | boolean | number | bigint | string | Uint8Array | PickleValue[] | Map<PickleKey, PickleValue>
  | TensorRef | StorageRef | PickleRecord | { kind: 'global'; name: string };
export type PickleKey = string | number | bigint | boolean | null;

export type TorchDtype = 'F64' | 'F32' | 'F16' | 'BF16' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'BOOL';

const STORAGE_TYPES: Record<string, TorchDtype> = {
  DoubleStorage: 'F64', FloatStorage: 'F32', HalfStorage: 'F16', BFloat16Storage: 'BF16', LongStorage: 'I64',
  IntStorage: 'I32', ShortStorage: 'I16', CharStorage: 'I8', ByteStorage: 'U8', BoolStorage: 'BOOL',
};

/** The allowed globals (module.name) and what calling them makes. */
const CALLABLES = new Set([
  'collections.OrderedDict', 'torch._utils._rebuild_tensor_v2', 'torch._utils._rebuild_tensor', 'torch._utils._rebuild_parameter',
  'torch._utils._rebuild_parameter_with_state', 'torch.Size', 'argparse.Namespace', 'builtins.set', '__builtin__.set',
]);

/** Bounds on what a pickle may build: past them the file is broken or hostile, not a checkpoint. */
const MAX_STACK = 10_000_000;
const MAX_MEMO = 10_000_000;
const MAX_RANK = 32;

const MARK = Symbol('mark');
type Item = PickleValue | typeof MARK;

/** A hashable key for a dict entry. */
function keyOf(v: PickleValue, where: string): PickleKey {
  if (v === null || typeof v === 'string' || typeof v === 'number' || typeof v === 'bigint' || typeof v === 'boolean') return v;
  if (Array.isArray(v)) return JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? x.toString() : x));
  throw new InputError(where, 'a dict key that is not a string, number or tuple');
}

function isInt(v: PickleValue): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v);
}

/**
 * Reads a pickle. `persistentLoad` turns persistent ids (torch's storage tuples) into values;
 * `where` names the file in errors.
 */
export function readPickle(bytes: Uint8Array, where: string, persistentLoad: (pid: PickleValue) => PickleValue): PickleValue {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const decoder = new TextDecoder('utf-8', { fatal: false });
  const stack: Item[] = [];
  const memo = new Map<number, PickleValue>();
  let p = 0;
  const broken = (problem: string) => new InputError(where, `not a readable checkpoint pickle: ${problem} (at byte ${p})`);
  const need = (n: number) => {
    if (n < 0 || p + n > bytes.length) throw broken('truncated');
  };
  const u8 = () => (need(1), bytes[p++]);
  const u16 = () => (need(2), (p += 2), view.getUint16(p - 2, true));
  const u32 = () => (need(4), (p += 4), view.getUint32(p - 4, true));
  const i32 = () => (need(4), (p += 4), view.getInt32(p - 4, true));
  const u64 = () => {
    need(8);
    const v = view.getBigUint64(p, true);
    p += 8;
    if (v > BigInt(bytes.length)) throw broken('a length beyond the file');
    return Number(v);
  };
  const take = (n: number) => (need(n), (p += n), bytes.subarray(p - n, p));
  const line = () => {
    const end = bytes.indexOf(0x0a, p);
    if (end < 0) throw broken('unterminated text field');
    const text = decoder.decode(bytes.subarray(p, end));
    p = end + 1;
    return text;
  };
  const push = (v: Item) => {
    if (stack.length >= MAX_STACK) throw broken('too many values');
    stack.push(v);
  };
  const pop = (): PickleValue => {
    const v = stack.pop();
    if (v === undefined) throw broken('stack underflow');
    if (v === MARK) throw broken('unexpected mark');
    return v;
  };
  const top = (): PickleValue => {
    const v = stack[stack.length - 1];
    if (v === undefined || v === MARK) throw broken('stack underflow');
    return v;
  };
  const popMark = (): PickleValue[] => {
    const at = stack.lastIndexOf(MARK);
    if (at < 0) throw broken('no mark');
    const items = stack.splice(at) as PickleValue[];
    items.shift();
    return items;
  };
  const remember = (index: number, v: PickleValue) => {
    if (memo.size >= MAX_MEMO && !memo.has(index)) throw broken('too many memo entries');
    memo.set(index, v);
  };
  const recall = (index: number) => {
    if (!memo.has(index)) throw broken(`memo ${index} missing`);
    return memo.get(index)!;
  };
  const setItems = (target: PickleValue, items: PickleValue[]) => {
    if (!(target instanceof Map)) throw broken('SETITEM(S) on something that is not a dict');
    if (items.length % 2) throw broken('odd SETITEMS');
    for (let k = 0; k < items.length; k += 2) target.set(keyOf(items[k], where), items[k + 1]);
  };
  const appendItems = (target: PickleValue, items: PickleValue[]) => {
    if (!Array.isArray(target)) throw broken('APPEND(S) on something that is not a list');
    for (const item of items) {
      if (target.length >= MAX_STACK) throw broken('a list too long');
      target.push(item);
    }
  };
  const global = (module: string, name: string): PickleValue => {
    const full = `${module}.${name}`;
    if (module === 'torch' && Object.prototype.hasOwnProperty.call(STORAGE_TYPES, name)) return { kind: 'global', name: full };
    if (CALLABLES.has(full)) return { kind: 'global', name: full };
    throw new InputError(where, `the checkpoint needs the Python object ${full}, which a weights-only reader does not create`,
      'tensors, dicts, lists, numbers and strings (torch\'s weights_only allow-list, plus argparse.Namespace)', full);
  };
  const call = (fn: PickleValue, args: PickleValue): PickleValue => {
    if (fn === null || typeof fn !== 'object' || !('kind' in fn) || fn.kind !== 'global') throw broken('REDUCE on something that is not a global');
    if (!Array.isArray(args)) throw broken('REDUCE arguments are not a tuple');
    switch (fn.name) {
      case 'collections.OrderedDict':
        return new Map();
      case 'builtins.set':
      case '__builtin__.set':
        return Array.isArray(args[0]) ? [...args[0]] : [];
      case 'torch.Size':
        if (!Array.isArray(args[0]) || !args[0].every(isInt)) throw broken('torch.Size of non-integers');
        return [...args[0]];
      case 'argparse.Namespace':
        return { kind: 'record', className: fn.name, fields: new Map() };
      case 'torch._utils._rebuild_parameter':
      case 'torch._utils._rebuild_parameter_with_state':
        return args[0];
      case 'torch._utils._rebuild_tensor':
      case 'torch._utils._rebuild_tensor_v2': {
        const [storage, offset, shape, stride] = args;
        const ok = storage !== null && typeof storage === 'object' && 'kind' in storage && storage.kind === 'storage' && isInt(offset) && offset >= 0 &&
          Array.isArray(shape) && Array.isArray(stride) && shape.length === stride.length && shape.length <= MAX_RANK &&
          shape.every((d) => isInt(d) && d >= 0) && stride.every((s) => isInt(s) && s >= 0);
        if (!ok) throw broken('a tensor with a malformed storage, offset, size or stride');
        return { kind: 'tensor', storage: storage as StorageRef, offset: offset as number, shape: shape as number[], stride: stride as number[] };
      }
      default:
        throw broken(`${fn.name} is not callable`);
    }
  };

  for (;;) {
    const op = u8();
    switch (op) {
      case 0x80: u8(); break; // PROTO
      case 0x95: u64(); break; // FRAME
      case 0x2e: { // STOP
        const result = pop();
        return result;
      }
      case 0x28: push(MARK); break; // MARK
      case 0x30: pop(); break; // POP
      case 0x31: popMark(); break; // POP_MARK
      case 0x32: push(top()); break; // DUP
      case 0x4e: push(null); break; // NONE
      case 0x88: push(true); break; // NEWTRUE
      case 0x89: push(false); break; // NEWFALSE
      case 0x4a: push(i32()); break; // BININT
      case 0x4b: push(u8()); break; // BININT1
      case 0x4d: push(u16()); break; // BININT2
      case 0x8a: case 0x8b: { // LONG1, LONG4
        const n = op === 0x8a ? u8() : u32();
        if (n > 64) throw broken('an integer wider than 512 bits');
        const raw = take(n);
        let v = 0n;
        for (let k = n - 1; k >= 0; k--) v = (v << 8n) | BigInt(raw[k]);
        if (n > 0 && raw[n - 1] & 0x80) v -= 1n << BigInt(8 * n);
        push(v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v);
        break;
      }
      case 0x47: need(8); push(view.getFloat64(p, false)); p += 8; break; // BINFLOAT
      case 0x58: push(decoder.decode(take(u32()))); break; // BINUNICODE
      case 0x8c: push(decoder.decode(take(u8()))); break; // SHORT_BINUNICODE
      case 0x8d: push(decoder.decode(take(u64()))); break; // BINUNICODE8
      case 0x54: push(decoder.decode(take(i32()))); break; // BINSTRING
      case 0x55: push(decoder.decode(take(u8()))); break; // SHORT_BINSTRING
      case 0x42: push(take(u32()).slice()); break; // BINBYTES
      case 0x43: push(take(u8()).slice()); break; // SHORT_BINBYTES
      case 0x8e: push(take(u64()).slice()); break; // BINBYTES8
      case 0x7d: push(new Map()); break; // EMPTY_DICT
      case 0x5d: push([]); break; // EMPTY_LIST
      case 0x29: push([]); break; // EMPTY_TUPLE
      case 0x8f: push([]); break; // EMPTY_SET
      case 0x74: push(popMark()); break; // TUPLE
      case 0x85: push([pop()]); break; // TUPLE1
      case 0x86: { const b = pop(); const a = pop(); push([a, b]); break; } // TUPLE2
      case 0x87: { const c = pop(); const b = pop(); const a = pop(); push([a, b, c]); break; } // TUPLE3
      case 0x91: push(popMark()); break; // FROZENSET
      case 0x6c: push(popMark()); break; // LIST
      case 0x64: { const m = new Map(); setItems(m, popMark()); push(m); break; } // DICT
      case 0x61: { const v = pop(); appendItems(top(), [v]); break; } // APPEND
      case 0x65: { const items = popMark(); appendItems(top(), items); break; } // APPENDS
      case 0x90: { const items = popMark(); appendItems(top(), items); break; } // ADDITEMS
      case 0x73: { const v = pop(); const k = pop(); setItems(top(), [k, v]); break; } // SETITEM
      case 0x75: { const items = popMark(); setItems(top(), items); break; } // SETITEMS
      case 0x71: remember(u8(), top()); break; // BINPUT
      case 0x72: remember(u32(), top()); break; // LONG_BINPUT
      case 0x94: remember(memo.size, top()); break; // MEMOIZE
      case 0x70: remember(Number(line()), top()); break; // PUT
      case 0x68: push(recall(u8())); break; // BINGET
      case 0x6a: push(recall(u32())); break; // LONG_BINGET
      case 0x67: push(recall(Number(line()))); break; // GET
      case 0x63: { const module = line(); push(global(module, line())); break; } // GLOBAL
      case 0x93: { // STACK_GLOBAL
        const name = pop();
        const module = pop();
        if (typeof module !== 'string' || typeof name !== 'string') throw broken('STACK_GLOBAL of non-strings');
        push(global(module, name));
        break;
      }
      case 0x52: { const args = pop(); push(call(pop(), args)); break; } // REDUCE
      case 0x81: { const args = pop(); push(call(pop(), args)); break; } // NEWOBJ
      case 0x92: { pop(); const args = pop(); push(call(pop(), args)); break; } // NEWOBJ_EX
      case 0x62: { // BUILD: a record takes the state's attributes; other targets keep what they are
        const state = pop();
        const target = top();
        if (target !== null && typeof target === 'object' && 'kind' in target && target.kind === 'record' && state instanceof Map) {
          for (const [k, v] of state) if (typeof k === 'string') target.fields.set(k, v);
        }
        break;
      }
      case 0x51: push(persistentLoad(pop())); break; // BINPERSID
      case 0x50: push(persistentLoad(line())); break; // PERSID
      default:
        throw broken(`unsupported opcode 0x${op.toString(16).padStart(2, '0')}`);
    }
  }
}

/** torch's persistent id for a storage: ('storage', <storage type>, key, location, numel). */
export function torchStorage(pid: PickleValue, where: string): StorageRef {
  const ok = Array.isArray(pid) && pid.length >= 5 && pid[0] === 'storage' && pid[1] !== null && typeof pid[1] === 'object' &&
    'kind' in pid[1] && pid[1].kind === 'global' && typeof pid[2] === 'string' && isInt(pid[4]) && pid[4] >= 0;
  if (!ok) throw new InputError(where, 'not a readable checkpoint pickle: a persistent id that is not a torch storage');
  const type = ((pid as PickleValue[])[1] as { name: string }).name.replace(/^torch\./, '');
  const dtype = Object.prototype.hasOwnProperty.call(STORAGE_TYPES, type) ? STORAGE_TYPES[type] : undefined;
  if (!dtype) throw new InputError(where, `unsupported storage type ${type}`, Object.keys(STORAGE_TYPES).join(', '));
  return { kind: 'storage', key: pid[2] as string, dtype, numel: pid[4] as number };
}
