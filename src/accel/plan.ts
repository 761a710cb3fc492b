/**
 * The acceleration framework: a method is a plan over segments × model calls. For every segment
 * call that declares a residual structure (see ResidualSpec) the plan says: compute it, compute it
 * and cache its value (optionally averaged over the CFG halves), or reuse the cached value (the
 * segment then costs one addition). A plan also says whether the CFG batch runs at each call, and
 * may cut the U-Net at a branch (DeepCache, see BranchDecision): a full pass caches the feature
 * entering the up path there, a shallow pass runs only the layers above the branch and reuses it.
 *
 * Composition, for methods in the order given:
 * 1. The CFG batch runs only while every method wants it.
 * 2. The U-Net cut: the method with a `branch` plan (at most one) decides which segments run at
 *    all. It runs full passes at every call any method lists in `fullPassCalls` (TGATE's gate
 *    calls) and restarts its schedule there.
 * 3. For each residual segment that runs, the first method with an opinion other than "compute"
 *    decides. A segment skipped by the cut neither caches nor reuses at that call, as in the
 *    official TGATE + DeepCache code; so the order of DeepCache and TGATE does not matter.
 * Caches are keyed by segment (or branch) and tensor shape, so CFG-batch and single-batch values
 * never mix, and live in one PlannedExecutor, i.e. for one generation.
 */
import { InputError } from '../errors.ts';
import type { Executor, RunOptions, SegmentBuild, ShapedTensor, TensorLike } from '../runtime/executor.ts';

export type Decision = 'compute' | 'cache' | 'cache-cfg-mean' | 'reuse';

/** How a U-Net pass runs at one model call, for methods that cut it at a branch (DeepCache). */
export interface BranchDecision {
  /**
   * The branch (DeepCache's cache_branch_id): the shallow pass recomputes conv_in, the first
   * `branch` outputs of the down path and the up-path layers their skip connections feed.
   */
  branch: number;
  /** true: a shallow pass on the cached deep feature; false: a full pass that caches it. */
  reuse: boolean;
}

/** What a plan may need to know of the run as a whole. */
export interface RunInfo {
  /** Inference steps of the run (non-uniform schedules spread over them); undefined if not told. */
  steps?: number;
  /** Calls at which some composed method needs a full pass (sorted). */
  fullPassCalls: readonly number[];
}

/** What a transformer block tells a token-merging plan (ToMe) before it runs. */
export interface TokenMergeRequest {
  block: string;
  /** Tokens of the block (h·w at its resolution) and the batch at this call. */
  tokens: number;
  batch: number;
  /** The U-Net's input latent size, from which the block's downsampling follows. */
  latentHeight: number;
  latentWidth: number;
}

/** How a block merges its tokens: the src/dst partition, how many src merge, and where. */
export interface TokenMergePlan {
  src: number[];
  dst: number[];
  r: number;
  /** Merge around self-attention, cross-attention, the MLP. */
  attn: boolean;
  cross: boolean;
  mlp: boolean;
}

/** Attention-map reuse at one attention segment and call: compute plainly, compute and store the map, or reuse the stored map. */
export type MapDecision = 'compute' | 'store' | 'reuse';

export interface Accelerator {
  readonly name: string;
  /** Whether the pipeline runs the CFG batch at model call `call` (0-based). */
  cfgActive(call: number): boolean;
  /** What to do with a residual segment at model call `call`; `cfg` says whether this call has the CFG batch. */
  decide(segment: string, call: number, cfg: boolean): Decision;
  /**
   * Calls at which this method needs every segment to run (TGATE: gate_step−1, where every
   * attention output is cached, and gate_step, where the batch loses its CFG half).
   */
  readonly fullPassCalls?: readonly number[];
  /** The U-Net cut at model call `call`; absent or undefined: a plain full pass. */
  branch?(call: number, run: RunInfo): BranchDecision | undefined;
  /** Token merging for one transformer block at this call; undefined: the block runs unmerged. */
  tokenMerge?(request: TokenMergeRequest): TokenMergePlan | undefined;
  /** Attention-map reuse for attention segment `segment` at call `call` of a run of `calls` model calls. */
  attentionMap?(segment: string, call: number, calls: number): MapDecision;
  /** The type stored attention maps are kept in, and the bytes they may take (0 or absent: no limit). */
  readonly mapType?: 'float16' | 'float32';
  readonly mapBudgetBytes?: number;
  /** Refuses a run of `calls` model calls the plan cannot serve (e.g. a schedule of another length). */
  checkRun?(calls: number): void;
}

/** What an attention segment gets from a map-reusing plan: a stored map to apply, or a place to store its own. */
export interface AttentionMapPass<T> {
  reuse?: T;
  store?(map: T): void;
  type: 'float16' | 'float32';
}

export interface AttentionMapPlanner<T> {
  /** Asked before each attention segment runs; `key` identifies the input shapes (maps are kept per key). */
  attentionMap(segment: string, key: string): AttentionMapPass<T> | undefined;
}

