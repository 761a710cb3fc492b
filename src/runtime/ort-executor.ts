/**
 * Runs segments as ONNX Runtime sessions, one per (segment, input shapes). Models are handed to
 * ORT as bytes whose weights are external data pointing straight into the component's
 * safetensors files, so weights are never converted or copied on disk.
 */
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { InputError } from '../errors.ts';
import { GraphBuilder, type ParamSource } from '../graph/builder.ts';
import { encodeModel } from '../graph/onnx-proto.ts';
import { buildSegment, outputName, shapeKey, type Executor, type RunOptions, type SegmentBuild } from './executor.ts';
import type { TensorOps } from './plan.ts';

export type Device = 'cpu' | 'webgpu';

export interface RuntimeOptions {
  device?: Device;
  /** Intra-op threads per session (CPU). Defaults to ORT's choice (all cores). */
  threads?: number;
}

interface CompiledSegment {
  session: ort.InferenceSession;
  outputKeys: string[];
}

export class OrtExecutor implements Executor<ort.Tensor> {
  private readonly sessions = new Map<string, Promise<CompiledSegment>>();
  /** Seconds spent in session.run per segment name, summed over calls (for profiling). */
  readonly runSeconds = new Map<string, number>();

  constructor(
    private readonly params: ParamSource,
    private readonly options: RuntimeOptions = {},
  ) {}

  async run(name: string, build: SegmentBuild, inputs: Record<string, ort.Tensor>, options?: RunOptions): Promise<Record<string, ort.Tensor>> {
    const key = `${name}|${shapeKey(inputs, options, true)}`;
    let compiled = this.sessions.get(key);
    if (!compiled) {
      compiled = this.compile(name, build, inputs, options);
      this.sessions.set(key, compiled);
    }
    const { session, outputKeys } = await compiled;
    const start = performance.now();
    const result = await session.run(inputs);
    this.runSeconds.set(name, (this.runSeconds.get(name) ?? 0) + (performance.now() - start) / 1000);
    const outputs: Record<string, ort.Tensor> = {};
    for (const key of outputKeys) outputs[key] = result[outputName(key)];
    return outputs;
  }

  private async compile(name: string, build: SegmentBuild, inputs: Record<string, ort.Tensor>, options?: RunOptions): Promise<CompiledSegment> {
    // One session per segment for every batch size: CFG and single-batch calls share it.
    const g = new GraphBuilder(name, this.params, 'mha', true);
    const outputs = buildSegment(g, build, inputs, options);
    return { session: await createSession(g, this.options), outputKeys: Object.keys(outputs) };
  }

  async release(): Promise<void> {
    for (const compiled of this.sessions.values()) await (await compiled).session.release();
    this.sessions.clear();
  }
}

/** An ORT session for a built graph whose weights all live in one folder. */
export async function createSession(g: GraphBuilder, options: RuntimeOptions): Promise<ort.InferenceSession> {
  const folders = new Set(g.weightFiles().map((f) => path.dirname(f)));
  if (folders.size > 1) throw new Error(`segment ${g.name}: weights span several folders (${[...folders].join(', ')})`);
  const folder = folders.values().next().value ?? process.cwd();
  const bytes = encodeModel(g.toModel((file) => path.basename(file)));
  const device = options.device ?? 'cpu';
  const sessionOptions: ort.InferenceSession.SessionOptions = {
    executionProviders: device === 'webgpu' ? ['webgpu', 'cpu'] : ['cpu'],
    graphOptimizationLevel: 'all',
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
        model_external_initializers_file_folder_path: folder,
        // Hundreds of sessions share the cores; idle threads must sleep, not spin.
        intra_op: { allow_spinning: '0' },
      },
    },
  };
  try {
    return await ort.InferenceSession.create(bytes, sessionOptions);
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    if (device === 'webgpu' && /adapter|WebGPU|webgpu/.test(message)) {
      throw new InputError('--device webgpu', `ONNX Runtime could not start WebGPU (${message.split('\n')[0].replace(/^.*?: /, '')})`,
        'a GPU with a WebGPU-capable driver (Vulkan on Linux)');
    }
    throw err;
  }
}

/** What plans need of onnxruntime tensors (read back to the CPU where they live on a GPU). */
export const ortOps: TensorOps<ort.Tensor> = {
  async meanOfHalves(t) {
    const data = (t.location === 'cpu' ? t.data : await t.getData()) as Float32Array;
    const half = data.length / 2;
    const mean = new Float32Array(half);
    for (let i = 0; i < half; i++) mean[i] = (data[i] + data[half + i]) / 2;
    return new ort.Tensor('float32', mean, [t.dims[0] / 2, ...t.dims.slice(1)]);
  },
  indices: (values) => new ort.Tensor('int64', BigInt64Array.from(values, BigInt), [values.length]),
};
