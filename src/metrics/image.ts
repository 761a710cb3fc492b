/**
 * Fidelity of an image against a reference (same seed, unaccelerated): PSNR and SSIM on planar
 * RGB in [0, 1] ([3, H, W]).
 */

/** Peak signal-to-noise ratio in dB for signals in [0, 1]; Infinity for identical images. */
export function psnr(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) throw new Error(`psnr: ${a.length} vs ${b.length} values`);
  let sum = 0;
  for (let i = 0; i < a.length; i++) sum += (a[i] - b[i]) ** 2;
  const mse = sum / a.length;
  return mse === 0 ? Infinity : 10 * Math.log10(1 / mse);
}

/** Normalised 1-D Gaussian taps (the 11-tap, σ = 1.5 window of Wang et al. 2004). */
function gaussian(size = 11, sigma = 1.5): Float64Array {
  const taps = new Float64Array(size);
  const c = (size - 1) / 2;
  for (let i = 0; i < size; i++) taps[i] = Math.exp(-((i - c) ** 2) / (2 * sigma * sigma));
  const total = taps.reduce((s, v) => s + v, 0);
  return taps.map((v) => v / total);
}

/** Separable "valid" Gaussian filtering of one H×W plane. */
function blur(plane: Float64Array, height: number, width: number, taps: Float64Array): { data: Float64Array; h: number; w: number } {
  const k = taps.length;
  const w1 = width - k + 1;
  const h1 = height - k + 1;
  const rows = new Float64Array(height * w1);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < w1; x++) {
      let s = 0;
      for (let t = 0; t < k; t++) s += taps[t] * plane[y * width + x + t];
      rows[y * w1 + x] = s;
    }
  }
  const out = new Float64Array(h1 * w1);
  for (let y = 0; y < h1; y++) {
    for (let x = 0; x < w1; x++) {
      let s = 0;
      for (let t = 0; t < k; t++) s += taps[t] * rows[(y + t) * w1 + x];
      out[y * w1 + x] = s;
    }
  }
  return { data: out, h: h1, w: w1 };
}

/**
 * Mean SSIM over the three channels, as Wang et al. 2004 define it: Gaussian window 11, σ 1.5,
 * K1 0.01, K2 0.03, data range 1, population (co)variances, windows fully inside the image
 * (skimage's structural_similarity with gaussian_weights=True, use_sample_covariance=False).
 */
export function ssim(a: Float32Array, b: Float32Array, width: number, height: number): number {
  const taps = gaussian();
  if (width < taps.length || height < taps.length) throw new Error(`ssim: image ${width}×${height} smaller than the 11×11 window`);
  const c1 = 0.01 ** 2;
  const c2 = 0.03 ** 2;
  const plane = width * height;
  let total = 0;
  for (let ch = 0; ch < 3; ch++) {
    const x = Float64Array.from(a.subarray(ch * plane, (ch + 1) * plane));
    const y = Float64Array.from(b.subarray(ch * plane, (ch + 1) * plane));
    const mx = blur(x, height, width, taps);
    const my = blur(y, height, width, taps).data;
    const xx = blur(x.map((v) => v * v), height, width, taps).data;
    const yy = blur(y.map((v) => v * v), height, width, taps).data;
    const xy = blur(x.map((v, i) => v * y[i]), height, width, taps).data;
    let sum = 0;
    for (let i = 0; i < mx.data.length; i++) {
      const ux = mx.data[i];
      const uy = my[i];
      const vx = xx[i] - ux * ux;
      const vy = yy[i] - uy * uy;
      const cxy = xy[i] - ux * uy;
      sum += ((2 * ux * uy + c1) * (2 * cxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2));
    }
    total += sum / mx.data.length;
  }
  return total / 3;
}
