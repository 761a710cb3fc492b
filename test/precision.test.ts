/**
 * --precision int8: the quantized graphs compute exactly the 8-bit arithmetic they stand for
 * (checked against that arithmetic written out in JavaScript: ONNX's DynamicQuantizeLinear on the
 * activations, symmetric per-channel int8 weights, int32 sums), stay close to fp32, and the
 * reference model's image at int8 stays within a stated PSNR of its fp32 image.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as ort from 'onnxruntime-node';
import { GraphBuilder } from '../src/graph/builder.ts';
import { float16ToFloat32 } from '../src/graph/half.ts';
import { OnnxDataType } from '../src/graph/onnx-proto.ts';
import { timestepEmbedding } from '../src/models/layers.ts';
import { quantizeRows, type Precision } from '../src/graph/quantize.ts';
import { psnr } from '../src/metrics/image.ts';
import { loadPipeline } from '../src/pipelines/stable-diffusion.ts';
import { REFERENCE_MODEL, REFERENCE_MODELS } from '../src/pipelines/reference-model.ts';
import { loadDiTPipeline } from '../src/pipelines/dit.ts';
import { readPipelineFolder } from '../src/weights/diffusers-folder.ts';
import { OrtExecutor, createSession, parsePrecision, unsignedInt8Weights } from '../src/runtime/ort-executor.ts';
import { Rng } from '../src/util/rng.ts';
import { fileParams, tempDir, throwsInputError } from './helpers/files.ts';
import { assertClose, relativeError } from './helpers/compare.ts';

test('quantizeRows: one scale per output row (max |w| / 127), laid out [kernel position, channel] × rows', () => {
  // Two rows of [inner 2, kernel 2]: row 0 = c0 (1, -3), c1 (0.5, 4); row 1 all zero.
  const { weight, scale } = quantizeRows(new Float32Array([1, -3, 0.5, 4, 0, 0, 0, 0]), 2, 2, 2);
  assert.deepEqual([...scale], [Math.fround(4 / 127), 1]);
  // Index (k · inner + c) · rows + r: row 0's values at even indices, row 1's zeros at odd ones.
  assert.deepEqual([...weight], [32, 0, 16, 0, -95, 0, 127, 0]);
});

test('parsePrecision names the option and says why bf16 is not a mode; int8 runs on the CPU, fp16 on WebGPU', () => {
  assert.equal(parsePrecision('int8'), 'int8');
  throwsInputError(() => parsePrecision('bf16', '--precision'), '--precision', 'no bfloat16 matrix kernels on CPU', 'fp32, int8 or fp16', 'bf16');
  throwsInputError(() => parsePrecision('int4'), 'precision: unknown precision; expected fp32, int8 or fp16, found "int4"');
  const unused = { param: () => { throw new Error('unused'); } };
  throwsInputError(() => new OrtExecutor(unused, { device: 'webgpu', precision: 'int8' }), 'precision', 'int8 runs with device cpu only');
  throwsInputError(() => new OrtExecutor(unused, { precision: 'fp16' }), 'precision', 'fp16 runs with device webgpu only', 'no faster than fp32');
});

test('fp16 graphs compute in float16 between float32 inputs and outputs; the timestep embedding stays float32', (t) => {
  const params = fileParams(tempDir(t), { 'fc.weight': new Float32Array(8 * 4), 'fc.bias': new Float32Array(8) });
  const g = new GraphBuilder('half', params, { dynamicBatch: true, precision: 'fp16' });
  const x = g.input('x', [1, 3, 4]);
  const embedding = timestepEmbedding(g, g.input('timestep', [1]), 4, true, 1);
  const masked = g.add(g.linear(x, 'fc', 8), g.scalar(-3.4028234663852886e38));
  g.output(g.add(masked, g.reshape(g.linear(embedding, 'fc', 8), [1, 1, 8])), 'y');
  const { graph } = g.toModel((f) => f);
  assert.deepEqual([...graph.inputs, ...graph.outputs].map((v) => v.elemType), [OnnxDataType.FLOAT, OnnxDataType.FLOAT, OnnxDataType.FLOAT]);
  const producer = new Map(graph.nodes.flatMap((n) => n.outputs.map((o) => [o, n])));
  const castTo = (name: string) => {
    const n = producer.get(name);
    return n?.opType === 'Cast' ? (n.attributes.to as { value: number }).value : undefined;
  };
  // Both Gemms take float16 casts of their input and of the file's float32 weights (which ORT folds).
  const gemms = graph.nodes.filter((n) => n.opType === 'Gemm');
  assert.equal(gemms.length, 2);
  const throughReshape = (name: string): string => (producer.get(name)?.opType === 'Reshape' ? producer.get(name)!.inputs[0] : name);
  for (const gemm of gemms) assert.deepEqual(gemm.inputs.map((i) => castTo(throughReshape(i))), [OnnxDataType.FLOAT16, OnnxDataType.FLOAT16, OnnxDataType.FLOAT16]);
  // One cast per value and precision: the shared weights are cast once.
  assert.equal(new Set(gemms.flatMap((n) => n.inputs.slice(1))).size, 2);
  // The sinusoid's angles are float32 (timestep 999 needs its resolution), its frequencies a float32 constant.
  const constants = new Map(graph.initializers.filter((i) => i.raw).map((i) => [i.name, i]));
  const sin = graph.nodes.find((n) => n.opType === 'Sin')!;
  const angles = producer.get(sin.inputs[0])!;
  assert.equal(angles.opType, 'Mul');
  assert.ok(angles.inputs.some((name) => constants.get(name)?.dataType === OnnxDataType.FLOAT));
  // A float constant outside it is float16, clamped to the largest finite half so a mask stays finite.
  const halves = [...constants.values()].filter((c) => c.dataType === OnnxDataType.FLOAT16);
  assert.deepEqual(halves.map((c) => [...float16ToFloat32(new Uint16Array(c.raw!.slice().buffer))]), [[-65504]]);
  // The output is cast back to float32.
  assert.equal(producer.get('y')!.opType, 'Cast');
  assert.equal(castTo('y'), OnnxDataType.FLOAT);
});

/** ONNX DynamicQuantizeLinear: uint8, scale over [min(0, x), max(0, x)], zero point rounded half to even. */
function dynamicQuantize(x: Float32Array): { q: Uint8Array; scale: number; zero: number } {
  let [lo, hi] = [0, 0];
  for (const v of x) [lo, hi] = [Math.min(lo, v), Math.max(hi, v)];
  const scale = Math.fround((hi - lo) / 255);
  const roundEven = (v: number) => (Math.abs(v % 1) === 0.5 ? 2 * Math.round(v / 2) : Math.round(v));
  const zero = Math.min(255, Math.max(0, roundEven(-lo / scale)));
  return { q: Uint8Array.from(x, (v) => Math.min(255, Math.max(0, roundEven(Math.fround(v / scale)) + zero))), scale, zero };
}

