/**
 * Runs segments as ONNX Runtime sessions, one per (segment, input shapes). Models are handed to
 * ORT as bytes whose weights are external data pointing straight into the component's
 * safetensors files, so weights are never converted or copied on disk.
 */
import * as ort from 'onnxruntime-node';
import { InputError, checkAborted, describe } from '../errors.ts';
import { DATA_TYPE_BYTES, GraphBuilder, ONNX_TYPE, type Value, addMacs, zeroMacs, type AttentionKind, type DataType, type MacCount, type ParamSource, type WeightRef } from '../graph/builder.ts';
import { encodeModel, type ModelProto } from '../graph/onnx-proto.ts';
import { PRECISIONS, quantizationKey, quantizedBytes, quantizedInitializers, type Precision } from '../graph/quantize.ts';
import { bfloat16ToFloat32, float16ToFloat32 } from '../graph/half.ts';
import { baseName, dirName, fetchBytes, isMounted, onNode, readTextFile, realPath, totalMemory } from '../io/files.ts';
import { buildSegment, outputName, shapeKey, type Executor, type RunOptions, type SegmentBuild } from './executor.ts';
import type { TensorOps } from './plan.ts';

export const DEVICES = ['cpu', 'webgpu'] as const;
export type Device = (typeof DEVICES)[number];

export interface RuntimeOptions {
  device?: Device;
  /** Intra-op threads per session (CPU). Defaults to ORT's choice (all cores). */
  threads?: number;
  /** Keeps ORT's optimised models between processes (Node: openSessionCache in src/runtime/session-cache.ts). */
  sessionCache?: SessionCache;
  /** Arithmetic of linear layers and convolutions (src/graph/quantize.ts); default fp32. */
  precision?: Precision;
}

const RUNTIME_OPTIONS = ['device', 'threads', 'sessionCache', 'precision'] as const satisfies readonly (keyof RuntimeOptions)[];
/** Options only Node reads: onnxruntime-web takes its threads from ort.env.wasm.numThreads, and a page's folders are mounted (no files to cache by). */
const NODE_ONLY_OPTIONS = { threads: 'in a page ort.env.wasm.numThreads sets them', sessionCache: 'a page\'s folders are mounted, with no files to key a cache by' };

/** Refuses load options nothing would read: an unknown name (a misspelling), or in a page one only Node reads. */
export function checkLoadOptions(options: unknown, more: readonly string[] = []): void {
  if (typeof options !== 'object' || options === null || Array.isArray(options)) throw new InputError('options', 'wrong value', 'an object of load options', describe(options));
  const known: readonly string[] = [...RUNTIME_OPTIONS, ...more];
  for (const key of Object.keys(options)) {
    if (!known.includes(key)) throw new InputError(key, 'unknown load option', known.join(', '), describe((options as Record<string, unknown>)[key]));
  }
  if (onNode()) return;
  for (const [key, why] of Object.entries(NODE_ONLY_OPTIONS)) {
    if ((options as Record<string, unknown>)[key] !== undefined) throw new InputError(key, `read only in Node (${why})`, 'no such option in a page', describe((options as Record<string, unknown>)[key]));
  }
}

/**
 * The options for components a reduced precision does not cover: it is the denoiser's (run every
 * step), while text encoders and the VAE run once per image and stay fp32.
 */
export function withFullPrecision(options: RuntimeOptions): RuntimeOptions {
  return { ...options, precision: 'fp32' };
}

let webgpuHalfFloats: Promise<boolean> | undefined;

/**
 * Whether the device computes in float16. A WebGPU adapter needs shader-f16 (Chromium's
 * SwiftShader has none), and ORT says so only when a float16 kernel first runs, in onnxruntime-node
 * then crashing at exit: one tiny float16 run tells, before any real work.
 */
