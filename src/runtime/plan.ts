/**
 * What an acceleration plan may answer, and the executor that carries the answers out. A method
 * (one file in src/accel/) is an Accelerator; it never sees a model's code, only what the model
 * declares (runtime/protocol.ts):
 * - per model call: whether the pipeline runs the CFG batch;
 * - per residual segment (RunOptions.residual) and call: compute it, compute it and cache its
 *   value (optionally the mean of the CFG halves), or reuse the cached value — the segment then
 *   costs one addition;
 * - per pass: whether to cut the model at a branch of its long skips (LongSkips), running a
 *   shallow pass on a feature cached by the last full pass;
 * - per generation, hooks that see every segment call with a role, inputs included, before any of
 *   the above is decided, and may run it as a variant of its graph (other SegmentHooks, extra
 *   inputs and outputs). A hook is async and may run segments of its own and read their values,
 *   so decisions may depend on tensors computed on the device;
 * - per generation, hooks `around` each segment call with a role (the one mechanism for decisions
 *   from tensor values): they see its inputs, may run it (with everything above) and look at its
 *   outputs, or answer it without running it — First-Block-Cache and TeaCache skip spans of blocks
 *   this way, deciding from residuals the run has just computed.
 * Before any work a plan checks the model's declaration and the run, and may rehearse one model
 * call on shapes alone (to size what it will store).
 *
 * Composition, for methods in the order given:
 * 1. The CFG batch runs only while every method wants it.
 * 2. The cut: the method answering `branch` (at most one) decides which segments run at all. It
 *    runs full passes at every call any method lists in `fullPassCalls` (TGATE's gate calls) and
 *    restarts its schedule there.
 * 3. Every method's hooks see each segment call that runs; their variants compose (later ones
 *    wrap earlier ones' hooks; each one's inputs and outputs under its own name).
 * 4. For each residual segment that runs, the first method with an opinion other than "compute"
 *    decides. A segment skipped by the cut neither caches nor reuses at that call, as in the
 *    official TGATE + DeepCache code; so the order of DeepCache and TGATE does not matter.
 * Two methods that claim the same kind of change, or where one conflicts with what the other
 * claims, are refused. Caches are keyed by segment (or branch) and tensor shape, so CFG-batch and
 * single-batch values never mix, and live in one PlannedExecutor, i.e. for one generation. After each
 * model call the pipeline frees every output the plan does not hold (PlannedExecutor.held).
 */
import { InputError } from '../errors.ts';
import { DATA_TYPE_BYTES, type Value } from '../graph/builder.ts';
import { DryExecutor } from './dry-executor.ts';
import type { Executor, ResidualSpec, RunOptions, SegmentBuild, ShapedTensor, TensorLike } from './executor.ts';
import type { BranchPass, LongSkipDeclaration, ModelDeclaration, SegmentHooks, SegmentRole } from './protocol.ts';

export type Decision = 'compute' | 'cache' | 'cache-cfg-mean' | 'reuse';

/** How a pass runs at one model call, for a plan that cuts the model at a branch of its long skips. */
export interface BranchDecision {
  branch: number;
  /** true: a shallow pass on the cached feature; false: a full pass that caches it. */
  reuse: boolean;
}

/** What a plan may need to know of the run as a whole. */
export interface RunInfo {
  /** Inference steps (non-uniform schedules spread over them); undefined if not told. */
  steps?: number;
  /** Model calls (PNDM makes one more than steps); undefined if not told. */
  calls?: number;
  /** Calls at which some composed method needs a full pass (sorted). */
  fullPassCalls: readonly number[];
  /** The timestep each model call that runs gets (for methods that act on noise levels: Skip-Cache); undefined if not told. */
  timesteps?: readonly number[];
  /** Whether the device computes in float16 (false: a WebGPU adapter without shader-f16); undefined if not told. */
  halfFloats?: boolean;
}

/** What a caller tells of its run (the rest of RunInfo comes from the plan). */
export type RunShape = Omit<RunInfo, 'fullPassCalls'>;

/** A segment as a residual decision sees it. */
export interface SegmentRef {
  name: string;
  role: SegmentRole;
}

/** One segment call as a plan's hooks see it. */
export interface SegmentCall<T> extends SegmentRef {
  inputs: Record<string, T>;
  /** The input shapes in a few characters: what a plan keeps per segment is kept per key. */
  key: string;
}

/** Where in the run a segment call happens. */
export interface CallInfo {
  call: number;
  /** Whether this model call has the CFG batch. */
  cfg: boolean;
}