export function attentionMapPlanner<T extends TensorLike>(exec: Executor<T>): AttentionMapPlanner<T> | undefined {
  const candidate = exec as Executor<T> & Partial<AttentionMapPlanner<T>>;
  return typeof candidate.attentionMap === 'function' ? (candidate as AttentionMapPlanner<T>) : undefined;
}

const bytesOf = (t: TensorLike) => t.dims.reduce((a, b) => a * b, 1) * (t.type === 'float16' ? 2 : 4);

/** A block's token merge with the partition as tensors, as a model's forward pass receives it. */
export interface TokenMerge<T> {
  src: T;
  dst: T;
  r: number;
  attn: boolean;
  cross: boolean;
  mlp: boolean;
}

/** An executor that plans token merging (PlannedExecutor); models ask through `tokenMergePlanner`. */
export interface TokenMergePlanner<T> {
  tokenMerge(request: TokenMergeRequest): TokenMerge<T> | undefined;
}

export function tokenMergePlanner<T extends TensorLike>(exec: Executor<T>): TokenMergePlanner<T> | undefined {
  const candidate = exec as Executor<T> & Partial<TokenMergePlanner<T>>;
  return typeof candidate.tokenMerge === 'function' ? (candidate as TokenMergePlanner<T>) : undefined;
}

/** What a model's forward pass gets from a planning executor when it is to be cut at a branch. */
export interface BranchPass<T> {
  branch: number;
  /** The cached deep feature: present → shallow pass from it; absent → full pass that must `store` it. */
  reuse?: T;
  store(feature: T): void;
}

/** An executor that can plan cuts (PlannedExecutor); models ask through `branchPlanner`. */
export interface BranchPlanner<T> {
  /** Asked once per forward pass; `key` identifies the input shapes (the cache is kept per key). */
  branchPass(key: string): BranchPass<T> | undefined;
}

/** The executor's branch planner, if it has one (any executor may be handed to a model). */
export function branchPlanner<T extends TensorLike>(exec: Executor<T>): BranchPlanner<T> | undefined {
  const candidate = exec as Executor<T> & Partial<BranchPlanner<T>>;
  return typeof candidate.branchPass === 'function' ? (candidate as BranchPlanner<T>) : undefined;
}

/** Tensor operations the cache needs, per tensor kind. */
export interface CacheOps<T extends TensorLike> {
  /** [2B, ...] → [B, ...]: the mean of the unconditional and conditional halves. */
  meanOfHalves(t: T): Promise<T>;
  /** A 1-D int64 tensor (token index lists). */
  indices(values: number[]): T;
}

export const shapedCacheOps: CacheOps<ShapedTensor> = {
  meanOfHalves: async (t) => ({ dims: [t.dims[0] / 2, ...t.dims.slice(1)], type: t.type }),
  indices: (values) => ({ dims: [values.length], type: 'int64' }),
};

export function combine(accelerators: Accelerator[]): Accelerator {
  const cutters = accelerators.filter((a) => a.branch);
  if (cutters.length > 1) {
    throw new InputError('--accel', `${cutters.map((a) => a.name).join(' and ')} both cut the U-Net at a branch`, 'one such method at a time');
  }
  const cutter = cutters[0];
  const mergers = accelerators.filter((a) => a.tokenMerge);
  if (mergers.length > 1) throw new InputError('--accel', `${mergers.map((a) => a.name).join(' and ')} both merge tokens`, 'one such method at a time');
  const mappers = accelerators.filter((a) => a.attentionMap);
  if (mappers.length > 1) throw new InputError('--accel', `${mappers.map((a) => a.name).join(' and ')} both reuse attention maps`, 'one such method at a time');
  if (mappers.length && mergers.length) {
    throw new InputError('--accel', `${mergers[0].name} and ${mappers[0].name} cannot be combined: token merging pairs different tokens at every call, so a stored attention map no longer fits its tokens`, 'one of them');
  }
  const fullPassCalls = [...new Set(accelerators.flatMap((a) => a.fullPassCalls ?? []))].sort((a, b) => a - b);
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
    fullPassCalls,
    branch: cutter && ((call, run) => cutter.branch!(call, run)),
    tokenMerge: mergers[0] && ((request) => mergers[0].tokenMerge!(request)),
    attentionMap: mappers[0] && ((segment, call, calls) => mappers[0].attentionMap!(segment, call, calls)),
    mapType: mappers[0]?.mapType,
    mapBudgetBytes: mappers[0]?.mapBudgetBytes,
    checkRun: (calls) => accelerators.forEach((a) => a.checkRun?.(calls)),
  };
}

/** Cached values are keyed by segment and shape, so CFG-batch and single-batch values never mix. */
const cacheKey = (segment: string, t: TensorLike) => `${segment}[${t.dims.join(',')}]`;

/**
 * Wraps an executor, applying an accelerator's decisions; set `call` and `cfg` before each model
 * call, and `steps` once before the first where a plan needs it (DeepCache's non-uniform schedule).
 */