/** The int8 convolution written out: NCHW in and out, weight [O, C, k, k], zero padding. */
function int8Conv(x: Float32Array, dims: number[], w: Float32Array, b: Float32Array, o: number, k: number, stride: number, pad: number): Float32Array {
  const [n, c, h, wd] = dims;
  const { q, scale, zero } = dynamicQuantize(x);
  const { weight, scale: ws } = quantizeRows(w, o, c, k * k);
  const [oh, ow] = [Math.floor((h + 2 * pad - k) / stride) + 1, Math.floor((wd + 2 * pad - k) / stride) + 1];
  const y = new Float32Array(n * o * oh * ow);
  for (let bi = 0; bi < n; bi++) for (let oc = 0; oc < o; oc++) for (let oy = 0; oy < oh; oy++) for (let ox = 0; ox < ow; ox++) {
    let acc = 0;
    for (let ic = 0; ic < c; ic++) for (let ky = 0; ky < k; ky++) for (let kx = 0; kx < k; kx++) {
      const [iy, ix] = [oy * stride + ky - pad, ox * stride + kx - pad];
      const xv = iy < 0 || ix < 0 || iy >= h || ix >= wd ? 0 : q[((bi * c + ic) * h + iy) * wd + ix] - zero;
      acc += xv * weight[((ky * k + kx) * c + ic) * o + oc];
    }
    y[((bi * o + oc) * oh + oy) * ow + ox] = acc * scale * ws[oc] + b[oc];
  }
  return y;
}

function snr(actual: Float32Array, expected: Float32Array): number {
  let [signal, noise] = [0, 0];
  for (let i = 0; i < expected.length; i++) [signal, noise] = [signal + expected[i] ** 2, noise + (actual[i] - expected[i]) ** 2];
  return 10 * Math.log10(signal / noise);
}

/**
 * fp32; int8 with the weights this CPU gets (signed with VNNI, else unsigned: src/graph/quantize.ts);
 * and int8 with unsigned weights, exact on every CPU.
 */
async function runBoth(build: (g: GraphBuilder) => void, params: ReturnType<typeof fileParams>, feeds: Record<string, ort.Tensor>) {
  const out: Float32Array[] = [];
  for (const [precision, unsigned] of [['fp32', false], ['int8', unsignedInt8Weights()], ['int8', true]] as const) {
    const g = new GraphBuilder(precision, params, { dynamicBatch: true, precision, unsignedInt8Weights: unsigned });
    build(g);
    const session = await createSession(g, { threads: 1 });
    out.push((await session.run(feeds)).y.data as Float32Array);
    await session.release();
  }
  return { fp32: out[0], int8: out[1], int8Unsigned: out[2] };
}

