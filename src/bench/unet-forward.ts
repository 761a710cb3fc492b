/**
 * `diffuse bench-unet`: one U-Net forward of a preset architecture (seeded random weights),
 * timed against the speed ORT reaches on the same MAC-carrying ops run one at a time
 * (every conv / linear / attention of the forward, at its own shapes). The ratio says how much
 * the segment structure and the glue ops (norms, activations, copies) cost.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { InputError } from '../errors.ts';
import { checkReferenceEnv, runReferenceScript } from './reference-script.ts';
import { makeFolder, textOf, writeOutput } from '../util/files.ts';
import { GraphBuilder, addMacs, calflopsMacs, fullMacs, zeroMacs, type HeavyOp, type ParamSource } from '../graph/builder.ts';
import { loadTransformer, loadUNet } from '../models/components.ts';
import { PixArtTransformer2DModel } from '../models/pixart-transformer-2d.ts';
import { PRESETS, TRANSFORMER_PRESETS } from '../models/presets.ts';
import type { CrossAttentionKV } from '../models/unet2d-condition.ts';
import { DryExecutor } from '../runtime/dry-executor.ts';
import type { SegmentReport } from '../runtime/executor.ts';
import { OrtExecutor, createSession, unsignedInt8Weights, type RuntimeOptions } from '../runtime/ort-executor.ts';
import type { Precision } from '../graph/quantize.ts';
import { Rng } from '../util/rng.ts';
import { readPipelineFolder } from '../weights/diffusers-folder.ts';
import { ensureRandomPipelineFolder, ensureRandomTransformerFolder } from './random-folder.ts';
import { own } from '../util/own.ts';

export interface BenchUNetOptions {
  preset: string;
  size: [number, number][];
  batch: number;
  threads: number;
  runs: number;
  cache: string;
  profile: boolean;
  /** Each is timed in turn, in this order, in the same process. */
  precision: Precision[];
  json?: string;
  /** A reference environment's env.sh: also time diffusers on PyTorch, in the same run. */
  pytorch?: string;
}

const GEMM_SIZE = 2048;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

function randomTensor(rng: Rng, dims: number[]): ort.Tensor {
  return new ort.Tensor('float32', rng.fillNormal(new Float32Array(dims.reduce((a, b) => a * b, 1))), dims);
}

/** Parameters for single-op timing graphs: every one reads the same random bytes. */
function randomParams(file: string, maxBytes: number): ParamSource {
  if (!fs.existsSync(file) || fs.statSync(file).size < maxBytes) {
    const values = new Rng(7).fillNormal(new Float32Array(maxBytes / 4)).map((v) => v * 0.02);
    makeFolder(path.dirname(file));
    fs.writeFileSync(file, values);
  }
  return { param: (name, shape) => ({ name, shape, dtype: 'F32', location: { file, offset: 0, byteLength: shape.reduce((a, b) => a * b, 4) } }) };
}

function paramBytes(op: HeavyOp): number {
  if (op.op === 'conv') return op.outChannels * op.input[1] * op.kernel * op.kernel * 4;
  if (op.op === 'linear') return op.outFeatures * op.input[op.input.length - 1] * 4;
  return 0;
}

/** Seconds ORT takes for `op` alone (best of `runs` after a warm-up). */
async function timeOp(op: HeavyOp, params: ParamSource, runtime: RuntimeOptions, runs: number, rng: Rng): Promise<number> {
  const g = new GraphBuilder('op', params, { precision: runtime.precision, unsignedInt8Weights: unsignedInt8Weights() });
  const feeds: Record<string, ort.Tensor> = {};
  const input = (name: string, dims: number[]) => {
    feeds[name] = randomTensor(rng, dims);
    return g.input(name, dims);
  };
  let out;
  if (op.op === 'conv') out = g.conv2d(input('x', op.input), 'conv', op.outChannels, op.kernel, { stride: op.stride, padding: op.padding });
  else if (op.op === 'linear') out = g.linear(input('x', op.input), 'linear', op.outFeatures);
  else if (op.op === 'matmul') out = g.matmul(input('a', op.a), input('b', op.b), 'attention');
  else out = g.attention(input('q', op.q), input('k', op.k), input('v', op.k), op.heads);
  g.output(out, 'y');
  const session = await createSession(g, runtime);
  await session.run(feeds);
  const times: number[] = [];
  for (let r = 0; r < runs; r++) {
    const start = performance.now();
    await session.run(feeds);
    times.push((performance.now() - start) / 1000);
  }
  await session.release();
  return Math.min(...times);
}