export function computesHalfFloats(options: RuntimeOptions): Promise<boolean> {
  if (options.device !== 'webgpu') return Promise.resolve(true);
  webgpuHalfFloats ??= (async () => {
    const g = new GraphBuilder('float16 probe', { param: (name) => { throw new Error(`no parameter ${name} in the probe`); } }, { precision: 'fp16' });
    const x = g.input('x', [4]);
    g.output(g.add(x, x), 'y');
    // Its failure is the answer, not an error to log.
    const session = await ort.InferenceSession.create(encodeModel(g.toModel((file) => file)), { executionProviders: ['webgpu'], logSeverityLevel: 4 })
      .catch((err: unknown) => Promise.reject(withoutAdapter(err)));
    try {
      const { y } = await session.run({ x: new ort.Tensor('float32', new Float32Array(4), [4]) });
      y.dispose();
      return true;
    } catch (err) {
      if (/requires f16/.test(err instanceof Error ? err.message : String(err))) return false;
      throw err;
    } finally {
      await session.release();
    }
  })();
  // A probe that failed otherwise (no adapter) is tried again next time, not remembered.
  webgpuHalfFloats.catch(() => (webgpuHalfFloats = undefined));
  return webgpuHalfFloats;
}

async function checkHalfPrecision(options: RuntimeOptions): Promise<void> {
  if (!(await computesHalfFloats(options))) {
    throw new InputError('precision', 'fp16 needs a WebGPU adapter with shader-f16, and this one has none (Chromium\'s SwiftShader, for one, has none)',
      'fp32 on this adapter, or a Vulkan driver with float16 shaders: a GPU\'s, or Mesa ≥ 25 lavapipe', 'fp16');
  }
}

/** Optimised models on disk, by a key of everything they depend on (src/runtime/session-cache.ts). */
export interface SessionCache {
  key(model: Uint8Array, weightFiles: string[], options: string): string;
  /** The complete optimised model for `key`, if one is kept. */
  find(key: string): string | undefined;
  /** Somewhere to write a new entry; `commit` puts it in place whole. */
  begin(key: string): SessionCacheEntry;
  /** Drops an entry ORT could not load. */
  forget(key: string): void;
  /** Whether a session whose weights take this many bytes is worth saving with MLAS's pre-packed weights. */
  prepacks(weightBytes: number): boolean;
  /** Whether a written entry loads and runs, tried in another process (a crash there costs nothing here). */
  verify(modelPath: string, sessionOptions: ort.InferenceSession.SessionOptions): boolean;
}

export interface SessionCacheEntry {
  modelPath: string;
  commit(): void;
  discard(): void;
}

/**
 * Why a precision a user might expect is not offered, or not on a device: onnxruntime 1.30's CPU
 * provider has no bfloat16 MatMul, Gemm or Conv kernel, and its float16 ones run no faster than
 * fp32 on x86 (measured: a 2×320×64² 3×3 conv 42.9 vs 41.6 ms, an 8192×320×2560 MatMul 66.8 vs
 * 66.3 ms); int8's products are CPU kernels.
 */
const NOT_OFFERED: Record<string, string> = {
  bf16: 'onnxruntime 1.30 has no bfloat16 matrix kernels on CPU',
};
const DEVICE_OF: Partial<Record<Precision, { device: Device; why: string }>> = {
  int8: { device: 'cpu', why: 'its integer kernels are CPU kernels' },
  fp16: { device: 'webgpu', why: 'onnxruntime 1.30\'s float16 CPU kernels run no faster than fp32 on x86' },
};

/** Refuses a precision the device does not run (before any work: commands call it while checking flags). */
export function checkPrecisionDevice(precision: Precision | undefined, device: Device = 'cpu'): void {
  const needs = precision === undefined ? undefined : DEVICE_OF[parsePrecision(precision)];
  if (needs && needs.device !== device) {
    throw new InputError('precision', `${precision} runs with device ${needs.device} only (${needs.why})`,
      `fp32${needs.device === 'cpu' ? '' : ' or int8'} with device ${device}`, precision!);
  }
}

export function parsePrecision(value: unknown, where = 'precision'): Precision {
  if (PRECISIONS.includes(value as Precision)) return value as Precision;
  const reason = typeof value === 'string' && Object.hasOwn(NOT_OFFERED, value) ? ` (${NOT_OFFERED[value]})` : '';
  throw new InputError(where, `unknown precision${reason}`, `${PRECISIONS.slice(0, -1).join(', ')} or ${PRECISIONS.at(-1)}`, describe(value));
}

/**
 * Intra-op threads a session may ask for. Every session owns its pool, and a run has dozens of
 * sessions: thousands of threads exhaust the process's limit and ORT aborts natively.
 */
export const MAX_THREADS = 256;

