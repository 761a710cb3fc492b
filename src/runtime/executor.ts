/**
 * A model's forward pass is ordinary TypeScript that calls named segments through an Executor.
 * The same forward code therefore runs for real (ORT sessions), or "dry" (shapes only) to list
 * segments and count MACs without weights; acceleration plans hook in at this one call.
 */
import type { DataType, GraphBuilder, HeavyOp, MacCount, Value } from '../graph/builder.ts';

/** The little we need to know of a tensor to build its consumer: ort.Tensor satisfies it. */
export interface TensorLike {
  readonly dims: readonly number[];
  readonly type: string;
}

/** Builds a segment's graph from its (static-shaped) inputs; returns its named outputs. */
export type SegmentBuild = (g: GraphBuilder, inputs: Record<string, Value>) => Record<string, Value>;

export interface Executor<T extends TensorLike> {
  run(name: string, build: SegmentBuild, inputs: Record<string, T>): Promise<Record<string, T>>;
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
  inputShapes: Record<string, readonly number[]>;
  outputShapes: Record<string, readonly number[]>;
}

export function asDataType(type: string): DataType {
  if (type === 'float32' || type === 'float16' || type === 'int64' || type === 'int32' || type === 'bool') return type;
  throw new Error(`unsupported tensor type ${type}`);
}

/** Declares the inputs of `g` from tensors and runs `build` on them. */
export function buildSegment(g: GraphBuilder, build: SegmentBuild, inputs: Record<string, TensorLike>): Record<string, Value> {
  const values: Record<string, Value> = {};
  for (const [key, t] of Object.entries(inputs)) values[key] = g.input(key, [...t.dims], asDataType(t.type));
  const outputs = build(g, values);
  for (const [key, v] of Object.entries(outputs)) g.output(v, outputName(key));
  return outputs;
}

/** Graph output names are prefixed so a segment may return a value under its input's key. */
export const outputName = (key: string): string => `out.${key}`;

export function shapeKey(inputs: Record<string, TensorLike>): string {
  return Object.entries(inputs)
    .map(([k, t]) => `${k}:${t.type}[${t.dims.join(',')}]`)
    .join(';');
}