/** Segment kind for the profile: the last part of its module path, without indices. */
function segmentKind(name: string): string {
  const last = name.split('.').filter((p) => !/^\d+$/.test(p)).slice(-1)[0];
  return ['attn1', 'attn2', 'ff', 'proj_in', 'proj_out', 'resnets', 'downsamplers', 'upsamplers'].includes(last) ? last : 'other';
}

/** The forward pass under test: how to run it on shapes (MACs), for real, and with its text keys/values precomputed. */
interface ForwardUnderTest {
  /** "U-Net", "PixArt transformer". */
  label: string;
  dry(exec: DryExecutor): Promise<unknown>;
  run(exec: OrtExecutor): Promise<unknown>;
  /** The pipeline's path: cross-attention keys/values computed once per prompt (`once`), then forwards that use them. */
  withCrossKV: { once(exec: OrtExecutor): Promise<unknown>; run(exec: OrtExecutor): Promise<unknown> };
}

export async function benchUNet(o: BenchUNetOptions): Promise<void> {
  if (!own(PRESETS, o.preset)) throw new InputError('--preset', 'not a U-Net preset', Object.keys(PRESETS).join(', '), o.preset);
  if (o.pytorch) checkPyTorchComparison(o);
  const dir = path.resolve(o.cache, o.preset);
  process.stderr.write(`preparing ${dir} (seeded random weights, F16 on disk, computed in fp32)...\n`);
  await ensureRandomPipelineFolder(dir, o.preset, ['unet']);
  const { model, params, weights } = loadUNet(readPipelineFolder(dir));
  await benchForward(o, params, (width, height) => {
    const [h, w] = [height / 8, width / 8];
    const rng = new Rng(1);
    const sample = randomTensor(rng, [o.batch, model.config.inChannels, h, w]);
    const context = randomTensor(rng, [o.batch, 77, model.config.crossAttentionDim[0]]);
    const timestep = new ort.Tensor('float32', new Float32Array(o.batch).fill(500), [o.batch]);
    let kv: CrossAttentionKV<ort.Tensor> | undefined;
    return {
      label: 'U-Net',
      dry: (exec) => model.forwardShapes(exec, { batch: o.batch, latentHeight: h, latentWidth: w }),
      run: (exec) => model.forward(exec, sample, timestep, context),
      withCrossKV: {
        once: async (exec) => (kv = await model.crossAttentionKV(exec, context)),
        run: (exec) => model.forward(exec, sample, timestep, context, undefined, kv),
      },
    };
  });
  weights.close();
}

