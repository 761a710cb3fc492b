/**
 * Typed ONNX graph builder. Every value carries a static shape, so each op helper checks its
 * operands, infers the output shape and counts its multiply-accumulates exactly.
 * Parameters are referenced by their diffusers/transformers key and resolved through a
 * ParamSource: either real safetensors tensors (serialised as ONNX external data pointing straight
 * into the safetensors file) or shapes alone (MAC counting from a config, no weights).
 */
import { OnnxDataType, type AttributeValue, type ModelProto, type NodeProto, type TensorProto, type ValueInfoProto } from './onnx-proto.ts';
import { float32ToFloat16 } from './half.ts';
import type { Precision, QuantizedParam } from './quantize.ts';

export type DataType = 'float32' | 'float16' | 'int64' | 'int32' | 'int8' | 'uint8' | 'bool';

export const DATA_TYPE_BYTES: Record<DataType, number> = { float32: 4, float16: 2, int64: 8, int32: 4, int8: 1, uint8: 1, bool: 1 };

export const ONNX_TYPE: Record<DataType, OnnxDataType> = {
  float32: OnnxDataType.FLOAT,
  float16: OnnxDataType.FLOAT16,
  int64: OnnxDataType.INT64,
  int32: OnnxDataType.INT32,
  int8: OnnxDataType.INT8,
  uint8: OnnxDataType.UINT8,
  bool: OnnxDataType.BOOL,
};

/** Where a parameter's bytes live. Absent for shape-only sources. */
export interface WeightLocation {
  file: string;
  offset: number;
  byteLength: number;
}

export interface WeightRef {
  name: string;
  shape: number[];
  dtype: 'F32' | 'F16' | 'BF16';
  location?: WeightLocation;
}

/** Resolves a parameter name to its stored tensor, checking the shape the model expects. */
export interface ParamSource {
  param(name: string, shape: number[]): WeightRef;
}

/** Multiply-accumulates split by kind: `full` counts all three, the calflops convention omits `attention`. */
export interface MacCount {
  conv: number;
  linear: number;
  attention: number;
}

export const zeroMacs = (): MacCount => ({ conv: 0, linear: 0, attention: 0 });
export const fullMacs = (m: MacCount): number => m.conv + m.linear + m.attention;
/** What calflops reports for diffusers models: Linear/Conv/projections, not the SDPA core. */
export const calflopsMacs = (m: MacCount): number => m.conv + m.linear;
export function addMacs(into: MacCount, m: MacCount, times = 1): void {
  into.conv += m.conv * times;
  into.linear += m.linear * times;
  into.attention += m.attention * times;
}

/**
 * The MAC-carrying ops of a graph with their shapes, so a benchmark can time each one alone
 * and know what the whole model would cost at the kernels' own speed.
 */
export type HeavyOp =
  | { op: 'conv'; input: number[]; outChannels: number; kernel: number; stride: number; padding: number; macs: number }
  | { op: 'linear'; input: number[]; outFeatures: number; macs: number }
  | { op: 'matmul'; a: number[]; b: number[]; macs: number }
  | { op: 'attention'; q: number[]; k: number[]; heads: number; macs: number };

export class Value {
  constructor(
    readonly name: string,
    readonly shape: readonly number[],
    readonly dtype: DataType,
  ) {}
  get rank(): number {
    return this.shape.length;
  }
  get size(): number {
    return this.shape.reduce((a, b) => a * b, 1);
  }
}

/** The largest finite float16. */
const HALF_MAX = 65504;

const product = (dims: readonly number[]): number => dims.reduce((a, b) => a * b, 1);

function broadcast(a: readonly number[], b: readonly number[], op: string): number[] {
  const rank = Math.max(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i < rank; i++) {
    const da = a[a.length - rank + i] ?? 1;
    const db = b[b.length - rank + i] ?? 1;
    if (da !== db && da !== 1 && db !== 1) throw new Error(`${op}: cannot broadcast [${a}] with [${b}]`);
    out.push(Math.max(da, db));
  }
  return out;
}

export type AttentionKind = 'mha' | 'plain';

/** How a graph is built (see GraphBuilder's constructor); the defaults build a float32 graph of fixed batch with MHA attention. */
export interface GraphOptions {
  attentionKind?: AttentionKind;
  dynamicBatch?: boolean;
  precision?: Precision;
  unsignedInt8Weights?: boolean;
}

export class GraphBuilder {
  readonly nodes: NodeProto[] = [];
  readonly macs: MacCount = zeroMacs();
  readonly heavyOps: HeavyOp[] = [];
  private readonly initializers = new Map<string, { ref: WeightRef; value: Value }>();
  /** Parameters quantized when the session is built (src/graph/quantize.ts), by weight name. */
  private readonly quantized = new Map<string, QuantizedParam>();
  private readonly constants: TensorProto[] = [];
  private readonly inputs: Value[] = [];
  private readonly outputs: Value[] = [];
  private readonly usedNames = new Set<string>();
  private readonly unbatched = new Set<string>();
  private counter = 0;
  private prefix = '';
  /** The largest tensor an op of this graph produces, in bytes (for memory estimates). */
  largestActivationBytes = 0;
  /** The largest attention score matrix [B, H, Sq, Sk] in fp32 an attention op may hold. */
  attentionScoreBytes = 0;
  usesContribOps = false;
  /**
   * `precision` fp16 computes in half precision the way torch's autocast does: a Value keeps the
   * type a float32 graph would give it, and these float32 Values are held as float16. Graph inputs
   * and outputs stay float32 (a cast at each end), parameters are cast where used (ORT folds it at
   * session start), and float32() regions keep what needs the range or the resolution of float32.
   * Parameters stored as float16 or bfloat16 are such Values too, in whichever precision.
   */
  private readonly halfValues = new Map<string, 'float16' | 'bfloat16'>();
  private readonly casts = new Map<string, Value>();
  private float32Depth = 0;