/**
 * A different graph for one segment call, supplied by a method: its hooks replace the model's
 * (`inner` are those it would have had), fed by extra inputs (`own`, under the variant's keys);
 * `emit` adds an output, which reaches `ran` — unless another method answered the call from a cache.
 */
export interface SegmentVariant<T> {
  /** Part of the compiled segment's identity beside its name and shapes. */
  name: string;
  inputs?: Record<string, T>;
  /** Extra inputs without a batch axis. */
  unbatched?: string[];
  /** Keys `hooks` will emit. */
  emits?: string[];
  hooks(own: Record<string, Value>, inner: SegmentHooks, emit: (key: string, value: Value) => void): Partial<SegmentHooks>;
  ran?(emitted: Record<string, T>): void;
}

/** Tensor operations plans need, per tensor kind. */
export interface TensorOps<T extends TensorLike> {
  /** [2B, ...] → [B, ...]: the mean of the unconditional and conditional halves, `name`'s value, computed where `exec` runs. */
  meanOfHalves(t: T, exec: Executor<T>, name: string): Promise<T>;
  /** mean |a − reference| / mean |reference| (NaN on shapes alone, where there are no values). */
  relativeL1(a: T, reference: T): Promise<number>;
  /** A 1-D int64 tensor (token index lists). */
  indices(values: number[]): T;
}

export const shapedOps: TensorOps<ShapedTensor> = {
  meanOfHalves: async (t) => ({ dims: [t.dims[0] / 2, ...t.dims.slice(1)], type: t.type }),
  relativeL1: async () => Number.NaN,
  indices: (values) => ({ dims: [values.length], type: 'int64' }),
};

/** What a method's hooks get for one generation. */
export interface PlanContext<T extends TensorLike> {
  /** Runs segments of the method's own (e.g. ToMe's token matching). */
  exec: Executor<T>;
  ops: TensorOps<T>;
  run: RunInfo;
}

/** A method's doings during one generation; made afresh for each, so no state leaks into the next. */
export interface RunHooks<T extends TensorLike> {
  /** Sees every segment call with a role that runs; may answer a variant to run it as. */
  variant?(segment: SegmentCall<T>, at: CallInfo): Promise<SegmentVariant<T> | undefined>;
  /**
   * Wraps every segment call with a role: `next()` runs it as the rest of the plan says (variants,
   * caches) and gives its outputs; the hook may look at them, or answer without calling `next` —
   * then with the outputs the model reads (`residual.result` for a residual segment). `probe(v)`
   * runs the segment's graph as variant `v` for `v`'s emitted values alone (nothing else of the
   * plan applies; what the model would output is pruned), e.g. a block's modulated input.
   */
  around?(segment: SegmentCall<T>, at: CallInfo, next: () => Promise<Record<string, T>>, residual: ResidualSpec | undefined,
    probe: (variant: SegmentVariant<T>) => Promise<Record<string, T>>): Promise<Record<string, T>>;
  /**
   * Every tensor the method keeps for a later model call (stored maps, residuals): the executor
   * frees all other outputs after each call (a GPU's buffers live until freed), so one kept and
   * not listed fails as a freed input.
   */
  held?(): Iterable<T>;
  /** Counters for reports, by name. */
  stats?(): Record<string, number>;
  /** What the method did, in words (undefined: nothing worth saying). */
  summary?(): string | undefined;
}

/** One model call at the CFG batch on shapes alone, through a given plan (see Accelerator.prepare). */
export type Rehearsal = (plan: Accelerator) => Promise<void>;

/** The Rehearsal of a model call: `forward` on a DryExecutor, through the plan. */
export function dryRehearsal(forward: (exec: Executor<ShapedTensor>) => Promise<unknown>, run: RunShape): Rehearsal {
  return async (plan) => void (await forward(new PlannedExecutor(new DryExecutor(), plan, shapedOps, run)));
}

