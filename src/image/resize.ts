/**
 * Lanczos resizing as Pillow's `Image.resize(size, LANCZOS)` does it on 8-bit images, which is what
 * diffusers' VaeImageProcessor applies to an init image whose size is not a multiple of the VAE
 * factor: a separable a=3 Lanczos window stretched by the scale when shrinking (so it antialiases),
 * weights normalised per output pixel and rounded to 22-bit fixed point, the horizontal pass first,
 * each pass rounded and clipped to 8 bits. Integer arithmetic as Pillow's, so results are equal.
 */
import type { GeneratedImage } from '../pipelines/common.ts';

const PRECISION_BITS = 22;
const ONE = 2 ** PRECISION_BITS;

function sinc(x: number): number {
  if (x === 0) return 1;
  const px = x * Math.PI;
  return Math.sin(px) / px;
}

function lanczos(x: number): number {
  return x >= -3 && x < 3 ? sinc(x) * sinc(x / 3) : 0;
}

/** Per output position: the first input index and the fixed-point weights of the inputs it reads. */
function coefficients(inSize: number, outSize: number): { start: number; weights: number[] }[] {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1);
  const support = 3 * filterScale;
  const out: { start: number; weights: number[] }[] = [];
  for (let o = 0; o < outSize; o++) {
    const center = (o + 0.5) * scale;
    const start = Math.max(Math.trunc(center - support + 0.5), 0);
    const end = Math.min(Math.trunc(center + support + 0.5), inSize);
    const raw: number[] = [];
    let total = 0;
    for (let x = start; x < end; x++) {
      const w = lanczos((x - center + 0.5) / filterScale);
      raw.push(w);
      total += w;
    }
    const weights = raw.map((w) => {
      const k = total === 0 ? w : w / total;
      return Math.trunc(k < 0 ? -0.5 + k * ONE : 0.5 + k * ONE);
    });
    out.push({ start, weights });
  }
  return out;
}

function clip8(sum: number): number {
  if (sum >= ONE * 256) return 255;
  if (sum <= 0) return 0;
  return Math.floor(sum / ONE);
}

/** One pass over 8-bit planes [channels][rows × length] along rows (stride 1) or columns. */
function pass(planes: Uint8Array[], width: number, height: number, outWidth: number, outHeight: number): Uint8Array[] {
  const horizontal = outWidth !== width;
  const coeffs = horizontal ? coefficients(width, outWidth) : coefficients(height, outHeight);
  return planes.map((plane) => {
    const out = new Uint8Array(outWidth * outHeight);
    for (let y = 0; y < outHeight; y++) {
      for (let x = 0; x < outWidth; x++) {
        const { start, weights } = coeffs[horizontal ? x : y];
        let sum = ONE / 2;
        for (let k = 0; k < weights.length; k++) {
          sum += (horizontal ? plane[y * width + start + k] : plane[(start + k) * width + x]) * weights[k];
        }
        out[y * outWidth + x] = clip8(sum);
      }
    }
    return out;
  });
}

/** 8-bit planes of a planar [0, 1] image (values rounded to the nearest level). */
export function toBytes(image: GeneratedImage): Uint8Array[] {
  const size = image.width * image.height;
  return [0, 1, 2].map((c) => Uint8Array.from(image.data.subarray(c * size, (c + 1) * size), (v) => Math.round(Math.min(1, Math.max(0, v)) * 255)));
}

/** A planar RGB image resized to width × height with Pillow's 8-bit Lanczos (the same image when the size matches). */
export function resizeLanczos(image: GeneratedImage, width: number, height: number): GeneratedImage {
  if (image.width === width && image.height === height) return image;
  let planes = toBytes(image);
  if (width !== image.width) planes = pass(planes, image.width, image.height, width, image.height);
  if (height !== image.height) planes = pass(planes, width, image.height, width, height);
  const data = new Float32Array(3 * width * height);
  planes.forEach((plane, c) => data.set(Float32Array.from(plane, (v) => v / 255), c * width * height));
  return { data, width, height };
}
