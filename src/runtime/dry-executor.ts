/**
 * Runs a forward pass on shapes alone: builds each segment's graph (so shapes are checked and
 * MACs counted exactly) and records one report per segment call, in call order.
 */
import { DATA_TYPE_BYTES, GraphBuilder, type ParamSource } from '../graph/builder.ts';
import { buildSegment, type Executor, type RunOptions, type SegmentBuild, type SegmentReport, type ShapedTensor } from './executor.ts';

/** Parameters known by shape only; enough to build graphs and count MACs. */
export const shapeOnlyParams: ParamSource = {
  param: (name, shape) => ({ name, shape, dtype: 'F32' }),
};

export class DryExecutor implements Executor<ShapedTensor> {
  readonly calls: SegmentReport[] = [];

  constructor(private readonly params: ParamSource = shapeOnlyParams) {}

  async run(name: string, build: SegmentBuild, inputs: Record<string, ShapedTensor>, options?: RunOptions): Promise<Record<string, ShapedTensor>> {
    const g = new GraphBuilder(name, this.params);
    const outputs = buildSegment(g, build, inputs, options);
    const result: Record<string, ShapedTensor> = {};
    for (const [key, v] of Object.entries(outputs)) result[key] = { dims: [...v.shape], type: v.dtype };
    this.calls.push({
      name: options?.variant ? `${name}@${options.variant}` : name,
      macs: { ...g.macs },
      heavyOps: g.heavyOps,
      parameters: g.parameterCount,
      parameterSizes: g.parameterSizes(),
      inputShapes: Object.fromEntries(Object.entries(inputs).map(([k, t]) => [k, t.dims])),
      outputShapes: Object.fromEntries(Object.entries(result).map(([k, t]) => [k, t.dims])),
      workingBytes: tensorBytes(inputs) + tensorBytes(result) + 2 * g.largestActivationBytes + g.attentionScoreBytes,
      attentionScoreBytes: g.attentionScoreBytes,
    });
    return result;
  }
}

function tensorBytes(tensors: Record<string, ShapedTensor>): number {
  return Object.values(tensors).reduce((sum, t) => sum + t.dims.reduce((a, b) => a * b, DATA_TYPE_BYTES[t.type]), 0);
}