/** How long an executor keeps a segment's session. */
export interface SessionPolicy {
  /**
   * false: create each session for its call and release it right after, so that only one
   * segment's weights are ever in memory (a 4.7 B-parameter T5-XXL on a 24 GiB machine), at the
   * cost of loading them again on the next call. Default true.
   */
  retainSessions?: boolean;
}

/**
 * Whether to keep a component's sessions: not when its weights, as the float32 the sessions hold
 * them in, would take more than a quarter of the machine's memory.
 */
export function retainSessionsFor(float32Bytes: number, memory = totalMemory()): boolean {
  return float32Bytes <= memory / 4;
}

interface CompiledSegment {
  session: ort.InferenceSession;
  outputKeys: string[];
  /** The graph's MACs, and the batch it was built at (one session serves every batch; MACs scale with it). */
  macs: MacCount;
  batch: number;
}

/** The batch of a segment call: axis 0 of its first batched input (1 when all are unbatched). */
function batchOf(inputs: Record<string, ort.Tensor>, options?: RunOptions): number {
  const batched = Object.entries(inputs).find(([k]) => !options?.unbatched?.includes(k));
  return batched?.[1].dims[0] ?? 1;
}

/**
 * How segments build attention: on WebGPU from MatMul and Softmax, elsewhere with the fused
 * MultiHeadAttention. onnxruntime-web 1.30's WebGPU MultiHeadAttention gives wrong outputs once
 * the query has 32 tokens or more (op by op against wasm on Chromium's SwiftShader: relative
 * error 0.4 to 1), and Node's WebGPU one is right but loose: the reference model's 4-step image
 * came out 35.6 dB from the CPU's with it, against equal to float rounding with MatMul + Softmax.
 * The price: the [B, H, Sq, Sk] scores are a tensor (1 GiB per attention for SD 1.5 at 512² with
 * CFG), which the fused op need not hold; on a real GPU that is unmeasured (none was lent).
 */
function attentionKindFor(device: Device): AttentionKind {
  return device === 'webgpu' ? 'plain' : 'mha';
}

export class OrtExecutor implements Executor<ort.Tensor> {
  private readonly sessions = new Map<string, Promise<CompiledSegment>>();
  /** Seconds spent in session.run per segment name, summed over calls (for profiling). */
  readonly runSeconds = new Map<string, number>();
  /** MACs of every segment run so far, at the batch it ran (what adaptive methods really spend). */
  readonly macsSpent: MacCount = zeroMacs();
  /** Outputs not yet freed on a GPU: their buffers live until disposed, whatever the garbage collector does. */
  private readonly deviceOutputs = new Set<ort.Tensor>();
  /**
   * CPU outputs not yet freed, held weakly (the collector frees them): freeOutputs disposes those
   * still alive only so that a tensor used after it was freed fails on the CPU as it would on a GPU.
   */
  private hostOutputs: WeakRef<ort.Tensor>[] = [];
  /** The running generation's signal: a run stops before its next segment, and weights being fetched over HTTP with it. */
  abortSignal?: AbortSignal;

  constructor(
    private readonly params: ParamSource,
    private readonly options: RuntimeOptions = {},
    private readonly policy: SessionPolicy = {},
  ) {
    const t = options.threads;
    if (t !== undefined && (!Number.isSafeInteger(t) || t < 1 || t > MAX_THREADS)) {
      throw new InputError('threads', 'wrong value', `an integer from 1 to ${MAX_THREADS}`, describe(t));
    }
    if (options.device !== undefined && !DEVICES.includes(options.device)) {
      throw new InputError('device', 'unknown device', DEVICES.join(' or '), describe(options.device));
    }
    checkPrecisionDevice(options.precision, options.device);
  }

  /** Whether this executor's device computes in float16 (see computesHalfFloats). */
  halfFloats(): Promise<boolean> {
    return computesHalfFloats(this.options);
  }

  /** Sessions held now. */
  get openSessions(): number {
    return this.sessions.size;
  }

  private get retain(): boolean {
    return this.policy.retainSessions ?? true;
  }