  readonly attentionKind: AttentionKind;
  readonly dynamicBatch: boolean;
  readonly precision: Precision;
  readonly unsignedInt8Weights: boolean;

  /**
   * With `dynamicBatch`, axis 0 of every graph input and output is the symbolic dimension
   * "batch", so one session serves any batch size (CFG and no-CFG calls share weights and
   * compiled kernels). Shapes inside the graph never hard-code the batch: see reshape().
   * `precision` int8 builds linear layers and convolutions as 8-bit products (src/graph/quantize.ts),
   * their weights as uint8 with a zero point where `unsignedInt8Weights` (CPUs whose uint8 × int8 saturates).
   */
  constructor(
    readonly name: string,
    private readonly params: ParamSource,
    options: GraphOptions = {},
  ) {
    this.attentionKind = options.attentionKind ?? 'mha';
    this.dynamicBatch = options.dynamicBatch ?? false;
    this.precision = options.precision ?? 'fp32';
    this.unsignedInt8Weights = options.unsignedInt8Weights ?? false;
  }

  /** Whether ops built now compute in float16. */
  private get computesHalf(): boolean {
    return this.precision === 'fp16' && this.float32Depth === 0;
  }

  /** Builds `body` in float32 whatever the precision (e.g. sinusoidal embeddings of timesteps up to 1000). */
  float32<T>(body: () => T): T {
    this.float32Depth++;
    try {
      return body();
    } finally {
      this.float32Depth--;
    }
  }

  /** The name under which `v` has the type ops built now compute in: `v` itself or a cast of it (one per value and type). */
  private operand(v: Value): string {
    if (v.dtype !== 'float32') return v.name;
    const held = this.halfValues.get(v.name) ?? 'float32';
    const wanted = this.computesHalf ? 'float16' : 'float32';
    if (held === wanted) return v.name;
    const key = `${v.name}->${wanted}`;
    let cast = this.casts.get(key);
    if (!cast) {
      cast = new Value(this.fresh('cast'), v.shape, wanted);
      this.castNode(v.name, cast.name, wanted);
      this.casts.set(key, cast);
    }
    return cast.name;
  }

  private castNode(input: string, output: string, to: DataType): void {
    this.node('Cast', [input], [output], { to: { kind: 'int', value: ONNX_TYPE[to] } });
  }

  /** A Value an op built now produces: a float32 one is held as float16 where ops compute in it. */
  private result(hint: string, shape: readonly number[], dtype: DataType): Value {
    const out = new Value(this.fresh(hint), shape, dtype);
    if (dtype === 'float32' && this.computesHalf) this.halfValues.set(out.name, 'float16');
    return this.produced(out);
  }

  // ---- structure -------------------------------------------------------------------------

  /** Runs `body` with parameter names prefixed by `scope.` (diffusers module path). */
  scope<T>(scope: string, body: () => T): T {
    const saved = this.prefix;
    this.prefix = saved + scope + '.';
    try {
      return body();
    } finally {
      this.prefix = saved;
    }
  }

  private fresh(hint: string): string {
    let name: string;
    do name = `${hint}_${this.counter++}`;
    while (this.usedNames.has(name));
    this.usedNames.add(name);
    return name;
  }

  /** A graph input; `batched: false` keeps axis 0 static under dynamicBatch (e.g. token index lists). */
  input(name: string, shape: number[], dtype: DataType = 'float32', batched = true): Value {
    if (this.usedNames.has(name)) throw new Error(`graph ${this.name}: duplicate input ${name}`);
    this.usedNames.add(name);
    const v = new Value(name, shape, dtype);
    this.inputs.push(v);
    if (!batched) this.unbatched.add(name);
    return v;
  }

  /** The first `count` dims of `x` at run time (whatever its precision: no cast). */
  private shapeOf(x: Value, count: number): Value {
    const out = new Value(this.fresh('shape'), [count], 'int64');
    this.node('Shape', [x.name], [out.name], { end: { kind: 'int', value: count } });
    return out;
  }

  /** Marks `v` as a graph output under `name` (an Identity keeps names stable). */
  output(v: Value, name: string): void {
    if (this.usedNames.has(name)) throw new Error(`graph ${this.name}: duplicate output ${name}`);
    this.usedNames.add(name);
    if (this.halfValues.has(v.name)) this.castNode(v.name, name, 'float32');
    else this.node('Identity', [v.name], [name]);
    this.outputs.push(new Value(name, v.shape, v.dtype));
  }

  /** A parameter of the model under the current scope, e.g. `conv1.weight`. */
  param(localName: string, shape: number[]): Value {
    return this.paramRows(localName, shape, 0, shape[0]);
  }

  /**
   * Rows [start, end) of a parameter (axis 0), as its own initializer: rows are contiguous in
   * the file, so the slice is just another external-data range — no copy, no Slice op.
   */
  paramRows(localName: string, shape: number[], start: number, end: number): Value {
    const { key, ref } = this.paramSlice(localName, shape, start, end);
    const existing = this.initializers.get(key);
    if (existing) return existing.value;
    // Cast where used into the precision ops compute in: ORT folds the cast at session start.
    const value = new Value(key, ref.shape, 'float32');
    if (ref.dtype !== 'F32') this.halfValues.set(key, ref.dtype === 'F16' ? 'float16' : 'bfloat16');
    this.usedNames.add(key);
    this.initializers.set(key, { ref, value });
    return value;
  }