for (const [kernel, stride, padding] of [[3, 1, 1], [3, 2, 1], [1, 1, 0], [2, 2, 0]]) {
  test(`int8 conv2d (kernel ${kernel}, stride ${stride}, padding ${padding}) is the 8-bit arithmetic exactly and near fp32`, async (t) => {
    const rng = new Rng(kernel * 10 + stride);
    const [n, c, h, w, o] = [2, 5, 7, 6, 4];
    const x = rng.fillNormal(new Float32Array(n * c * h * w));
    const weight = rng.fillNormal(new Float32Array(o * c * kernel * kernel));
    const bias = rng.fillNormal(new Float32Array(o));
    const params = fileParams(tempDir(t), { 'conv.weight': weight, 'conv.bias': bias });
    const { fp32, int8, int8Unsigned } = await runBoth((g) => g.output(g.conv2d(g.input('x', [n, c, h, w]), 'conv', o, kernel, { stride, padding }), 'y'),
      params, { x: new ort.Tensor('float32', x, [n, c, h, w]) });
    const arithmetic = int8Conv(x, [n, c, h, w], weight, bias, o, kernel, stride, padding);
    assertClose(int8, arithmetic, 1e-5, 'int8 conv vs its arithmetic');
    assertClose(int8Unsigned, arithmetic, 1e-5, 'int8 conv, unsigned weights, vs its arithmetic');
    assert.ok(snr(int8, fp32) > 30, `SNR against fp32 ${snr(int8, fp32).toFixed(1)} dB`);
  });
}

test('int8 linear (and a row range of one, as GEGLU reads its halves) is the 8-bit arithmetic exactly and near fp32', async (t) => {
  const rng = new Rng(5);
  const [rows, inF, outF] = [6, 12, 10];
  const x = rng.fillNormal(new Float32Array(rows * inF));
  const weight = rng.fillNormal(new Float32Array(outF * inF));
  const bias = rng.fillNormal(new Float32Array(outF));
  const params = fileParams(tempDir(t), { 'fc.weight': weight, 'fc.bias': bias });
  const [start, end] = [3, 9];
  const { fp32, int8, int8Unsigned } = await runBoth((g) => g.output(g.linearRows(g.input('x', [1, rows, inF]), 'fc', outF, start, end), 'y'),
    params, { x: new ort.Tensor('float32', x, [1, rows, inF]) });
  // A linear is a 1×1 convolution over tokens: the same written-out arithmetic, on rows [start, end).
  const tokens = new Float32Array(inF * rows);
  for (let r = 0; r < rows; r++) for (let i = 0; i < inF; i++) tokens[i * rows + r] = x[r * inF + i];
  const picked = weight.slice(start * inF, end * inF);
  const expectedChannels = int8Conv(tokens, [1, inF, rows, 1], picked, bias.slice(start, end), end - start, 1, 1, 0);
  const expected = new Float32Array(rows * (end - start));
  for (let r = 0; r < rows; r++) for (let o = 0; o < end - start; o++) expected[r * (end - start) + o] = expectedChannels[o * rows + r];
  assertClose(int8, expected, 1e-5, 'int8 linear vs its arithmetic');
  assertClose(int8Unsigned, expected, 1e-5, 'int8 linear, unsigned weights, vs its arithmetic');
  assert.ok(snr(int8, fp32) > 30, `SNR against fp32 ${snr(int8, fp32).toFixed(1)} dB`);
});

/** The first image of a generation at each precision, a fresh pipeline for each. */
async function imagesAt(open: (precision: Precision) => Promise<{ generate(): Promise<Float32Array>; release(): Promise<void> }>) {
  const images: Float32Array[] = [];
  for (const precision of ['fp32', 'int8'] as const) {
    const pipeline = await open(precision);
    try {
      images.push(await pipeline.generate());
    } finally {
      await pipeline.release();
    }
  }
  return { fp32: images[0], int8: images[1] };
}

test('the reference model at int8: the same image as fp32 within 40 dB PSNR, same seed; text encoder and VAE stay fp32', async () => {
  const { fp32, int8 } = await imagesAt(async (precision) => {
    const pipeline = await loadPipeline(REFERENCE_MODEL!, { threads: 1, precision });
    const request = { prompt: 'a red circle on the left', steps: 20, seed: 1 };
    return { generate: async () => (await pipeline.generate(request)).images[0].data, release: () => pipeline.release() };
  });
  const db = psnr(int8, fp32);
  // Measured 45.2 dB (2026-12-01); the two must differ (int8 really ran).
  assert.ok(db >= 40 && db < 80, `PSNR ${db.toFixed(2)} dB`);
  assert.ok(relativeError(int8, fp32) > 0);
});

test('the reference DiT at int8 (patch embedding, adaLN and every block as 8-bit products): within 35 dB of fp32', async () => {
  const { fp32, int8 } = await imagesAt(async (precision) => {
    const pipeline = loadDiTPipeline(readPipelineFolder(REFERENCE_MODELS['reference-dit']), { threads: 1, precision });
    return { generate: async () => (await pipeline.generate({ classLabels: [3], steps: 20, seed: 2 })).images[0].data, release: () => pipeline.release() };
  });
  const db = psnr(int8, fp32);
  assert.ok(db >= 35 && db < 80, `PSNR ${db.toFixed(2)} dB`);
});
