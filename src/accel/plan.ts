/**
 * The acceleration framework: a method is a plan over segments × model calls. For every segment
 * call that declares a residual structure (see ResidualSpec) the plan says: compute it, compute it
 * and cache its value (optionally averaged over the CFG halves), or reuse the cached value (the
 * segment then costs one addition). A plan also says whether the CFG batch runs at each call.
 *
 * Methods compose in the order given: the first method with an opinion other than "compute"
 * decides a segment; the CFG batch runs only while every method wants it.
 * Caches are keyed by segment and tensor shape (so CFG-batch and single-batch values never mix)
 * and live for one generation.
 */
import type { Executor, RunOptions, SegmentBuild, ShapedTensor, TensorLike } from '../runtime/executor.ts';

export type Decision = 'compute' | 'cache' | 'cache-cfg-mean' | 'reuse';

export interface Accelerator {
  readonly name: string;
  /** Whether the pipeline runs the CFG batch at model call `call` (0-based). */
  cfgActive(call: number): boolean;
  /** What to do with a residual segment at model call `call`; `cfg` says whether this call has the CFG batch. */
  decide(segment: string, call: number, cfg: boolean): Decision;
}

/** Tensor operations the cache needs, per tensor kind. */
export interface CacheOps<T extends TensorLike> {
  /** [2B, ...] → [B, ...]: the mean of the unconditional and conditional halves. */
  meanOfHalves(t: T): Promise<T>;
}

export const shapedCacheOps: CacheOps<ShapedTensor> = {
  meanOfHalves: async (t) => ({ dims: [t.dims[0] / 2, ...t.dims.slice(1)], type: t.type }),
};

export function combine(accelerators: Accelerator[]): Accelerator {
  return {
    name: accelerators.map((a) => a.name).join('+'),
    cfgActive: (call) => accelerators.every((a) => a.cfgActive(call)),
    decide(segment, call, cfg) {
      for (const a of accelerators) {
        const d = a.decide(segment, call, cfg);
        if (d !== 'compute') return d;
      }
      return 'compute';
    },
  };
}

/** Wraps an executor, applying an accelerator's decisions; set `call` and `cfg` before each model call. */
export class PlannedExecutor<T extends TensorLike> implements Executor<T> {
  call = 0;
  cfg = true;
  private readonly cache = new Map<string, T>();
  /** Segment calls answered from the cache, for reports. */
  reused = 0;

  constructor(
    private readonly inner: Executor<T>,
    private readonly plan: Accelerator,
    private readonly ops: CacheOps<T>,
  ) {}

  async run(name: string, build: SegmentBuild, inputs: Record<string, T>, options?: RunOptions): Promise<Record<string, T>> {
    const spec = options?.residual;
    if (!spec) return this.inner.run(name, build, inputs, options);
    const decision = this.plan.decide(name, this.call, this.cfg);
    const residual = inputs[spec.residual];
    const cached = decision === 'reuse' ? this.cache.get(`${name}[${residual.dims.join(',')}]`) : undefined;
    // Nothing cached yet (e.g. warm_up beyond the gate): compute, as the official TGATE code does.
    if (decision === 'compute' || (decision === 'reuse' && !cached)) return this.inner.run(name, build, inputs, options);
    if (cached) {
      this.reused++;
      return this.inner.run(`${name}+cached`, (g, i) => ({ [spec.result]: g.add(i[spec.residual], i.cached) }),
        { [spec.residual]: residual, cached });
    }
    const out = await this.inner.run(name, build, inputs, { outputs: [spec.result, spec.value] });
    let value = out[spec.value];
    if (decision === 'cache-cfg-mean') value = await this.ops.meanOfHalves(value);
    this.cache.set(`${name}[${value.dims.join(',')}]`, value);
    return { [spec.result]: out[spec.result] };
  }
}