  private paramSlice(localName: string, shape: number[], start: number, end: number): { key: string; ref: WeightRef } {
    const fullName = this.prefix + localName;
    const key = start === 0 && end === shape[0] ? fullName : `${fullName}[${start}:${end}]`;
    const full = this.params.param(fullName, shape);
    const rowBytes = full.location ? full.location.byteLength / shape[0] : 0;
    const ref: WeightRef = {
      ...full,
      shape: [end - start, ...shape.slice(1)],
      location: full.location && { file: full.location.file, offset: full.location.offset + start * rowBytes, byteLength: (end - start) * rowBytes },
    };
    return { key, ref };
  }

  /**
   * Rows [start, end) of a parameter [rows, inner, ...kernel] as an 8-bit matrix [kernel·inner, rows],
   * its per-row scales and, for unsigned weights, its per-row zero point, made from the stored floats
   * when the session is built.
   */
  private quantizedRows(localName: string, shape: number[], start: number, end: number): { weight: Value; scale: Value; zeroPoint?: Value } {
    const { key, ref } = this.paramSlice(localName, shape, start, end);
    const weightName = `${key}#int8`;
    const scaleName = `${key}#scale`;
    const zeroPointName = this.unsignedInt8Weights ? `${key}#zero` : undefined;
    const rows = end - start;
    const kernel = product(shape.slice(2));
    if (!this.quantized.has(weightName)) {
      this.usedNames.add(weightName).add(scaleName);
      if (zeroPointName) this.usedNames.add(zeroPointName);
      this.quantized.set(weightName, { ref, rows, inner: shape[1], kernel, weightName, scaleName, zeroPointName });
    }
    return {
      weight: new Value(weightName, [kernel * shape[1], rows], zeroPointName ? 'uint8' : 'int8'), scale: new Value(scaleName, [rows], 'float32'),
      zeroPoint: zeroPointName ? new Value(zeroPointName, [rows], 'uint8') : undefined,
    };
  }

  /**
   * A small constant embedded in the model file; a float one in the precision ops built now compute
   * in (in float16 clamped to its largest finite value, so a -3.4e38 mask stays finite).
   */
  constant(data: Float32Array | BigInt64Array | Int32Array, shape: number[], hint = 'const'): Value {
    const dtype: DataType = data instanceof Float32Array ? 'float32' : data instanceof BigInt64Array ? 'int64' : 'int32';
    if (data.length !== product(shape)) throw new Error(`constant ${hint}: ${data.length} values for shape [${shape}]`);
    const name = this.fresh(hint);
    const half = data instanceof Float32Array && this.computesHalf;
    const stored = half ? float32ToFloat16(data.map((x) => Math.min(Math.max(x, -HALF_MAX), HALF_MAX))) : data;
    this.constants.push({
      name,
      dims: shape,
      dataType: half ? OnnxDataType.FLOAT16 : ONNX_TYPE[dtype],
      raw: new Uint8Array(stored.buffer, stored.byteOffset, stored.byteLength),
    });
    if (half) this.halfValues.set(name, 'float16');
    return new Value(name, shape, dtype);
  }

  scalar(value: number): Value {
    return this.constant(new Float32Array([value]), [], 'scalar');
  }

  private shapeConst(dims: readonly number[]): Value {
    return this.constant(BigInt64Array.from(dims.map(BigInt)), [dims.length], 'shape');
  }

  node(
    opType: string,
    inputs: string[],
    outputs: string[],
    attributes: Record<string, AttributeValue> = {},
    domain?: string,
  ): void {
    if (domain === 'com.microsoft') this.usesContribOps = true;
    this.nodes.push({ opType, domain, name: this.fresh(opType), inputs, outputs, attributes });
  }

  /** `out`, counted towards the largest tensor the graph produces. */
  private produced(out: Value): Value {
    const bytes = DATA_TYPE_BYTES[this.halfValues.has(out.name) ? 'float16' : out.dtype];
    this.largestActivationBytes = Math.max(this.largestActivationBytes, out.size * bytes);
    return out;
  }

  /** One node with one output; float inputs enter in the precision ops built now compute in. */
  private op(
    opType: string,
    inputs: Value[],
    shape: readonly number[],
    dtype: DataType,
    attributes: Record<string, AttributeValue> = {},
    domain?: string,
  ): Value {
    const names = inputs.map((v) => this.operand(v));
    const out = this.result(opType.toLowerCase(), shape, dtype);
    this.node(opType, names, [out.name], attributes, domain);
    return out;
  }

  // ---- elementwise -----------------------------------------------------------------------