  async run(name: string, build: SegmentBuild, inputs: Record<string, ort.Tensor>, options?: RunOptions): Promise<Record<string, ort.Tensor>> {
    checkAborted(this.abortSignal);
    for (const [key, t] of Object.entries(inputs)) {
      if (t.location === 'none') throw freed(`segment ${name}'s input ${key}`);
    }
    const retain = this.retain;
    const key = `${name}|${shapeKey(inputs, options, true)}`;
    let compiled = retain ? this.sessions.get(key) : undefined;
    if (!compiled) {
      compiled = this.compile(name, build, inputs, options);
      // A segment that failed to compile is tried afresh next time, and release() skips it.
      if (retain) {
        this.sessions.set(key, compiled);
        compiled.catch(() => this.sessions.delete(key));
      }
    }
    const { session, outputKeys, macs, batch } = await compiled;
    addMacs(this.macsSpent, macs, batchOf(inputs, options) / batch);
    if (this.options.device === 'webgpu') {
      // ORT uploads every CPU-resident input of a WebGPU session.
      for (const t of Object.values(inputs)) {
        if (t.location !== 'cpu') continue;
        transfers.toDevice++;
        transfers.toDeviceBytes += tensorBytes(t);
      }
    }
    const start = performance.now();
    let result: Record<string, ort.Tensor>;
    try {
      result = { ...(await session.run(inputs)) } as Record<string, ort.Tensor>;
      // A released session's GPU buffers go with it: bring its outputs to the CPU first.
      if (!retain) {
        for (const [k, t] of Object.entries(result)) {
          if (t.location !== 'cpu') result[k] = new ort.Tensor(t.type, await tensorData(t), t.dims);
        }
      }
    } finally {
      if (!retain) await session.release();
    }
    this.runSeconds.set(name, (this.runSeconds.get(name) ?? 0) + (performance.now() - start) / 1000);
    for (const t of Object.values(result)) {
      if (t.location === 'cpu') this.hostOutputs.push(new WeakRef(t));
      else this.deviceOutputs.add(t);
    }
    if (this.hostOutputs.length > 4096) this.hostOutputs = this.hostOutputs.filter((r) => r.deref() !== undefined);
    const outputs: Record<string, ort.Tensor> = {};
    for (const key of outputKeys) outputs[key] = result[outputName(key)];
    return outputs;
  }

  /**
   * Frees every output of this executor's runs but `keep`. Pipelines call it after each model call
   * with what the plan and the model keep for later calls, and at the end of a generation with
   * nothing: without it each step's outputs would stay on a GPU until the process ends. Returns
   * the bytes still held on a device.
   */
  freeOutputs(keep: Iterable<ort.Tensor> = []): number {
    const kept = new Set(keep);
    let heldBytes = 0;
    for (const t of this.deviceOutputs) {
      if (kept.has(t)) {
        heldBytes += tensorBytes(t);
        continue;
      }
      t.dispose();
      this.deviceOutputs.delete(t);
    }
    const alive: WeakRef<ort.Tensor>[] = [];
    for (const ref of this.hostOutputs) {
      const t = ref.deref();
      if (t && kept.has(t)) alive.push(ref);
      else t?.dispose();
    }
    this.hostOutputs = alive;
    return heldBytes;
  }

  private async compile(name: string, build: SegmentBuild, inputs: Record<string, ort.Tensor>, options?: RunOptions): Promise<CompiledSegment> {
    if (this.options.precision === 'fp16') await checkHalfPrecision(this.options);
    // One session per segment for every batch size: CFG and single-batch calls share it.
    const g = new GraphBuilder(name, this.params, {
      attentionKind: attentionKindFor(this.options.device ?? 'cpu'), dynamicBatch: true, precision: this.options.precision, unsignedInt8Weights: unsignedInt8Weights(),
    });
    const outputs = buildSegment(g, build, inputs, options);
    return { session: await createSession(g, this.options, this.retain, this.abortSignal), outputKeys: Object.keys(outputs), macs: { ...g.macs }, batch: batchOf(inputs, options) };
  }

  /** Releases every session that was created; segments that failed to compile hold nothing. */
  async release(): Promise<void> {
    const compiled = [...this.sessions.values()];
    this.sessions.clear();
    const sessions = await Promise.allSettled(compiled);
    const released = await Promise.allSettled(sessions.flatMap((r) => (r.status === 'fulfilled' ? [r.value.session.release()] : [])));
    const failed = released.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
  }
}

let unsignedInt8: boolean | undefined;

/**
 * Whether int8 weights go as uint8 with a zero point: on x86 CPUs without VNNI, whose uint8 × int8
 * products saturate in MLAS (src/graph/quantize.ts). Read from /proc/cpuinfo's flags; an x86 CPU
 * whose flags cannot be read counts as one without. Elsewhere (ARM, wasm) signed weights are exact.
 */