/** `diffuse bench-transformer`: the same for a PixArt transformer preset, with 120 T5 tokens (half of them padding). */
export async function benchTransformer(o: BenchUNetOptions): Promise<void> {
  const preset = own(TRANSFORMER_PRESETS, o.preset);
  if (!preset || preset.pipeline === 'DiTPipeline') {
    throw new InputError('--preset', 'not a PixArt preset', Object.keys(TRANSFORMER_PRESETS).filter((k) => k.startsWith('pixart')).join(', '), o.preset);
  }
  if (o.pytorch) checkPyTorchComparison(o);
  const dir = path.resolve(o.cache, o.preset);
  process.stderr.write(`preparing ${dir} (seeded random weights, F16 on disk, computed in fp32)...\n`);
  await ensureRandomTransformerFolder(dir, o.preset);
  const { model, params, weights } = loadTransformer(readPipelineFolder(dir));
  if (!(model instanceof PixArtTransformer2DModel)) throw new Error(`${dir}: not a PixArt transformer`);
  const tokens = preset.maxSequenceLength ?? 120;
  await benchForward(o, params, (width, height) => {
    const [h, w] = [height / 8, width / 8];
    const rng = new Rng(1);
    const sample = randomTensor(rng, [o.batch, model.config.inChannels, h, w]);
    const states = randomTensor(rng, [o.batch, tokens, model.config.captionChannels ?? model.config.crossAttentionDim]);
    const mask = new ort.Tensor('int64', BigInt64Array.from({ length: o.batch * tokens }, (_, i) => (i % tokens < tokens / 2 ? 1n : 0n)), [o.batch, tokens]);
    const timestep = new ort.Tensor('float32', new Float32Array(o.batch).fill(500), [o.batch]);
    const sizes = model.config.useAdditionalConditions ? {
      resolution: new ort.Tensor('float32', new Float32Array(2 * o.batch).map((_, i) => (i % 2 ? width : height)), [o.batch, 2]),
      aspectRatio: new ort.Tensor('float32', new Float32Array(o.batch).fill(height / width), [o.batch, 1]),
    } : undefined;
    let kv: Map<string, { k: ort.Tensor; v: ort.Tensor; bias: ort.Tensor }> | undefined;
    return {
      label: 'PixArt transformer',
      dry: (exec) => model.forwardShapes(exec, { batch: o.batch, latentHeight: h, latentWidth: w, tokens }),
      run: (exec) => model.forward(exec, sample, timestep, { states, mask }, sizes),
      withCrossKV: {
        once: async (exec) => (kv = await model.crossAttentionKV(exec, states, mask)),
        run: (exec) => model.forward(exec, sample, timestep, { states, mask, kv }, sizes),
      },
    };
  });
  weights.close();
}