  private binary(opType: string, a: Value, b: Value): Value {
    return this.op(opType, [a, b], broadcast(a.shape, b.shape, opType), a.dtype);
  }
  add(a: Value, b: Value): Value {
    return this.binary('Add', a, b);
  }
  sub(a: Value, b: Value): Value {
    return this.binary('Sub', a, b);
  }
  mul(a: Value, b: Value): Value {
    return this.binary('Mul', a, b);
  }
  div(a: Value, b: Value): Value {
    return this.binary('Div', a, b);
  }
  private unary(opType: string, x: Value): Value {
    return this.op(opType, [x], x.shape, x.dtype);
  }
  sigmoid(x: Value): Value {
    return this.unary('Sigmoid', x);
  }
  exp(x: Value): Value {
    return this.unary('Exp', x);
  }
  sin(x: Value): Value {
    return this.unary('Sin', x);
  }
  cos(x: Value): Value {
    return this.unary('Cos', x);
  }
  silu(x: Value): Value {
    return this.mul(x, this.sigmoid(x));
  }
  /** Exact (erf) GELU; ORT fuses this pattern into one kernel. */
  gelu(x: Value): Value {
    const erf = this.unary('Erf', this.mul(x, this.scalar(Math.SQRT1_2)));
    return this.mul(this.mul(x, this.scalar(0.5)), this.add(erf, this.scalar(1)));
  }
  /**
   * GELU with the tanh approximation (torch's approximate="tanh", transformers' gelu_new) of x + bias.
   * ORT gets its fused FastGelu, the bias folded in (the plain-op form costs a third of a PixArt
   * feed-forward in memory passes).
   */
  geluTanh(x: Value, bias?: Value): Value {
    if (this.attentionKind === 'mha') return this.op('FastGelu', bias ? [x, bias] : [x], x.shape, x.dtype, {}, 'com.microsoft');
    if (bias) x = this.add(x, bias);
    const cubic = this.mul(this.mul(this.mul(x, x), x), this.scalar(0.044715));
    const inner = this.mul(this.add(x, cubic), this.scalar(Math.sqrt(2 / Math.PI)));
    return this.mul(this.mul(x, this.scalar(0.5)), this.add(this.unary('Tanh', inner), this.scalar(1)));
  }
  /** x·σ(1.702x), CLIP's original activation. */
  quickGelu(x: Value): Value {
    return this.mul(x, this.sigmoid(this.mul(x, this.scalar(1.702))));
  }
  activation(name: string, x: Value): Value {
    switch (name) {
      case 'silu':
      case 'swish':
        return this.silu(x);
      case 'gelu':
        return this.gelu(x);
      case 'quick_gelu':
        return this.quickGelu(x);
      case 'relu':
        return this.unary('Relu', x);
      case 'gelu_new':
      case 'gelu_pytorch_tanh':
      case 'gelu-approximate':
        return this.geluTanh(x);
      default:
        throw new Error(`unsupported activation ${name}`);
    }
  }
  clip(x: Value, min: number, max: number): Value {
    return this.op('Clip', [x, this.scalar(min), this.scalar(max)], x.shape, x.dtype);
  }
  cast(x: Value, to: DataType): Value {
    if (x.dtype === to) return x;
    const out = this.result('cast', x.shape, to);
    this.castNode(x.name, out.name, this.halfValues.has(out.name) ? 'float16' : to);
    return out;
  }

  // ---- shape -----------------------------------------------------------------------------