export interface Accelerator {
  readonly name: string;
  /** Whether the pipeline runs the CFG batch at model call `call` (0-based); default yes. */
  cfgActive?(call: number): boolean;
  /** What to do with a residual segment at model call `call`; `cfg`: whether this call has the CFG batch. Default compute. */
  decide?(segment: SegmentRef, call: number, cfg: boolean, run: RunInfo): Decision;
  /** Calls at which this method needs every segment to run (TGATE: gate_step−1 and gate_step). */
  readonly fullPassCalls?: readonly number[];
  /** The cut at model call `call`; undefined: a plain full pass. */
  branch?(call: number, run: RunInfo): BranchDecision | undefined;
  /** Kinds of change no second method may make at once, each with what it does in words ("merge tokens"). */
  readonly claims?: Readonly<Record<string, string>>;
  /** Kinds of change another method must not make beside this one, each with the reason. */
  readonly conflicts?: Readonly<Record<string, string>>;
  /** Refuses a model or a run the plan cannot serve, before any work. */
  check?(model: ModelDeclaration, run: RunInfo): void;
  /** Before the run: may rehearse a model call to size what it will keep; returns warnings. */
  prepare?(rehearse: Rehearsal): Promise<string[]>;
  /**
   * Bytes the method keeps between model calls at most, beyond the residual values its `decide`
   * caches (plannedMemory counts those for every method); for the memory check before any work.
   */
  keeps?(rehearse: Rehearsal, run: RunInfo): Promise<number>;
  /** The method's hooks for one generation. */
  begin?<T extends TensorLike>(context: PlanContext<T>): RunHooks<T>;
  /** A composed plan's methods, in order (each one's hooks are begun and asked in turn). */
  readonly parts?: readonly Accelerator[];
}

/** One accelerator from several, composed in the order given (see the rules above). */
export function combine(accelerators: Accelerator[]): Accelerator {
  const claimed = new Map<string, { by: string; what: string }>();
  for (const a of accelerators) {
    for (const [kind, what] of Object.entries(a.claims ?? {})) {
      const first = claimed.get(kind);
      if (first) throw new InputError('accel', `${first.by} and ${a.name} both ${first.what}`, 'one such method at a time');
      claimed.set(kind, { by: a.name, what });
    }
  }
  for (const a of accelerators) {
    for (const [kind, reason] of Object.entries(a.conflicts ?? {})) {
      const other = claimed.get(kind);
      if (other && other.by !== a.name) throw new InputError('accel', `${other.by} and ${a.name} cannot be combined: ${reason}`, 'one of them');
    }
  }
  const cutters = accelerators.filter((a) => a.branch);
  if (cutters.length > 1) throw new Error(`${cutters.map((a) => a.name).join(' and ')} both answer branch but claim no cut`);
  const cutter = cutters[0];
  return {
    name: accelerators.map((a) => a.name).join('+'),
    claims: Object.fromEntries([...claimed].map(([kind, c]) => [kind, c.what])),
    cfgActive: (call) => accelerators.every((a) => a.cfgActive?.(call) ?? true),
    decide(segment, call, cfg, run) {
      for (const a of accelerators) {
        const d = a.decide?.(segment, call, cfg, run) ?? 'compute';
        if (d !== 'compute') return d;
      }
      return 'compute';
    },
    fullPassCalls: [...new Set(accelerators.flatMap((a) => a.fullPassCalls ?? []))].sort((a, b) => a - b),
    branch: cutter && ((call, run) => cutter.branch!(call, run)),
    check: (model, run) => accelerators.forEach((a) => a.check?.(model, run)),
    async prepare(rehearse) {
      const warnings: string[] = [];
      for (const a of accelerators) warnings.push(...((await a.prepare?.(rehearse)) ?? []));
      return warnings;
    },
    async keeps(rehearse, run) {
      let bytes = 0;
      for (const a of accelerators) bytes += (await a.keeps?.(rehearse, run)) ?? 0;
      return bytes;
    },
    parts: accelerators,
  };
}

/**
 * What a plan keeps between the model calls of a run at most, from one model call at the CFG batch
 * on shapes alone: each residual value its decisions cache at some call, and what its methods keep
 * themselves (Accelerator.keeps). Values are cached by shape, so a segment may hold one at the CFG
 * batch and one at half of it (a call the plan runs without CFG, or the CFG mean) at once; `cfg`:
 * whether the run uses CFG at all (`forward` is then at the CFG batch). Cut features and the
 * residuals of span caches (one tensor each) are left out.
 */
