/** PSNR, SSIM and the label font used by `diffuse bench`. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { drawLabel, labelWidth } from '../src/image/label.ts';
import { psnr, ssim } from '../src/metrics/image.ts';
import { Rng } from '../src/util/rng.ts';
import { SafetensorsFile } from '../src/weights/safetensors.ts';

const W = 24;
const H = 20;

function image(seed: number): Float32Array {
  const rng = new Rng(seed);
  return Float32Array.from({ length: 3 * W * H }, () => rng.uniform());
}

test('PSNR: 10·log10(1/MSE), infinite for identical images', () => {
  const a = new Float32Array(12).fill(0.5);
  const b = a.map((v, i) => v + (i % 2 ? 0.1 : -0.1)); // MSE 0.01 → 20 dB
  assert.ok(Math.abs(psnr(a, b) - 20) < 1e-4);
  assert.equal(psnr(a, a), Infinity);
});

test('SSIM: 1 for identical images, symmetric, falling as noise grows', () => {
  const a = image(1);
  assert.ok(Math.abs(ssim(a, a, W, H) - 1) < 1e-12);
  const rng = new Rng(2);
  const noisy = (amount: number) => a.map((v) => v + amount * (rng.uniform() - 0.5));
  const [light, heavy] = [noisy(0.1), noisy(0.6)];
  assert.ok(Math.abs(ssim(a, light, W, H) - ssim(light, a, W, H)) < 1e-12);
  assert.ok(ssim(a, light, W, H) > ssim(a, heavy, W, H));
  assert.ok(ssim(a, heavy, W, H) < 0.9);
  // A constant image against itself brightened: structure equal, luminance term only.
  const flat = new Float32Array(3 * W * H).fill(0.5);
  const c1 = 0.01 ** 2;
  const expected = (2 * 0.5 * 0.6 + c1) / (0.5 ** 2 + 0.6 ** 2 + c1);
  assert.ok(Math.abs(ssim(flat, flat.map((v) => v + 0.1), W, H) - expected) < 1e-6); // 0.6 is not exact in float32
});

test('SSIM equals scikit-image\'s structural_similarity on textured pairs (noise, shift and contrast, blur, another texture)', (t) => {
  // Goldens from tools/reference/make_ssim_goldens.py; the values span 0.55-0.90, so a wrong constant,
  // window or covariance normalisation moves them by far more than the tolerance.
  const dir = path.join(import.meta.dirname, 'fixtures', 'goldens', 'ssim');
  const index = JSON.parse(fs.readFileSync(path.join(dir, 'pairs.json'), 'utf8')) as { pairs: { name: string; width: number; height: number; ssim: number }[] };
  const images = SafetensorsFile.open(path.join(dir, 'pairs.safetensors'));
  try {
    assert.equal(index.pairs.length, 8);
    for (const p of index.pairs) {
      const ours = ssim(images.readFloat32(`${p.name}.a`), images.readFloat32(`${p.name}.b`), p.width, p.height);
      t.diagnostic(`${p.name}: ${ours.toFixed(6)} vs skimage ${p.ssim.toFixed(6)}`);
      assert.ok(Math.abs(ours - p.ssim) < 1e-6, `${p.name}: ${ours} vs skimage ${p.ssim}`);
    }
  } finally {
    images.close();
  }
});

test('labels: glyph pixels land where the text goes, and nowhere else', () => {
  const img = new Float32Array(3 * 40 * 12);
  drawLabel(img, 40, 12, 'i1', 1, 1, 1, [1, 0, 0]);
  const lit = [...img.subarray(0, 40 * 12)].filter((v) => v === 1).length;
  assert.equal(lit, 11 + 10); // the glyphs 'I' and '1' light 11 and 10 pixels
  assert.ok(img.subarray(40 * 12).every((v) => v === 0), 'only the red channel drawn');
  assert.equal(labelWidth('abc', 2), 36);
});