  /**
   * Reshape that never bakes in axis 0 (the batch in every segment): it is copied from the input
   * (ONNX 0) when it keeps its size, else inferred (−1); the other axes never depend on the batch.
   */
  reshape(x: Value, shape: number[]): Value {
    if (product(shape) !== x.size) throw new Error(`reshape [${x.shape}] -> [${shape}]`);
    const target = [shape[0] === x.shape[0] ? 0 : -1, ...shape.slice(1)];
    return this.op('Reshape', [x, this.shapeConst(target)], shape, x.dtype);
  }
  transpose(x: Value, perm: number[]): Value {
    return this.op('Transpose', [x], perm.map((p) => x.shape[p]), x.dtype, { perm: { kind: 'ints', value: perm } });
  }
  concat(values: Value[], axis: number): Value {
    const a = axis < 0 ? values[0].rank + axis : axis;
    const shape = [...values[0].shape];
    shape[a] = values.reduce((s, v) => s + v.shape[a], 0);
    return this.op('Concat', values, shape, values[0].dtype, { axis: { kind: 'int', value: a } });
  }
  /** Splits `x` along `axis` into pieces of the given sizes. */
  split(x: Value, axis: number, sizes: number[]): Value[] {
    const a = axis < 0 ? x.rank + axis : axis;
    const input = this.operand(x);
    const outs = sizes.map((s) => {
      const shape = [...x.shape];
      shape[a] = s;
      return this.result('split', shape, x.dtype);
    });
    this.node('Split', [input, this.shapeConst(sizes).name], outs.map((o) => o.name), { axis: { kind: 'int', value: a } });
    return outs;
  }
  /** x[..., start:end, ...] along one axis. */
  slice(x: Value, axis: number, start: number, end: number): Value {
    const a = axis < 0 ? x.rank + axis : axis;
    const shape = [...x.shape];
    shape[a] = end - start;
    return this.op('Slice', [x, this.shapeConst([start]), this.shapeConst([end]), this.shapeConst([a])], shape, x.dtype);
  }
  /** Rows of `table` picked by integer `indices` along axis 0. */
  gather(table: Value, indices: Value): Value {
    return this.op('Gather', [table, indices], [...indices.shape, ...table.shape.slice(1)], table.dtype, {
      axis: { kind: 'int', value: 0 },
    });
  }
  /** Elements of `x` picked along `axis` by `indices` (a tensor of the same rank as x). */
  gatherElements(x: Value, indices: Value, axis: number): Value {
    return this.op('GatherElements', [x, indices], indices.shape, x.dtype, { axis: { kind: 'int', value: axis } });
  }
  /** Slices of `x` along `axis` picked by `indices` (any rank; torch.index_select for 1-D indices). */
  gatherAxis(x: Value, indices: Value, axis: number): Value {
    const shape = [...x.shape.slice(0, axis), ...indices.shape, ...x.shape.slice(axis + 1)];
    return this.op('Gather', [x, indices], shape, x.dtype, { axis: { kind: 'int', value: axis } });
  }
  /** A copy of `data` with `updates` written (or, with a reduction, added) at `indices` along `axis`. */
  scatterElements(data: Value, indices: Value, updates: Value, axis: number, reduction: 'none' | 'add' = 'none'): Value {
    return this.op('ScatterElements', [data, indices, updates], data.shape, data.dtype, {
      axis: { kind: 'int', value: axis },
      reduction: { kind: 'string', value: reduction },
    });
  }
  /**
   * `x` broadcast to the batch of `like` and the static trailing dims `rest` (Expand with a runtime
   * batch, so segments stay batch-polymorphic).
   */
  expandToBatch(x: Value, like: Value, rest: number[]): Value {
    const batch = this.shapeOf(like, 1);
    return this.op('Expand', [x, this.concat([batch, this.shapeConst(rest)], 0)], [like.shape[0], ...rest], x.dtype);
  }
  /** x [..., 1] repeated along its last axis to [..., n] (a broadcasting Expand: the batch stays as it is). */
  repeatLastAxis(x: Value, n: number): Value {
    const target = x.shape.map((_, i) => (i === x.rank - 1 ? n : 1));
    return this.op('Expand', [x, this.shapeConst(target)], [...x.shape.slice(0, -1), n], x.dtype);
  }
  /** The k largest values along the last axis, sorted descending; ties keep the lower index first. */
  topK(x: Value, k: number): { values: Value; indices: Value } {
    const shape = [...x.shape.slice(0, -1), k];
    const input = this.operand(x);
    const values = this.result('topk_values', shape, x.dtype);
    const indices = this.result('topk_indices', shape, 'int64');
    this.node('TopK', [input, this.shapeConst([k]).name], [values.name, indices.name], {
      axis: { kind: 'int', value: -1 }, largest: { kind: 'int', value: 1 }, sorted: { kind: 'int', value: 1 },
    });
    return { values, indices };
  }
  /** Maximum along `axis`, that axis removed. */
  reduceMax(x: Value, axis: number): Value {
    return this.op('ReduceMax', [x, this.shapeConst([axis])], x.shape.filter((_, i) => i !== axis), x.dtype, { keepdims: { kind: 'int', value: 0 } });
  }
  /** x / ‖x‖ along the last axis. */
  normalizeLastAxis(x: Value): Value {
    const norm = this.op('ReduceL2', [x, this.shapeConst([x.rank - 1])], [...x.shape.slice(0, -1), 1], x.dtype, { keepdims: { kind: 'int', value: 1 } });
    return this.div(x, norm);
  }
  /** Index of the first maximum along `axis`, that axis removed. */
  argmax(x: Value, axis: number): Value {
    const shape = x.shape.filter((_, i) => i !== axis);
    return this.op('ArgMax', [x], shape, 'int64', {
      axis: { kind: 'int', value: axis },
      keepdims: { kind: 'int', value: 0 },
      select_last_index: { kind: 'int', value: 0 },
    });
  }
  equal(a: Value, b: Value): Value {
    return this.op('Equal', [a, b], broadcast(a.shape, b.shape, 'Equal'), 'bool');
  }
  /** Picks x[b, index[b], :] for each batch row b: x [B, L, D], index [B] → [B, D]. */
  gatherRows(x: Value, index: Value): Value {
    const [b, , d] = x.shape;
    const picked = this.gatherElements(x, this.repeatLastAxis(this.reshape(index, [b, 1, 1]), d), 1);
    return this.reshape(picked, [b, d]);
  }

  // ---- linear algebra --------------------------------------------------------------------

  /** Plain MatMul with broadcasting batch dims (no parameters); MACs counted as `kind`. */
  matmul(a: Value, b: Value, kind: keyof MacCount): Value {
    const out = this.matmulNode(a, b, kind);
    this.heavyOps.push({ op: 'matmul', a: [...a.shape], b: [...b.shape], macs: out.macs });
    return out.value;
  }

  private matmulNode(a: Value, b: Value, kind: keyof MacCount): { value: Value; macs: number } {
    const k = a.shape[a.rank - 1];
    if (b.shape[b.rank - 2] !== k) throw new Error(`matmul [${a.shape}] x [${b.shape}]`);
    const batch = broadcast(a.shape.slice(0, -2), b.shape.slice(0, -2), 'MatMul');
    const shape = [...batch, a.shape[a.rank - 2], b.shape[b.rank - 1]];
    const macs = product(shape) * k;
    this.macs[kind] += macs;
    return { value: this.op('MatMul', [a, b], shape, a.dtype), macs };
  }

  /** torch.nn.Linear over the last axis: parameters `{name}.weight` [out, in] and `{name}.bias`. */
  linear(x: Value, name: string, outFeatures: number, bias = true): Value {
    return this.linearRows(x, name, outFeatures, 0, outFeatures, bias);
  }