export function unsignedInt8Weights(): boolean {
  if (unsignedInt8 === undefined) {
    const arch = (globalThis as { process?: { arch?: string } }).process?.arch;
    let flags = '';
    try {
      if (arch === 'x64') flags = readTextFile('/proc/cpuinfo');
    } catch {
      // Not Linux: no flags to read.
    }
    unsignedInt8 = arch === 'x64' && !/\b(avx512_vnni|avx_vnni)\b/.test(flags);
  }
  return unsignedInt8;
}

/**
 * An ORT session for a built graph whose weights all live in one folder. A session run only once
 * (`retained` false) is not optimized: MLAS's packed weight copies and constant folding (a cast of
 * F16 weights, through protobuf copies) cost more than they save on one run. Measured on T5-XXL
 * (bench-text-encoder, 24 blocks of 0.8 GB): a block's session creation 1.5 s → 0.01 s with its
 * run as fast; the whole encoding 50 s → 28 s from F16 weights.
 */
export async function createSession(g: GraphBuilder, options: RuntimeOptions, retained = true, signal?: AbortSignal): Promise<ort.InferenceSession> {
  const params = g.quantizedParams();
  // int8 weights are made from the float ones in JS (seconds on SD 1.5): only when a session is built from the model, not on a cache hit.
  const withQuantized = async (model: ModelProto): Promise<ModelProto> => params.length === 0 ? model
    : { ...model, graph: { ...model.graph, initializers: [...model.graph.initializers, ...(await quantizedInitializers(params, readFloats))] } };
  let modelBytes: () => Promise<Uint8Array>;
  /** What a cache key hashes for the model: its encoding without the int8 weights, which the float weights' files and the scheme decide. */
  let keyBytes: () => Promise<Uint8Array>;
  let folder: string | undefined;
  let weightBytes = 0;
  if (g.weightFiles().some(isMounted)) {
    // Weights from a mounted source (HTTP, picked files) travel inside the model: ORT cannot
    // open them, and only this segment's tensors are fetched.
    const bytes = encodeModel(await withQuantized(await inlineWeights(g.toModel((file) => file), signal)));
    modelBytes = keyBytes = async () => bytes;
  } else {
    // ORT refuses external data whose resolved path leaves the folder it is given, so symlinked
    // weights (the Hugging Face cache: snapshots/<rev>/unet/x.safetensors → ../../blobs/<sha>)
    // are named by their real paths.
    const realPaths = new Map(g.weightFiles().map((f) => [f, realPath(f)]));
    const folders = new Set([...realPaths.values()].map((f) => dirName(f)));
    if (folders.size > 1) throw new Error(`segment ${g.name}: weights span several folders (${[...folders].join(', ')})`);
    folder = folders.values().next().value;
    const model = g.toModel((file) => baseName(realPaths.get(file) ?? file));
    weightBytes = model.graph.initializers.reduce((sum, t) => sum + (t.external?.length ?? t.raw?.length ?? 0), 0) +
      params.reduce((sum, p) => sum + quantizedBytes(p), 0);
    modelBytes = async () => encodeModel(await withQuantized(model));
    keyBytes = params.every((p) => p.ref.location) ? async () => {
      const [plain, scheme] = [encodeModel(model), quantizationKey(params)];
      const key = new Uint8Array(plain.length + scheme.length);
      key.set(plain);
      key.set(scheme, plain.length);
      return key;
    } : modelBytes;
  }
  const device = options.device ?? 'cpu';
  const sessionOptions: ort.InferenceSession.SessionOptions = {
    executionProviders: device === 'webgpu' ? ['webgpu', 'cpu'] : ['cpu'],
    graphOptimizationLevel: retained ? 'all' : 'disabled',
    // Measured: with memory patterns each session's second run is ~2× slower and peak RSS
    // ~40% higher (many sessions each planning its own block); plain arena reuse is better.
    enableMemPattern: false,
    // An arena keeps its peak for the session's life, one per session, and a run has dozens of
    // sessions (segments and their variants). Measured without it (2026-11-22, bench-unet sd15
    // 512²): peak RSS 8.20 → 4.74 GB at the same speed (9.57 vs 9.31 s); attention-reuse variants
    // at 512² (1 GiB maps each) no longer run out of 24 GiB.
    enableCpuMemArena: false,
    ...(options.threads ? { intraOpNumThreads: options.threads, interOpNumThreads: 1 } : {}),
    ...(device === 'webgpu' ? { preferredOutputLocation: 'gpu-buffer' as const } : {}),
    extra: {
      session: {
        // Where relative external-data locations resolve (ORT refuses paths outside it).
        ...(folder === undefined ? {} : { model_external_initializers_file_folder_path: folder }),
        // Hundreds of sessions share the cores; idle threads must sleep, not spin.
        intra_op: { allow_spinning: '0' },
        ...(retained ? {} : { disable_prepacking: '1' }),
      },
    },
  };
  try {
    // CPU sessions of local weights that are kept are cached optimised (WebGPU's and one-run sessions
    // are not optimised the same way, and mounted weights have no file to key by).
    const cache = options.sessionCache;
    if (cache && retained && device === 'cpu' && folder !== undefined) {
      // The int8 weights' float sources are keyed too: the cache entry holds what was made from them.
      const sources = new Set([...g.weightFiles(), ...params.flatMap((p) => (p.ref.location ? [p.ref.location.file] : []))]);
      return await cachedSession(cache, { modelBytes, keyBytes }, weightBytes, [...sources].map(realPath), sessionOptions);
    }
    return await ort.InferenceSession.create(await modelBytes(), sessionOptions);
  } catch (err) {
    throw device === 'webgpu' ? withoutAdapter(err) : err;
  }
}