async function benchForward(o: BenchUNetOptions, params: ParamSource, subjectAt: (width: number, height: number) => ForwardUnderTest): Promise<void> {
  const print = textOf(o);
  const results = [];
  for (const [width, height] of o.size) for (const precision of o.precision) {
    const runtime: RuntimeOptions = { device: 'cpu', threads: o.threads, precision };
    const subject = subjectAt(width, height);
    const dry = new DryExecutor();
    await subject.dry(dry);
    const macs = zeroMacs();
    for (const s of dry.calls) addMacs(macs, s.macs);

    const rng = new Rng(1);
    const exec = new OrtExecutor(params, runtime);
    let start = performance.now();
    await subject.run(exec);
    const firstSeconds = (performance.now() - start) / 1000;
    await subject.withCrossKV.once(exec);
    await subject.withCrossKV.run(exec);
    start = performance.now();
    await subject.withCrossKV.once(exec);
    const crossKVSeconds = (performance.now() - start) / 1000;
    const seconds: number[] = [];
    const secondsWithKV: number[] = [];
    let segmentSeconds = new Map<string, number>(); // of the fastest run, for the profile
    for (let r = 0; r < o.runs; r++) {
      exec.runSeconds.clear();
      start = performance.now();
      await subject.run(exec);
      seconds.push((performance.now() - start) / 1000);
      if (seconds[r] === Math.min(...seconds)) segmentSeconds = new Map(exec.runSeconds);
      start = performance.now();
      await subject.withCrossKV.run(exec);
      secondsWithKV.push((performance.now() - start) / 1000);
    }
    await exec.release();
    // The same MAC-carrying ops, each timed alone at its own shapes.
    const distinct = new Map<string, { op: HeavyOp; count: number; seconds: number }>();
    const opsBySegment = new Map<string, string[]>();
    for (const s of dry.calls) {
      const keys = s.heavyOps.map((op) => JSON.stringify(op));
      opsBySegment.set(s.name, keys);
      for (const [i, key] of keys.entries()) {
        const entry = distinct.get(key) ?? { op: s.heavyOps[i], count: 0, seconds: 0 };
        entry.count++;
        distinct.set(key, entry);
      }
    }
    // The machine's ceiling at this precision: one 2048³ product (a linear layer) timed alone.
    const ceiling: HeavyOp = { op: 'linear', input: [GEMM_SIZE, GEMM_SIZE], outFeatures: GEMM_SIZE, macs: GEMM_SIZE ** 3 };
    const maxBytes = Math.max(paramBytes(ceiling), ...[...distinct.values()].map((d) => paramBytes(d.op)));
    const opParams = randomParams(path.resolve(o.cache, 'random-params.bin'), maxBytes);
    const gemmGmacPerSecond = ceiling.macs / 1e9 / await timeOp(ceiling, opParams, runtime, 3, rng);
    for (const d of distinct.values()) d.seconds = await timeOp(d.op, opParams, runtime, 2, rng);
    const kernelSeconds = [...distinct.values()].reduce((t, d) => t + d.seconds * d.count, 0);

    const best = Math.min(...seconds);
    const result = {
      preset: o.preset, width, height, batch: o.batch, threads: o.threads, precision,
      gmacsFull: fullMacs(macs) / 1e9, gmacsCalflops: calflopsMacs(macs) / 1e9,
      firstRunSeconds: firstSeconds, seconds, bestSeconds: best, medianSeconds: median(seconds),
      gmacPerSecondFull: fullMacs(macs) / 1e9 / best,
      kernelSeconds, kernelGmacPerSecond: fullMacs(macs) / 1e9 / kernelSeconds,
      efficiency: kernelSeconds / best,
      gemmGmacPerSecond,
      peakRssBytes: process.resourceUsage().maxRSS * 1024,
      withCrossKV: { seconds: secondsWithKV, bestSeconds: Math.min(...secondsWithKV), onceSeconds: crossKVSeconds },
      profile: profileByKind(dry.calls, segmentSeconds, opsBySegment, distinct),
    };
    results.push(result);
    print(`${o.preset} ${subject.label} forward ${width}x${height}, batch ${o.batch}, ${precision}, ${o.threads} threads: ` +
      `${best.toFixed(3)} s best of ${o.runs} (median ${median(seconds).toFixed(3)} s; first run with session creation ${firstSeconds.toFixed(1)} s)`);
    print(`  runs: ${seconds.map((x) => x.toFixed(3)).join(' ')} s; peak RSS so far ${(result.peakRssBytes / 2 ** 30).toFixed(2)} GiB`);
    print(`  with cross-attention keys/values precomputed (as generate does): ${result.withCrossKV.bestSeconds.toFixed(3)} s best ` +
      `(${(best / result.withCrossKV.bestSeconds).toFixed(3)}× the per-call path; runs ${secondsWithKV.map((x) => x.toFixed(3)).join(' ')} s), ` +
      `computed once per prompt in ${crossKVSeconds.toFixed(3)} s`);
    print(`  MACs: ${result.gmacsFull.toFixed(1)} G full, ${result.gmacsCalflops.toFixed(1)} G counted like calflops`);
    print(`  rate: ${result.gmacPerSecondFull.toFixed(1)} GMAC/s full count`);
    print(`  same ops alone (${distinct.size} distinct conv/linear/attention shapes): ${kernelSeconds.toFixed(3)} s = ` +
      `${result.kernelGmacPerSecond.toFixed(1)} GMAC/s → the whole ${subject.label} runs at ${(100 * result.efficiency).toFixed(1)}% of the kernels' own rate`);
    print(`  a ${GEMM_SIZE}³ product alone at ${precision}: ${gemmGmacPerSecond.toFixed(1)} GMAC/s (this machine's ceiling for its linear layers)`);
    if (o.profile) {
      print(`  ${'segment kind'.padEnd(14)} ${'seconds'.padStart(8)} ${'ops alone'.padStart(9)} ${'GMACs'.padStart(8)} ${'GMAC/s'.padStart(7)}`);
      for (const p of result.profile) {
        print(`  ${p.kind.padEnd(14)} ${p.seconds.toFixed(3).padStart(8)} ${p.kernelSeconds.toFixed(3).padStart(9)} ${p.gmacs.toFixed(1).padStart(8)} ${(p.gmacs / p.seconds).toFixed(1).padStart(7)}`);
      }
    }
  }
  for (const r of results) {
    const fp32 = results.find((x) => x.width === r.width && x.height === r.height && x.precision === 'fp32');
    if (r.precision !== 'fp32' && fp32) {
      print(`${r.width}x${r.height}: ${r.precision} is ${(fp32.bestSeconds / r.bestSeconds).toFixed(2)}× as fast as fp32 (best vs best), ` +
        `${(fp32.medianSeconds / r.medianSeconds).toFixed(2)}× (median vs median)`);
    }
  }
  const pytorch = o.pytorch ? timePyTorch(o) : undefined;
  if (pytorch) {
    for (const r of results) {
      const p = pytorch.find((x) => x.size === r.width && r.width === r.height);
      if (!p) continue;
      print(`${r.width}x${r.height} ${r.precision}: diffusers on ${p.engine}: ${p.seconds_min.toFixed(3)} s best of ${p.runs.length} → ` +
        `diffusion.ts is ${(p.seconds_min / r.bestSeconds).toFixed(2)}× as fast (best vs best), ${(p.seconds_median / r.medianSeconds).toFixed(2)}× (median vs median)`);
      Object.assign(r, { pytorch: p });
    }
  }
  if (o.json) writeOutput(o.json, JSON.stringify(results, null, 2));
}