export async function plannedMemory(plan: Accelerator, forward: (exec: Executor<ShapedTensor>) => Promise<unknown>,
  run: RunShape & { calls: number }, cfg = true): Promise<number> {
  const dry = new DryExecutor();
  const residuals: { segment: SegmentRef; bytes: number }[] = [];
  await forward({
    async run(name, build, inputs, options = {}) {
      const spec = options.residual;
      if (!spec || !options.role) return dry.run(name, build, inputs, options);
      const { [spec.value]: value, ...out } = await dry.run(name, build, inputs, { ...options, outputs: [...(options.outputs ?? [spec.result]), spec.value] });
      residuals.push({ segment: { name, role: options.role }, bytes: value.dims.reduce((a, b) => a * b, DATA_TYPE_BYTES[value.type]) });
      return out;
    },
  });
  const info: RunInfo = { ...run, fullPassCalls: plan.fullPassCalls ?? [] };
  let bytes = 0;
  for (const { segment, bytes: full } of residuals) {
    let [atCfgBatch, atHalf] = [false, false];
    for (let call = 0; call < run.calls && !(atCfgBatch && atHalf); call++) {
      const cfgNow = cfg && (plan.cfgActive?.(call) ?? true);
      const d = plan.decide?.(segment, call, cfgNow, info) ?? 'compute';
      // Without CFG at all, `full` is already the single batch's size.
      if (d === 'cache' && (cfgNow || !cfg)) atCfgBatch = true;
      else if (d === 'cache' || d === 'cache-cfg-mean') atHalf = true;
    }
    bytes += (atCfgBatch ? full : 0) + (atHalf ? full / 2 : 0);
  }
  return bytes + ((await plan.keeps?.(dryRehearsal(forward, run), info)) ?? 0);
}

/** Cached values are keyed by segment and shape, so CFG-batch and single-batch values never mix. */
const cacheKey = (segment: string, t: TensorLike) => `${segment}[${t.dims.join(',')}]`;

const shapesOf = (inputs: Record<string, TensorLike>) => Object.values(inputs).map((t) => t.dims.join('x')).join(';');

/**
 * The segment call with a variant's inputs, hooks and outputs added. Its inputs and outputs go
 * into the graph as `<variant>.<key>`, so they can never clash with the model's own.
 */
function withVariant<T extends TensorLike>(build: SegmentBuild, inputs: Record<string, T>, options: RunOptions, v: SegmentVariant<T>) {
  const graphKey = (key: string) => `${v.name}.${key}`;
  const ownKeys = Object.keys(v.inputs ?? {});
  return {
    build: ((g, i, hooks) => {
      const emitted: Record<string, Value> = {};
      const own = v.hooks(Object.fromEntries(ownKeys.map((k) => [k, i[graphKey(k)]])), hooks, (key, value) => void (emitted[graphKey(key)] = value));
      return { ...build(g, i, { ...hooks, ...own }), ...emitted };
    }) as SegmentBuild,
    inputs: { ...inputs, ...Object.fromEntries(ownKeys.map((k) => [graphKey(k), v.inputs![k]])) },
    options: {
      ...options,
      variant: options.variant ? `${options.variant}+${v.name}` : v.name,
      unbatched: [...(options.unbatched ?? []), ...(v.unbatched ?? []).map(graphKey)],
    },
    emits: (v.emits ?? []).map(graphKey),
    /** The variant's outputs under its own keys. */
    emitted: (out: Record<string, T>) => Object.fromEntries((v.emits ?? []).map((k) => [k, out[graphKey(k)]])),
  };
}

/**
 * Wraps an executor, applying a plan's answers; set `call` and `cfg` before each model call. The
 * run's steps and calls are given at construction, where a plan needs them.
 */
export class PlannedExecutor<T extends TensorLike> implements Executor<T> {
  call = 0;
  cfg = true;
  readonly runInfo: RunInfo;
  private readonly hooks: RunHooks<T>[];
  /** The hooks with an `around`, innermost first (the first given wraps the others). */
  private readonly arounds: RunHooks<T>[];
  private readonly cache = new Map<string, T>();
  private readonly features = new Map<string, T>();
  /** Segment calls answered from the cache. */
  private reusedSegments = 0;
  /** Model calls that ran a shallow pass on a cached feature. */
  private shallowPasses = 0;

  constructor(
    private readonly inner: Executor<T>,
    private readonly plan: Accelerator,
    private readonly ops: TensorOps<T>,
    run: RunShape = {},
  ) {
    this.runInfo = { ...run, fullPassCalls: plan.fullPassCalls ?? [] };
    const context = { exec: inner, ops, run: this.runInfo };
    this.hooks = (plan.parts ?? [plan]).flatMap((method) => (method.begin ? [method.begin(context)] : []));
    this.arounds = this.hooks.filter((h) => h.around).reverse();
  }