export class PlannedExecutor<T extends TensorLike> implements Executor<T>, BranchPlanner<T>, TokenMergePlanner<T>, AttentionMapPlanner<T> {
  call = 0;
  cfg = true;
  /** Inference steps of this run (not model calls: PNDM makes one call more). */
  steps?: number;
  /** Model calls of this run, for plans scheduled over them (attention-map reuse). */
  calls?: number;
  private readonly cache = new Map<string, T>();
  private readonly deep = new Map<string, T>();
  /** Segment calls answered from the cache, for reports. */
  reused = 0;
  /** Model calls that ran the shallow branch on a cached deep feature, for reports. */
  shallowPasses = 0;
  /** Transformer-block runs with merged tokens, for reports. */
  mergedBlocks = 0;
  /** Attention segments that ran on a stored map, and the most bytes the stored maps took at once. */
  reusedMaps = 0;
  peakMapBytes = 0;
  /** Attention segments allowed to store maps (a memory budget may leave some out); undefined: all. */
  mapSegments?: ReadonlySet<string>;
  private readonly maps = new Map<string, { segment: string; map: T }>();
  private mapBytes = 0;
  private readonly indexTensors = new Map<string, T>();

  constructor(
    private readonly inner: Executor<T>,
    private readonly plan: Accelerator,
    private readonly ops: CacheOps<T>,
  ) {}

  branchPass(key: string): BranchPass<T> | undefined {
    const decision = this.plan.branch?.(this.call, { steps: this.steps, fullPassCalls: this.plan.fullPassCalls ?? [] });
    if (!decision) return undefined;
    const slot = `${decision.branch}[${key}]`;
    // Nothing cached at this shape yet (first call, or the batch changed): a full pass instead.
    const reuse = decision.reuse ? this.deep.get(slot) : undefined;
    if (reuse) this.shallowPasses++;
    return { branch: decision.branch, reuse, store: (feature) => void this.deep.set(slot, feature) };
  }

  tokenMerge(request: TokenMergeRequest): TokenMerge<T> | undefined {
    const plan = this.plan.tokenMerge?.(request);
    if (!plan) return undefined;
    this.mergedBlocks++;
    const tensor = (values: number[]) => {
      const key = values.join(',');
      let t = this.indexTensors.get(key);
      if (!t) this.indexTensors.set(key, (t = this.ops.indices(values)));
      return t;
    };
    return { ...plan, src: tensor(plan.src), dst: tensor(plan.dst) };
  }

  attentionMap(segment: string, key: string): AttentionMapPass<T> | undefined {
    if (this.plan.attentionMap && this.calls === undefined) throw new Error('PlannedExecutor: set calls before running a map-reusing plan');
    const decision = this.plan.attentionMap?.(segment, this.call, this.calls!);
    if (!decision || decision === 'compute' || (this.mapSegments && !this.mapSegments.has(segment))) return undefined;
    const type = this.plan.mapType ?? 'float16';
    const slot = `${segment}[${key}]`;
    const stored = this.maps.get(slot);
    // Nothing stored yet at these shapes (e.g. the batch changed): compute and store instead.
    if (decision === 'reuse' && stored) {
      this.reusedMaps++;
      return { reuse: stored.map, type };
    }
    return {
      type,
      store: (map) => {
        const old = this.maps.get(slot);
        this.mapBytes += bytesOf(map) - (old ? bytesOf(old.map) : 0);
        this.peakMapBytes = Math.max(this.peakMapBytes, this.mapBytes);
        this.maps.set(slot, { segment, map });
      },
    };
  }

  /** Bytes of every stored map, by segment. */
  storedMaps(): { segment: string; bytes: number }[] {
    return [...this.maps.values()].map(({ segment, map }) => ({ segment, bytes: bytesOf(map) }));
  }

  async run(name: string, build: SegmentBuild, inputs: Record<string, T>, options?: RunOptions): Promise<Record<string, T>> {
    const spec = options?.residual;
    if (!spec) return this.inner.run(name, build, inputs, options);
    const decision = this.plan.decide(name, this.call, this.cfg);
    const residual = inputs[spec.residual];
    const cached = decision === 'reuse' ? this.cache.get(cacheKey(name, residual)) : undefined;
    // Nothing cached yet (e.g. warm_up beyond the gate): compute, as the official TGATE code does.
    if (decision === 'compute' || (decision === 'reuse' && !cached)) return this.inner.run(name, build, inputs, options);
    if (cached) {
      this.reused++;
      return this.inner.run(`${name}+cached`, (g, i) => ({ [spec.result]: g.add(i[spec.residual], i.cached) }),
        { [spec.residual]: residual, cached });
    }
    const out = await this.inner.run(name, build, inputs, { ...options, outputs: [...(options?.outputs ?? [spec.result]), spec.value] });
    let value = out[spec.value];
    if (decision === 'cache-cfg-mean') value = await this.ops.meanOfHalves(value);
    this.cache.set(cacheKey(name, value), value);
    return Object.fromEntries(Object.entries(out).filter(([k]) => k !== spec.value));
  }
}