interface PyTorchTiming {
  engine: string;
  size: number;
  seconds_min: number;
  seconds_median: number;
  runs: number[];
}

const isPixArtPreset = (preset: string) => own(TRANSFORMER_PRESETS, preset)?.pipeline.startsWith('PixArt') ?? false;

/** What --pytorch can compare, checked before any timing (timePyTorch runs last). */
function checkPyTorchComparison(o: BenchUNetOptions): void {
  if (o.preset !== 'sd15' && !isPixArtPreset(o.preset)) throw new InputError('--pytorch', 'the PyTorch comparison covers the sd15 and PixArt presets', 'sd15 or pixart-*', o.preset);
  if (!o.size.some(([w, h]) => w === h)) throw new InputError('--size', 'the PyTorch comparison times square sizes only', 'at least one NxN size', o.size.map(([w, h]) => `${w}x${h}`).join(','));
  checkReferenceEnv(o.pytorch!);
}

/**
 * Runs the reference script for the preset in the reference environment (same threads, batch,
 * runs): tools/reference/bench_unet_torch.py (sd15) or bench_transformer_torch.py (PixArt).
 */
function timePyTorch(o: BenchUNetOptions): PyTorchTiming[] {
  const pixart = isPixArtPreset(o.preset);
  const sizes = o.size.filter(([w, h]) => w === h).map(([w]) => w).join(',');
  process.stderr.write('timing diffusers on PyTorch...\n');
  const args = ['--threads', `${o.threads}`, '--batch', `${o.batch}`, '--runs', `${o.runs}`, '--sizes', sizes, ...(pixart ? ['--preset', o.preset] : [])];
  return runReferenceScript<PyTorchTiming>(o.pytorch!, pixart ? 'bench_transformer_torch.py' : 'bench_unet_torch.py', args);
}

function profileByKind(
  calls: SegmentReport[],
  segmentSeconds: Map<string, number>,
  opsBySegment: Map<string, string[]>,
  distinct: Map<string, { seconds: number }>,
) {
  const kinds = new Map<string, { kind: string; seconds: number; kernelSeconds: number; gmacs: number }>();
  for (const s of calls) {
    const kind = segmentKind(s.name);
    const entry = kinds.get(kind) ?? { kind, seconds: 0, kernelSeconds: 0, gmacs: 0 };
    entry.gmacs += fullMacs(s.macs) / 1e9;
    for (const key of opsBySegment.get(s.name) ?? []) entry.kernelSeconds += distinct.get(key)!.seconds;
    kinds.set(kind, entry);
  }
  for (const [name, sec] of segmentSeconds) kinds.get(segmentKind(name))!.seconds += sec;
  return [...kinds.values()].sort((a, b) => b.seconds - a.seconds);
}