/** ORT's failure to start WebGPU as the input error it is (what to install); other errors unchanged. */
function withoutAdapter(err: unknown): unknown {
  const message = err instanceof Error ? err.message : String(err);
  if (!/adapter|WebGPU|webgpu/.test(message)) return err;
  return new InputError('device webgpu', `ONNX Runtime could not start WebGPU (${message.split('\n')[0].replace(/^.*?: /, '')})`,
    'a WebGPU adapter: on Linux the Vulkan loader (apt-get install libvulkan1) and a Vulkan driver — a GPU\'s, ' +
    'Mesa ≥ 25 lavapipe, or Chromium\'s SwiftShader with VK_ICD_FILENAMES=/usr/lib/chromium/vk_swiftshader_icd.json');
}

/**
 * A session from the cached optimised model when there is one (no graph optimisation: it was done
 * when the entry was written), else a session that writes its optimised model into a new entry.
 * The optimised model's weights (folded casts, reordered layouts) go into a file beside it, and for
 * large sessions MLAS's pre-packed weights too (SD 1.5 at 256²: creating all sessions from the cache
 * 7.3 s without them, 1.6 s with). ORT 1.30 writes pre-packed weights that some kernels then crash
 * on (two of the reference model's segments: SIGSEGV at run), so such an entry is first loaded and
 * run in another process, and written again without them if that fails.
 */
async function cachedSession(cache: SessionCache, model: { modelBytes: () => Promise<Uint8Array>; keyBytes: () => Promise<Uint8Array> }, weightBytes: number,
  weightFiles: string[], sessionOptions: ort.InferenceSession.SessionOptions) {
  const { model_external_initializers_file_folder_path: _folder, ...session } = sessionOptions.extra!.session as Record<string, unknown>;
  const loading = { ...sessionOptions, graphOptimizationLevel: 'disabled' as const, extra: { session } };
  let key: string;
  let hit: string | undefined;
  const keyBytes = await model.keyBytes();
  try {
    key = cache.key(keyBytes, weightFiles, JSON.stringify({ ...sessionOptions, extra: { session } }));
    hit = cache.find(key);
  } catch {
    // A cache that cannot be read (a permission, a vanished weight file) only costs the time it would save.
    return await ort.InferenceSession.create(await model.modelBytes(), sessionOptions);
  }
  if (hit) {
    try {
      return await ort.InferenceSession.create(hit, loading);
    } catch {
      // A damaged entry (a disk error, a file changed by hand) is written again below.
      try {
        cache.forget(key);
      } catch {
        return await ort.InferenceSession.create(await model.modelBytes(), sessionOptions);
      }
    }
  }
  const bytes = await model.modelBytes();
  const writing = (modelPath: string, prepacked: boolean): ort.InferenceSession.SessionOptions => ({
    ...sessionOptions,
    optimizedModelFilePath: modelPath,
    // Not ORT's warning that an NCHWc-optimised model suits this machine only: the key says which machine.
    logSeverityLevel: 3,
    extra: { session: {
      ...sessionOptions.extra!.session as object, optimized_model_external_initializers_file_name: 'weights.bin', optimized_model_external_initializers_min_size_in_bytes: '1024',
      ...(prepacked ? { save_external_prepacked_constant_initializers: '1' } : {}),
    } },
  });
  let entry: SessionCacheEntry;
  try {
    entry = cache.begin(key);
  } catch {
    return await ort.InferenceSession.create(bytes, sessionOptions);
  }
  try {
    const prepacked = cache.prepacks(weightBytes);
    const created = await ort.InferenceSession.create(bytes, writing(entry.modelPath, prepacked));
    try {
      if (prepacked && !cache.verify(entry.modelPath, loading)) {
        entry.discard();
        entry = cache.begin(key);
        await (await ort.InferenceSession.create(bytes, writing(entry.modelPath, false))).release();
      }
      entry.commit();
    } catch {
      // The entry could not be written again (a full disk, say): the session works, the cache only costs time.
      entry.discard();
    }
    return created;
  } catch (err) {
    entry.discard();
    throw err;
  }
}