  /** What the plan did so far: counters by name, and the same in words. */
  report(): { stats: Record<string, number>; summary: string[] } {
    const stats = Object.assign({ reusedSegments: this.reusedSegments, shallowPasses: this.shallowPasses }, ...this.hooks.map((h) => h.stats?.() ?? {}));
    const summary = [
      this.reusedSegments ? `${this.reusedSegments} segment calls answered from the cache` : '',
      this.shallowPasses ? `${this.shallowPasses} shallow passes` : '',
      ...this.hooks.map((h) => h.summary?.() ?? ''),
    ].filter(Boolean);
    return { stats, summary };
  }

  /** What the plan keeps for later model calls: cached values, cut features and what its methods hold. */
  *held(): Iterable<T> {
    yield* this.cache.values();
    yield* this.features.values();
    for (const h of this.hooks) yield* h.held?.() ?? [];
  }

  longSkipPass(_skips: LongSkipDeclaration, key: string): BranchPass<T> | undefined {
    const decision = this.plan.branch?.(this.call, this.runInfo);
    if (!decision) return undefined;
    const slot = `${decision.branch}[${key}]`;
    // Nothing cached at this shape yet (first call, or the batch changed): a full pass instead.
    const reuse = decision.reuse ? this.features.get(slot) : undefined;
    if (reuse) this.shallowPasses++;
    return { branch: decision.branch, reuse, store: (feature) => void this.features.set(slot, feature) };
  }

  async run(name: string, build: SegmentBuild, inputs: Record<string, T>, options: RunOptions = {}): Promise<Record<string, T>> {
    const role = options.role;
    if (!role) return this.inner.run(name, build, inputs, options);
    const segment: SegmentCall<T> = { name, role, inputs, key: shapesOf(inputs) };
    const at = { call: this.call, cfg: this.cfg };
    let next = () => this.runPlanned(segment, build, options);
    if (this.arounds.length === 0) return next();
    const probe = async (v: SegmentVariant<T>) => {
      const withIt = withVariant(build, inputs, { ...options, residual: undefined }, v);
      return withIt.emitted(await this.inner.run(name, withIt.build, withIt.inputs, { ...withIt.options, outputs: withIt.emits }));
    };
    for (const h of this.arounds) {
      const inner = next;
      next = () => h.around!(segment, at, inner, options.residual, probe);
    }
    return next();
  }

  /** A segment call with the plan's variants and residual decision applied. */
  private async runPlanned(segment: SegmentCall<T>, build: SegmentBuild, options: RunOptions): Promise<Record<string, T>> {
    const { name, inputs } = segment;
    const variants: SegmentVariant<T>[] = [];
    for (const h of this.hooks) {
      const v = await h.variant?.(segment, { call: this.call, cfg: this.cfg });
      if (v) variants.push(v);
    }
    const spec = options.residual;
    const decision = spec ? (this.plan.decide?.(segment, this.call, this.cfg, this.runInfo) ?? 'compute') : 'compute';
    if (spec && decision === 'reuse') {
      const residual = inputs[spec.residual];
      const cached = this.cache.get(cacheKey(name, residual));
      if (cached) {
        this.reusedSegments++;
        const gate = spec.gate ? { [spec.gate]: inputs[spec.gate] } : {};
        return this.inner.run(`${name}+cached`, (g, i) => ({ [spec.result]: g.add(i[spec.residual], spec.gate ? g.mul(i[spec.gate], i.cached) : i.cached) }),
          { [spec.residual]: residual, cached, ...gate });
      }
      // Nothing cached yet (e.g. warm_up beyond the gate): compute, as the official TGATE code does.
    }
    const caching = spec && (decision === 'cache' || decision === 'cache-cfg-mean');
    // Later variants wrap earlier ones' hooks.
    let call = { build, inputs, options };
    const applied = variants.map((v) => {
      const withIt = withVariant(call.build, call.inputs, call.options, v);
      call = withIt;
      return { variant: v, emits: withIt.emits, emitted: withIt.emitted };
    });
    const emits = applied.flatMap((a) => a.emits);
    if (caching) call.options = { ...call.options, outputs: [...(options.outputs ?? [spec.result]), ...emits, spec.value] };
    const out = await this.inner.run(name, call.build, call.inputs, call.options);
    if (caching) {
      let value = out[spec.value];
      if (decision === 'cache-cfg-mean') value = await this.ops.meanOfHalves(value, this.inner, name);
      this.cache.set(cacheKey(name, value), value);
    }
    for (const a of applied) a.variant.ran?.(a.emitted(out));
    const hidden = new Set([spec?.value, ...emits]);
    return Object.fromEntries(Object.entries(out).filter(([k]) => !hidden.has(k)));
  }
}