  /** Outputs [start, end) of a Linear with `outFeatures` outputs (e.g. one half of GEGLU's projection). */
  linearRows(x: Value, name: string, outFeatures: number, start: number, end: number, bias = true): Value {
    const inFeatures = x.shape[x.rank - 1];
    const rows = x.shape.slice(0, -1);
    const flat = x.rank === 2 ? x : this.reshape(x, [product(rows), inFeatures]);
    const biasValue = bias ? this.paramRows(`${name}.bias`, [outFeatures], start, end) : undefined;
    let out: Value;
    if (this.precision === 'int8') {
      // One contrib op quantizes the activations and runs the uint8 × int8 product with the scales and bias.
      const { weight, scale, zeroPoint } = this.quantizedRows(`${name}.weight`, [outFeatures, inFeatures], start, end);
      out = this.result('dynamicquantizematmul', [product(rows), end - start], x.dtype);
      // '' where a signed weight has no zero point.
      const inputs = [this.operand(flat), weight.name, scale.name, ...(biasValue ? [zeroPoint?.name ?? '', this.operand(biasValue)] : zeroPoint ? [zeroPoint.name] : [])];
      this.node('DynamicQuantizeMatMul', inputs, [out.name], {}, 'com.microsoft');
    } else {
      // Gemm reads the [out, in] weight transposed as it is: MLAS prepacks it straight from the
      // file, where a Transpose would be constant-folded at session start through protobuf copies
      // (measured on a T5-XXL block, 0.8 GB: session creation 3.6 s with the Transpose).
      const weight = this.paramRows(`${name}.weight`, [outFeatures, inFeatures], start, end);
      out = this.op('Gemm', biasValue ? [flat, weight, biasValue] : [flat, weight], [product(rows), end - start], x.dtype, { transB: { kind: 'int', value: 1 } });
    }
    const macs = product(rows) * inFeatures * (end - start);
    this.macs.linear += macs;
    this.heavyOps.push({ op: 'linear', input: [...x.shape], outFeatures: end - start, macs });
    return x.rank === 2 ? out : this.reshape(out, [...rows, end - start]);
  }

  /** torch.nn.Conv2d, NCHW, symmetric padding, parameters `{name}.weight` / `{name}.bias`. */
  conv2d(x: Value, name: string, outChannels: number, kernel: number, options: { stride?: number; padding?: number } = {}): Value {
    const { stride = 1, padding = 0 } = options;
    const [n, c, h, w] = x.shape;
    const bias = this.param(`${name}.bias`, [outChannels]);
    const oh = Math.floor((h + 2 * padding - kernel) / stride) + 1;
    const ow = Math.floor((w + 2 * padding - kernel) / stride) + 1;
    const shape = [n, outChannels, oh, ow];
    const macs = product(shape) * c * kernel * kernel;
    this.macs.conv += macs;
    this.heavyOps.push({ op: 'conv', input: [...x.shape], outChannels, kernel, stride, padding, macs });
    if (this.precision === 'int8') return this.conv2dInt8(x, name, outChannels, kernel, stride, padding, bias);
    const weight = this.param(`${name}.weight`, [outChannels, c, kernel, kernel]);
    return this.op('Conv', [x, weight, bias], shape, x.dtype, {
      kernel_shape: { kind: 'ints', value: [kernel, kernel] },
      strides: { kind: 'ints', value: [stride, stride] },
      pads: { kind: 'ints', value: [padding, padding, padding, padding] },
    });
  }

  /**
   * An 8-bit convolution as an im2col product. ORT's ConvInteger runs no faster than the fp32 Conv
   * here, but MatMulInteger does (MLAS's uint8 × int8 GEMM): the input is quantized first, laid out
   * NHWC and padded with its own zero point, its kernel-position shifts are concatenated along
   * channels (in uint8: a quarter of the bytes fp32 copies would move), and the int32 product is
   * scaled back to float.
   */
  private conv2dInt8(x: Value, name: string, outChannels: number, kernel: number, stride: number, padding: number, bias: Value): Value {
    const [n, c, h, w] = x.shape;
    const { weight, scale, zeroPoint } = this.quantizedRows(`${name}.weight`, [outChannels, c, kernel, kernel], 0, outChannels);
    const [xq, xScale, xZero] = [new Value(this.fresh('xq'), x.shape, 'uint8'), new Value(this.fresh('x_scale'), [], 'float32'), new Value(this.fresh('x_zero'), [], 'uint8')];
    this.node('DynamicQuantizeLinear', [this.operand(x)], [xq.name, xScale.name, xZero.name]);
    let nhwc = this.transpose(xq, [0, 2, 3, 1]);
    if (padding > 0) {
      const pads = this.shapeConst([0, padding, padding, 0, 0, padding, padding, 0]);
      nhwc = this.op('Pad', [nhwc, pads, xZero], [n, h + 2 * padding, w + 2 * padding, c], 'uint8');
    }
    const oh = Math.floor((nhwc.shape[1] - kernel) / stride) + 1;
    const ow = Math.floor((nhwc.shape[2] - kernel) / stride) + 1;
    const shifts: Value[] = [];
    for (let dy = 0; dy < kernel; dy++) {
      for (let dx = 0; dx < kernel; dx++) {
        if (kernel === 1 && stride === 1) {
          shifts.push(nhwc);
          continue;
        }
        const ends = [dy + (oh - 1) * stride + 1, dx + (ow - 1) * stride + 1];
        shifts.push(this.op('Slice', [nhwc, this.shapeConst([dy, dx]), this.shapeConst(ends), this.shapeConst([1, 2]), this.shapeConst([stride, stride])], [n, oh, ow, c], 'uint8'));
      }
    }
    const columns = shifts.length === 1 ? shifts[0] : this.concat(shifts, 3);
    const accumulated = this.op('MatMulInteger', zeroPoint ? [columns, weight, xZero, zeroPoint] : [columns, weight, xZero], [n, oh, ow, outChannels], 'int32');
    const scaled = this.mul(this.cast(accumulated, 'float32'), this.mul(xScale, scale));
    return this.transpose(this.add(scaled, bias), [0, 3, 1, 2]);
  }