/** Reads for neighbouring tensors closer than this are merged into one (fewer HTTP requests). */
const MERGE_GAP = 1 << 16;

/** The model with every external initializer's bytes fetched into it, neighbours read together. */
/** A stored parameter's values as float32 (quantization reads them). */
async function readFloats(ref: WeightRef): Promise<Float32Array> {
  if (!ref.location) throw new Error(`parameter ${ref.name} has no stored data (shape-only source)`);
  const bytes = (await fetchBytes(ref.location.file, ref.location.offset, ref.location.byteLength)).slice();
  if (ref.dtype === 'F32') return new Float32Array(bytes.buffer);
  const half = new Uint16Array(bytes.buffer);
  return ref.dtype === 'F16' ? float16ToFloat32(half) : bfloat16ToFloat32(half);
}

async function inlineWeights(model: ModelProto, signal?: AbortSignal): Promise<ModelProto> {
  const byFile = new Map<string, typeof model.graph.initializers>();
  for (const t of model.graph.initializers) {
    if (!t.external) continue;
    const tensors = byFile.get(t.external.location);
    if (tensors) tensors.push(t);
    else byFile.set(t.external.location, [t]);
  }
  const initializers = new Map(model.graph.initializers.map((t) => [t, t]));
  await Promise.all([...byFile].map(async ([file, tensors]) => {
    tensors.sort((a, b) => a.external!.offset - b.external!.offset);
    for (let i = 0; i < tensors.length;) {
      const start = tensors[i].external!.offset;
      let end = start + tensors[i].external!.length;
      let j = i + 1;
      while (j < tensors.length && tensors[j].external!.offset <= end + MERGE_GAP) {
        end = Math.max(end, tensors[j].external!.offset + tensors[j].external!.length);
        j++;
      }
      const run = await fetchBytes(file, start, end - start, signal);
      for (const t of tensors.slice(i, j)) {
        const { offset, length } = t.external!;
        initializers.set(t, { name: t.name, dims: t.dims, dataType: t.dataType, raw: run.subarray(offset - start, offset - start + length) });
      }
      i = j;
    }
  }));
  return { ...model, graph: { ...model.graph, initializers: model.graph.initializers.map((t) => initializers.get(t)!) } };
}

/**
 * Copies between a GPU and the CPU in this process so far (WebGPU; the CPU providers copy
 * nothing): a pipeline reports the difference over its denoising loop. Weights are not counted.
 */
export interface Transfers {
  toHost: number;
  toHostBytes: number;
  toDevice: number;
  toDeviceBytes: number;
}

export const transfers: Transfers = { toHost: 0, toHostBytes: 0, toDevice: 0, toDeviceBytes: 0 };

export function transfersSince(before: Transfers): Transfers {
  return {
    toHost: transfers.toHost - before.toHost, toHostBytes: transfers.toHostBytes - before.toHostBytes,
    toDevice: transfers.toDevice - before.toDevice, toDeviceBytes: transfers.toDeviceBytes - before.toDeviceBytes,
  };
}

