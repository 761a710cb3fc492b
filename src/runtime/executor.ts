/**
 * A model's forward pass is ordinary TypeScript that calls named segments through an Executor.
 * The same forward code therefore runs for real (ORT sessions), or "dry" (shapes only) to list
 * segments and count MACs without weights; acceleration plans hook in at this one call (a
 * PlannedExecutor wraps another executor, runtime/plan.ts), guided by what the model declares
 * (runtime/protocol.ts).
 */
import type { DataType, GraphBuilder, HeavyOp, MacCount, Value } from '../graph/builder.ts';
import { plainHooks, type BranchPass, type LongSkipDeclaration, type SegmentHooks, type SegmentRole } from './protocol.ts';

/** The little we need to know of a tensor to build its consumer: ort.Tensor satisfies it. */
export interface TensorLike {
  readonly dims: readonly number[];
  readonly type: string;
}

/**
 * Builds a segment's graph from its (static-shaped) inputs; returns its named outputs. Parts a
 * method may replace (an attention core, a sub-layer's token-wise body) are built through `hooks`.
 */
export type SegmentBuild = (g: GraphBuilder, inputs: Record<string, Value>, hooks: SegmentHooks) => Record<string, Value>;

/**
 * A segment whose result is `inputs[residual] + outputs[value]` — or `+ inputs[gate] · outputs[value]`
 * (an adaptive-norm block's gated sub-layer) — such as an attention block with its residual
 * connection: a plan may cache `value` and later replace the whole segment by that addition, the
 * gate applied afresh, as TGATE does with attention outputs.
 */
export interface ResidualSpec {
  value: string;
  residual: string;
  result: string;
  gate?: string;
}

export interface RunOptions {
  /** Graph outputs to produce; default: every key `build` returns except a residual spec's value. */
  outputs?: string[];
  residual?: ResidualSpec;
  /** A variant of the segment's graph (e.g. ToMe-merged): part of its identity beside the name. */
  variant?: string;
  /**
   * What else its graph depends on besides the inputs' shapes (e.g. an upsampler's output size):
   * part of its identity, so a compiled graph is never reused where it does not fit.
   */
  depends?: string;
  /** Inputs without a batch axis (their axis 0 stays static in batch-polymorphic graphs). */
  unbatched?: string[];
  /** What the segment is, for plans; segments without a role always run as built. */
  role?: SegmentRole;
}

export interface Executor<T extends TensorLike> {
  run(name: string, build: SegmentBuild, inputs: Record<string, T>, options?: RunOptions): Promise<Record<string, T>>;
  /** Whether and where to cut a pass over long skips (asked by LongSkips; plain executors never cut). */
  longSkipPass?(skips: LongSkipDeclaration, key: string): BranchPass<T> | undefined;
}

/** The outputs a call produces, given what its build returned. */
export function selectOutputs(built: string[], options: RunOptions | undefined): string[] {
  if (options?.outputs) return options.outputs;
  return built.filter((k) => k !== options?.residual?.value);
}

/** A dry-run tensor: shape and type only. */
export interface ShapedTensor extends TensorLike {
  readonly dims: number[];
  readonly type: DataType;
}

export const shaped = (dims: number[], type: DataType = 'float32'): ShapedTensor => ({ dims, type });

/** What one segment costs at the shapes it was built for. */
export interface SegmentReport {
  name: string;
  macs: MacCount;
  heavyOps: HeavyOp[];
  parameters: number;
  /** The parameters by name (a row range of one as its own name), for counting shared ones once. */
  parameterSizes: Record<string, number>;
  inputShapes: Record<string, readonly number[]>;
  outputShapes: Record<string, readonly number[]>;
  /**
   * Estimated bytes the segment's run holds at its peak: its inputs and outputs, twice its largest
   * intermediate tensor (an op's input and output live at once) and its attention scores.
   */
  workingBytes: number;
  /** The largest attention score matrix of the segment, fp32 bytes (part of workingBytes). */
  attentionScoreBytes: number;
}

export function asDataType(type: string): DataType {
  if (type === 'float32' || type === 'float16' || type === 'int64' || type === 'int32' || type === 'bool') return type;
  throw new Error(`unsupported tensor type ${type}`);
}

/** Declares the inputs of `g` from tensors, runs `build` on them and marks the selected outputs. */
export function buildSegment(g: GraphBuilder, build: SegmentBuild, inputs: Record<string, TensorLike>, options?: RunOptions): Record<string, Value> {
  const values: Record<string, Value> = {};
  for (const [key, t] of Object.entries(inputs)) values[key] = g.input(key, [...t.dims], asDataType(t.type), !options?.unbatched?.includes(key));
  const built = build(g, values, plainHooks);
  const selected: Record<string, Value> = {};
  for (const key of selectOutputs(Object.keys(built), options)) {
    if (!built[key]) throw new Error(`segment ${g.name}: no output ${key}`);
    selected[key] = built[key];
    g.output(built[key], outputName(key));
  }
  return selected;
}

/** Graph output names are prefixed so a segment may return a value under its input's key. */
export const outputName = (key: string): string => `out.${key}`;

/**
 * Identifies a compiled variant of a segment: input shapes (without the batch axis for
 * batch-polymorphic graphs) and the outputs asked for.
 */
export function shapeKey(inputs: Record<string, TensorLike>, options?: RunOptions, anyBatch = false): string {
  const shapes = Object.entries(inputs).map(([k, t]) => `${k}:${t.type}[${(anyBatch ? ['*', ...t.dims.slice(1)] : t.dims).join(',')}]`).join(';');
  const variant = (options?.variant ? `@${options.variant}:` : '') + (options?.depends ? `(${options.depends})` : '');
  return variant + (options?.outputs || options?.residual ? `${shapes}->${options.outputs?.join(',') ?? `-${options.residual!.value}`}` : shapes);
}