  /** Zero padding of the last two axes: [top, bottom, left, right]. */
  pad2d(x: Value, top: number, bottom: number, left: number, right: number): Value {
    const [n, c, h, w] = x.shape;
    const pads = this.shapeConst([0, 0, top, left, 0, 0, bottom, right]);
    return this.op('Pad', [x, pads], [n, c, h + top + bottom, w + left + right], x.dtype);
  }

  /** torch's F.interpolate(mode="nearest") to a target size (src = floor(dst · in/out)). */
  resizeNearest(x: Value, height: number, width: number): Value {
    const [n, c] = x.shape;
    // Target sizes: the input's own batch and channels, then the new height and width.
    const batchChannels = this.shapeOf(x, 2);
    const sizes = this.concat([batchChannels, this.shapeConst([height, width])], 0);
    const input = this.operand(x);
    const out = this.result('resize', [n, c, height, width], x.dtype);
    this.node('Resize', [input, '', '', sizes.name], [out.name], { // no roi, no scales
      mode: { kind: 'string', value: 'nearest' },
      coordinate_transformation_mode: { kind: 'string', value: 'asymmetric' },
      nearest_mode: { kind: 'string', value: 'floor' },
    });
    return out;
  }

  // ---- normalisation ---------------------------------------------------------------------

  /** torch.nn.GroupNorm on NCHW (or NC...) input, as plain ONNX: InstanceNorm over groups, then affine. */
  groupNorm(x: Value, name: string, groups: number, eps: number): Value {
    const [n, c] = x.shape;
    if (c % groups !== 0) throw new Error(`${this.prefix}${name}: ${c} channels not divisible into ${groups} groups`);
    const grouped = this.reshape(x, [n, groups, x.size / (n * groups)]);
    const ones = this.constant(new Float32Array(groups).fill(1), [groups], 'ones');
    const zeros = this.constant(new Float32Array(groups), [groups], 'zeros');
    const normed = this.op('InstanceNormalization', [grouped, ones, zeros], grouped.shape, x.dtype, {
      epsilon: { kind: 'float', value: eps },
    });
    const back = this.reshape(normed, [...x.shape]);
    const affineShape = [c, ...x.shape.slice(2).map(() => 1)];
    const gamma = this.reshape(this.param(`${name}.weight`, [c]), affineShape);
    const beta = this.reshape(this.param(`${name}.bias`, [c]), affineShape);
    return this.add(this.mul(back, gamma), beta);
  }

  /** torch.nn.LayerNorm over the last axis with affine parameters. */
  layerNorm(x: Value, name: string, eps: number): Value {
    const d = x.shape[x.rank - 1];
    const gamma = this.param(`${name}.weight`, [d]);
    const beta = this.param(`${name}.bias`, [d]);
    return this.op('LayerNormalization', [x, gamma, beta], x.shape, x.dtype, {
      axis: { kind: 'int', value: -1 },
      epsilon: { kind: 'float', value: eps },
    });
  }

  /** torch.nn.LayerNorm over the last axis without affine parameters (elementwise_affine=False). */
  layerNormPlain(x: Value, eps: number): Value {
    const d = x.shape[x.rank - 1];
    const ones = this.constant(new Float32Array(d).fill(1), [d], 'ones');
    const zeros = this.constant(new Float32Array(d), [d], 'zeros');
    return this.op('LayerNormalization', [x, ones, zeros], x.shape, x.dtype, {
      axis: { kind: 'int', value: -1 },
      epsilon: { kind: 'float', value: eps },
    });
  }

  /** RMS norm over the last axis (T5LayerNorm): x / √(mean(x²) + eps) · `{name}.weight`; no mean, no bias. */
  rmsNorm(x: Value, name: string, eps: number): Value {
    const d = x.shape[x.rank - 1];
    const meanSquare = this.op('ReduceMean', [this.mul(x, x), this.shapeConst([x.rank - 1])], [...x.shape.slice(0, -1), 1], x.dtype, {
      keepdims: { kind: 'int', value: 1 },
    });
    const rms = this.unary('Sqrt', this.add(meanSquare, this.scalar(eps)));
    return this.mul(this.param(`${name}.weight`, [d]), this.div(x, rms));
  }

  softmax(x: Value, axis = -1): Value {
    return this.op('Softmax', [x], x.shape, x.dtype, { axis: { kind: 'int', value: axis } });
  }

  // ---- attention -------------------------------------------------------------------------

  /**
   * softmax(QKᵀ·scale + bias)·V over `heads` heads. q [B, Sq, H·d], k/v [B, Sk, H·d] → [B, Sq, H·d].
   * The QKᵀ and AV products are counted as `attention` MACs.
   */
  attention(q: Value, k: Value, v: Value, heads: number, options: { scale?: number; bias?: Value; kind?: AttentionKind } = {}): Value {
    const [b, sq, dim] = q.shape;
    const sk = k.shape[1];
    const headDim = dim / heads;
    if (!Number.isInteger(headDim)) throw new Error(`attention: ${dim} channels not divisible into ${heads} heads`);
    const scale = options.scale ?? 1 / Math.sqrt(headDim);
    if ((options.kind ?? this.attentionKind) === 'mha') {
      const macs = 2 * b * heads * sq * sk * headDim;
      this.macs.attention += macs;
      this.heavyOps.push({ op: 'attention', q: [...q.shape], k: [...k.shape], heads, macs });
      // An additive bias goes in as MultiHeadAttention's attention_bias [B or 1, H or 1, Sq, Sk].
      const bias = options.bias && this.attentionBias(options.bias, sq, sk);
      const inputs = [q, k, v].map((x) => this.operand(x));
      if (bias) inputs.push('', '', this.operand(bias)); // attention_bias is input 5: no projection bias, no key padding mask
      const out = this.result('mha', [b, sq, dim], q.dtype);
      this.attentionScoreBytes = Math.max(this.attentionScoreBytes, b * heads * sq * sk * 4);
      this.node('MultiHeadAttention', inputs, [out.name], {
        num_heads: { kind: 'int', value: heads },
        scale: { kind: 'float', value: scale },
      }, 'com.microsoft');
      return out;
    }
    return this.attentionApply(this.attentionMap(q, k, heads, options), v);
  }