/** "per denoising step: 1.0 copies to the CPU (2.0 KiB), 3.0 to the GPU (21.5 KiB)". */
export function describeTransfers(t: Transfers, steps: number): string {
  const kib = (bytes: number) => `${(bytes / steps / 1024).toFixed(1)} KiB`;
  return `per denoising step ${(t.toHost / steps).toFixed(1)} copies to the CPU (${kib(t.toHostBytes)}), ` +
    `${(t.toDevice / steps).toFixed(1)} to the GPU (${kib(t.toDeviceBytes)})`;
}

function tensorBytes(t: ort.Tensor): number {
  return t.size * (Object.hasOwn(ONNX_TYPE, t.type) ? DATA_TYPE_BYTES[t.type as DataType] : 4);
}

/** The error for a tensor used after OrtExecutor.freeOutputs freed it. */
function freed(what: string): Error {
  return new Error(`${what} was freed after an earlier model call: a plan that keeps tensors between calls lists them in RunHooks.held`);
}

/** A tensor's values on the CPU, wherever it lives. */
export async function tensorData(t: ort.Tensor): Promise<ort.Tensor['data']> {
  if (t.location === 'cpu') return t.data;
  if (t.location === 'none') throw freed(`a tensor [${t.dims.join(', ')}]`);
  transfers.toHost++;
  transfers.toHostBytes += tensorBytes(t);
  // onnxruntime-node 1.30's downloader for WebGPU buffers throws a C string and aborts the
  // process; a session that copies its input to a CPU output is ORT's own device-to-host copy.
  if ((ort.env.versions as Record<string, string | undefined>).node !== undefined) {
    const copy = await hostCopySession(t.type, t.dims.length);
    return (await copy.run({ x: t })).y.data;
  }
  return t.getData();
}

const hostCopies = new Map<string, Promise<ort.InferenceSession>>();

/** An Identity session for one dtype and rank (any shape), its output on the CPU. */
function hostCopySession(type: ort.Tensor.Type, rank: number): Promise<ort.InferenceSession> {
  const key = `${type}/${rank}`;
  let session = hostCopies.get(key);
  if (!session) {
    // ORT's tensor type names are the graph's data type names.
    if (!Object.hasOwn(ONNX_TYPE, type)) throw new Error(`no host copy for ${type} tensors`);
    const elemType = ONNX_TYPE[type as DataType];
    const shape = Array.from({ length: rank }, (_, i) => `d${i}`);
    const model: ModelProto = {
      irVersion: 9, producer: 'diffusion.ts', opsets: [{ domain: '', version: 18 }],
      graph: {
        name: `host-copy-${key}`, initializers: [],
        nodes: [{ opType: 'Identity', name: 'copy', inputs: ['x'], outputs: ['y'], attributes: {} }],
        inputs: [{ name: 'x', elemType, shape }], outputs: [{ name: 'y', elemType, shape }],
      },
    };
    session = ort.InferenceSession.create(encodeModel(model), { executionProviders: ['webgpu'], preferredOutputLocation: 'cpu' });
    session.catch(() => hostCopies.delete(key));
    hostCopies.set(key, session);
  }
  return session;
}

/** What plans need of onnxruntime tensors (relativeL1 reads them back to the CPU where they live on a GPU). */
export const ortOps: TensorOps<ort.Tensor> = {
  // A segment of its own: on a GPU the mean stays there (read back, it was uploaded again at every reuse).
  async meanOfHalves(t, exec, name) {
    const half = t.dims[0] / 2;
    const halves = (g: GraphBuilder, x: Value) => g.mul(g.add(g.slice(x, 0, 0, half), g.slice(x, 0, half, 2 * half)), g.scalar(0.5));
    // The halves' size is in the graph: part of its identity where batch-polymorphic graphs are shared across batches.
    return (await exec.run(`${name}+cfg-mean`, (g, i) => ({ mean: halves(g, i.x) }), { x: t }, { depends: `halves of ${half}` })).mean;
  },
  indices: (values) => new ort.Tensor('int64', BigInt64Array.from(values, BigInt), [values.length]),
  async relativeL1(a, reference) {
    const [x, r] = await Promise.all([a, reference].map(async (t) => (await tensorData(t)) as Float32Array));
    let diff = 0;
    let size = 0;
    for (let i = 0; i < r.length; i++) {
      diff += Math.abs(x[i] - r[i]);
      size += Math.abs(r[i]);
    }
    return diff / size;
  },
};
