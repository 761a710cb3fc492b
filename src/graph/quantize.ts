/**
 * `precision: 'int8'`: the denoiser's linear layers and convolutions run as 8-bit integer products.
 * Weights are quantized here, symmetric with one scale per output channel, when a segment's
 * session is built; activations are quantized by ONNX Runtime at run time with one asymmetric
 * uint8 scale per tensor (DynamicQuantizeLinear), so no calibration set is needed. uint8 × int8 is
 * the product MLAS runs on VNNI (measured on this CPU on SD 1.5 shapes: 3×3 convs 1.7–2.6×, large
 * linears 2–2.8× the fp32 kernels; per-layer SNR 46–52 dB). x86 CPUs without VNNI run it with
 * VPMADDUBSW, whose int16 sums of two products saturate (2·255·127 > 32767): on a 2-core AVX2 EPYC
 * the reference model's int8 image came out 28 dB from fp32 instead of 40+. There the same weights
 * go as uint8 with zero point 128 (`unsigned`), which MLAS multiplies exactly, widened to int16.
 */
import { OnnxDataType, type TensorProto } from './onnx-proto.ts';
import type { WeightRef } from './builder.ts';

/** The denoiser's arithmetic: int8 is this file's (CPU); fp16 is src/graph/builder.ts's autocast (WebGPU). */
export type Precision = 'fp32' | 'int8' | 'fp16';
export const PRECISIONS: readonly Precision[] = ['fp32', 'int8', 'fp16'];

/**
 * A parameter stored as int8 for a matrix product: `weight` [kernel·inner, rows] and `scale` [rows],
 * from a float tensor [rows, inner, kernel] (a Linear's [out, in] has kernel 1; a Conv's
 * [out, in, kh, kw] has kernel kh·kw). The product's inner axis runs kernel position first, then
 * channel: the order an NHWC im2col concatenates its shifted copies in.
 */
export interface QuantizedParam {
  ref: WeightRef;
  rows: number;
  inner: number;
  kernel: number;
  weightName: string;
  scaleName: string;
  /** Stored as uint8 = int8 + 128 with this per-row zero point tensor (uint8, 128), for CPUs whose uint8 × int8 saturates. */
  zeroPointName?: string;
}

/** Symmetric per-row int8 (the range ±127; an all-zero row gets scale 1). */
export function quantizeRows(w: Float32Array, rows: number, inner: number, kernel: number): { weight: Int8Array; scale: Float32Array } {
  const width = inner * kernel;
  if (w.length !== rows * width) throw new Error(`quantizeRows: ${w.length} values for [${rows}, ${inner}, ${kernel}]`);
  const weight = new Int8Array(w.length);
  const scale = new Float32Array(rows);
  for (let r = 0; r < rows; r++) {
    let max = 0;
    for (let i = r * width; i < (r + 1) * width; i++) max = Math.max(max, Math.abs(w[i]));
    const s = max > 0 ? max / 127 : 1;
    scale[r] = s;
    for (let c = 0; c < inner; c++) {
      for (let k = 0; k < kernel; k++) weight[(k * inner + c) * rows + r] = Math.round(w[(r * inner + c) * kernel + k] / s);
    }
  }
  return { weight, scale };
}

/** Bytes of a parameter's initializers: its 8-bit weight, one float32 scale per row and, unsigned, one zero point per row. */
export function quantizedBytes(p: QuantizedParam): number {
  return p.rows * (p.inner * p.kernel + 4 + (p.zeroPointName ? 1 : 0));
}

/**
 * What decides the int8 initializers of `params` without making them: each parameter's stored
 * tensor (file, offset, dtype, shape; the file's identity is keyed by the caller) and layout, and
 * the scheme. Bump the scheme's version when quantizeRows or the layout changes: cached sessions
 * are keyed by this.
 */
export function quantizationKey(params: readonly QuantizedParam[]): Uint8Array {
  const scheme = 'symmetric per-row int8 (uint8 + 128 where a zero point is named), [kernel·inner, rows], v2';
  return new TextEncoder().encode(JSON.stringify({ scheme, params: params.map((p) => [p.ref, p.rows, p.inner, p.kernel, p.weightName, p.scaleName, p.zeroPointName]) }));
}

/** The two initializers of each quantized parameter; `read` gives a parameter's values as float32. */
export async function quantizedInitializers(params: readonly QuantizedParam[], read: (ref: WeightRef) => Promise<Float32Array>): Promise<TensorProto[]> {
  const out: TensorProto[] = [];
  for (const p of params) {
    const { weight, scale } = quantizeRows(await read(p.ref), p.rows, p.inner, p.kernel);
    const dims = [p.kernel * p.inner, p.rows];
    out.push({ name: p.scaleName, dims: [p.rows], dataType: OnnxDataType.FLOAT, raw: new Uint8Array(scale.buffer) });
    if (p.zeroPointName) {
      out.push(
        { name: p.weightName, dims, dataType: OnnxDataType.UINT8, raw: Uint8Array.from(weight, (v) => v + 128) },
        { name: p.zeroPointName, dims: [p.rows], dataType: OnnxDataType.UINT8, raw: new Uint8Array(p.rows).fill(128) },
      );
    } else {
      out.push({ name: p.weightName, dims, dataType: OnnxDataType.INT8, raw: new Uint8Array(weight.buffer) });
    }
  }
  return out;
}