  /** A bias broadcastable to [B, H, Sq, Sk] as MultiHeadAttention takes it: rank 4, the last two axes full. */
  private attentionBias(bias: Value, sq: number, sk: number): Value {
    if (bias.rank !== 4 || bias.shape[3] !== sk) throw new Error(`attention bias [${bias.shape}] for keys of length ${sk}`);
    if (bias.shape[2] === sq) return bias;
    const target = [1, 1, sq, 1];
    return this.op('Expand', [bias, this.shapeConst(target)], [bias.shape[0], bias.shape[1], sq, sk], bias.dtype);
  }

  /** softmax(QKᵀ·scale + bias) per head: q [B, Sq, H·d], k [B, Sk, H·d] → the map [B, H, Sq, Sk]. */
  attentionMap(q: Value, k: Value, heads: number, options: { scale?: number; bias?: Value } = {}): Value {
    const [b, sq, dim] = q.shape;
    const sk = k.shape[1];
    const headDim = dim / heads;
    if (!Number.isInteger(headDim)) throw new Error(`attention: ${dim} channels not divisible into ${heads} heads`);
    const qh = this.transpose(this.reshape(q, [b, sq, heads, headDim]), [0, 2, 1, 3]);
    const kt = this.transpose(this.reshape(k, [b, sk, heads, headDim]), [0, 2, 3, 1]);
    let scores = this.matmul(this.mul(qh, this.scalar(options.scale ?? 1 / Math.sqrt(headDim))), kt, 'attention');
    if (options.bias) scores = this.add(scores, options.bias);
    return this.softmax(scores);
  }

  /** An attention map [B, H, Sq, Sk] applied to v [B, Sk, H·d] → [B, Sq, H·d]. */
  attentionApply(map: Value, v: Value): Value {
    const [b, heads, sq, sk] = map.shape;
    const dim = v.shape[2];
    const vh = this.transpose(this.reshape(v, [b, sk, heads, dim / heads]), [0, 2, 1, 3]);
    const out = this.matmul(map, vh, 'attention');
    return this.reshape(this.transpose(out, [0, 2, 1, 3]), [b, sq, dim]);
  }

  // ---- serialisation ---------------------------------------------------------------------

  /**
   * The ONNX model. `locate` maps a safetensors file to the external-data location written into
   * the model (relative to the folder the .onnx file will be saved in).
   */
  toModel(locate: (file: string) => string): ModelProto {
    const initializers: TensorProto[] = [...this.constants];
    for (const [name, { ref }] of this.initializers) {
      if (!ref.location) throw new Error(`graph ${this.name}: parameter ${name} has no stored data (shape-only source)`);
      const dataType = ref.dtype === 'F32' ? OnnxDataType.FLOAT : ref.dtype === 'F16' ? OnnxDataType.FLOAT16 : OnnxDataType.BFLOAT16;
      initializers.push({
        name,
        dims: ref.shape,
        dataType,
        external: { location: locate(ref.location.file), offset: ref.location.offset, length: ref.location.byteLength },
      });
    }
    const opsets = [{ domain: '', version: 18 }];
    if (this.usesContribOps) opsets.push({ domain: 'com.microsoft', version: 1 });
    return {
      irVersion: 9,
      producer: 'diffusion.ts',
      opsets,
      graph: {
        name: this.name,
        nodes: this.nodes,
        initializers,
        inputs: this.inputs.map((v) => this.valueInfo(v)),
        outputs: this.outputs.map((v) => this.valueInfo(v)),
      },
    };
  }

  private valueInfo(v: Value): ValueInfoProto {
    const shape: (number | string)[] = [...v.shape];
    if (this.dynamicBatch && shape.length > 0 && !this.unbatched.has(v.name)) shape[0] = 'batch';
    return { name: v.name, elemType: ONNX_TYPE[v.dtype], shape };
  }

  /** Parameters this graph holds as int8, to be made when its session is built. */
  quantizedParams(): QuantizedParam[] {
    return [...this.quantized.values()];
  }

  /** Safetensors files this graph's parameters live in. */
  weightFiles(): string[] {
    const files = new Set<string>();
    for (const { ref } of this.initializers.values()) if (ref.location) files.add(ref.location.file);
    return [...files];
  }

  get inputValues(): readonly Value[] {
    return this.inputs;
  }
  get outputValues(): readonly Value[] {
    return this.outputs;
  }
  get parameterCount(): number {
    let n = 0;
    for (const { ref } of [...this.initializers.values(), ...this.quantized.values()]) n += product(ref.shape);
    return n;
  }

  /** Elements per parameter (or row range of one), by name: parameters shared by segments are counted once by name. */
  parameterSizes(): Record<string, number> {
    const stored = [...this.initializers].map(([key, { ref }]) => [key, product(ref.shape)]);
    const quantized = [...this.quantized.values()].map((q) => [q.weightName, product(q.ref.shape)]);
    return Object.fromEntries([...stored, ...quantized]);
  }
}
