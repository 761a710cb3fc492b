/**
 * img2img against diffusers' StableDiffusionImg2ImgPipeline / StableDiffusionXLImg2ImgPipeline on
 * the tiny fixtures (goldens from tools/reference/make_img2img_goldens.py, made with the noise our
 * generator draws for the case's seed): only the image file, strength and seed go in; final latents
 * within 1e-3 relative, the decoded image within 2e-3. Also: the init image reader, Pillow's Lanczos
 * resize to the level, and what img2img refuses.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { readImage } from '../src/image/read.ts';
import { encode } from 'fast-png';
import jpeg from 'jpeg-js';
import { resizeLanczos, toBytes } from '../src/image/resize.ts';
import { loadPixArtPipeline } from '../src/pipelines/pixart.ts';
import { loadPipeline } from '../src/pipelines/stable-diffusion.ts';
import { readPipelineFolder } from '../src/weights/diffusers-folder.ts';
import type { SchedulerName } from '../src/schedulers/index.ts';
import { SafetensorsFile } from '../src/weights/safetensors.ts';
import { assertClose, assertImageClose, relativeError } from './helpers/compare.ts';
import { rejectsInputError, tempDir, throwsInputError } from './helpers/files.ts';

const FIXTURES = path.join(import.meta.dirname, 'fixtures');
const GOLDENS = path.join(FIXTURES, 'goldens', 'img2img');

interface Case {
  name: string;
  seed: number;
  scheduler: SchedulerName;
  prompt: string | string[];
  negative_prompt: string | null;
  image: string;
  num_inference_steps: number;
  strength: number;
  guidance_scale: number;
  num_images_per_prompt: number;
  /** PixArt cases give the size (no resolution binning). */
  width?: number;
  height?: number;
  decoded?: boolean;
}

/** The fixture's pipeline: Stable Diffusion's, or PixArt's without resolution binning (as the goldens). */
async function open(fixture: string) {
  const dir = path.join(FIXTURES, fixture);
  if (!fixture.includes('pixart')) return loadPipeline(dir);
  const pixart = loadPixArtPipeline(readPipelineFolder(dir));
  return {
    generate: (r: Parameters<typeof pixart.generate>[0]) => pixart.generate({ ...r, resolutionBinning: false }),
    release: () => pixart.release(),
  };
}

for (const fixture of ['tiny-sd1', 'tiny-sd2', 'tiny-sdxl', 'tiny-pixart-alpha', 'tiny-pixart-sigma']) {
  test(`${fixture}: img2img equals diffusers for every scheduler, strength and batch`, async (t) => {
    const cases = JSON.parse(fs.readFileSync(path.join(GOLDENS, `${fixture}.json`), 'utf8')) as Case[];
    const goldens = SafetensorsFile.open(path.join(GOLDENS, `${fixture}.safetensors`));
    const pipeline = await open(fixture);
    try {
      for (const c of cases) {
        const calls: { step: number; steps: number }[] = [];
        const result = await pipeline.generate({
          prompt: c.prompt,
          negativePrompt: c.negative_prompt ?? undefined,
          image: readImage(path.join(GOLDENS, c.image)),
          strength: c.strength,
          seed: c.seed,
          steps: c.num_inference_steps,
          guidanceScale: c.guidance_scale,
          imagesPerPrompt: c.num_images_per_prompt,
          scheduler: c.scheduler,
          // Without width/height (and for the resized case): the image's size rounded down.
          ...(c.image === 'init-128.png' && c.width ? { width: c.width, height: c.height } : {}),
          output: c.decoded ? 'image' : 'latent',
          onStep: (s) => calls.push(s),
        });
        const err = assertClose(result.latents.data, goldens.readFloat32(`${c.name}.latents_out`), 1e-3, `${c.name} latents`);
        // Progress counts the calls that run: int(steps × strength) of them (PNDM makes extra calls).
        const run = Math.floor(c.num_inference_steps * c.strength);
        assert.deepEqual(calls.map((s) => s.step), calls.map((_, i) => i + 1), `${c.name}: steps reported`);
        assert.ok(calls.every((s) => s.steps === calls.length), `${c.name}: total reported`);
        if (c.scheduler !== 'pndm') assert.equal(calls.length, run, `${c.name}: calls`);
        let note = `${c.name}: latents relative error ${err.toExponential(2)}, ${calls.length} calls`;
        if (c.decoded) {
          const worst = assertImageClose(result.images[0].data, goldens.readFloat32(`${c.name}.image`), 2e-3, c.name);
          note += `, image max |diff| ${worst.toExponential(2)}`;
        }
        t.diagnostic(note);
      }
    } finally {
      goldens.close();
      await pipeline.release();
    }
  });
}

test("Lanczos resize equals Pillow's to the level, up and down, one side or both", () => {
  const st = SafetensorsFile.open(path.join(GOLDENS, 'resize.safetensors'));
  try {
    for (const [name, info] of st.tensors) {
      const dot = name.lastIndexOf('.');
      const [w, h] = name.slice(dot + 1).split('x').map(Number);
      const out = toBytes(resizeLanczos(readImage(path.join(GOLDENS, name.slice(0, dot))), w, h));
      const expected = st.readRaw(name); // [h, w, 3] uint8
      assert.deepEqual(info.shape, [h, w, 3]);
      for (let p = 0; p < w * h; p++) {
        for (let c = 0; c < 3; c++) assert.equal(out[c][p], expected[p * 3 + c], `${name}: pixel ${p} channel ${c}`);
      }
    }
  } finally {
    st.close();
  }
});

test('every acceleration method runs on the calls img2img runs, counted from 0', async () => {
  const pipeline = await loadPipeline(path.join(FIXTURES, 'tiny-sd1'));
  const image = readImage(path.join(GOLDENS, 'init-128.png'));
  // 10 DDIM steps at strength 0.5: the last 5 calls run.
  const run = (accel: string[]) => pipeline.generate({ prompt: 'a cat', image, strength: 0.5, steps: 10, seed: 1, scheduler: 'ddim', accel, output: 'latent' });
  try {
    const plain = await run([]);
    const cases: [string[], (r: Awaited<ReturnType<typeof run>>) => void][] = [
      // CFG for the 2 calls before the gate, then the conditional half alone.
      [['tgate:gate_step=2'], (r) => assert.equal(r.accel?.cfgCalls, 2)],
      // 'auto' fits the 5 calls that run: the gate at 2/5 of them.
      [['tgate'], (r) => assert.equal(r.accel?.cfgCalls, 2)],
      // Full passes at calls 0, 2, 4: the first call that runs is a full one.
      [['deepcache:cache_interval=2'], (r) => assert.equal(r.accel?.stats.shallowPasses, 2)],
      [['deepcache:uniform=false'], (r) => assert.ok(r.accel!.stats.shallowPasses > 0 && r.accel!.stats.shallowPasses < 5)],
      [['tome'], (r) => assert.equal(r.accel?.stats.mergedBlocks, 5 * 5)],
      [['attn-reuse'], (r) => assert.ok(r.accel!.stats.reusedMaps > 0)],
      [['fora'], (r) => assert.ok(r.accel!.stats.reusedSegments > 0)],
      [['tgate:gate_step=2', 'deepcache:cache_interval=2'], (r) => assert.equal(r.accel?.cfgCalls, 2)],
    ];
    for (const [accel, check] of cases) {
      const r = await run(accel);
      check(r);
      // Still the image's denoising: close to the plain run, not noise.
      assert.ok(relativeError(r.latents.data, plain.latents.data) < 0.5, `${accel}: far from the plain img2img run`);
    }
    await rejectsInputError(() => run(['tgate:gate_step=5']), 'accel tgate:gate_step', 'img2img at strength 0.5 runs the last 5 of the schedule\'s 10 model calls');
  } finally {
    await pipeline.release();
  }
});

test('img2img refuses what it cannot do, naming the option', async () => {
  const pipeline = await loadPipeline(path.join(FIXTURES, 'tiny-sd1'));
  const image = readImage(path.join(GOLDENS, 'init-128.png'));
  const base = { prompt: 'a cat', steps: 4, seed: 1, output: 'latent' as const };
  try {
    await rejectsInputError(() => pipeline.generate({ ...base, strength: 0.5 }), 'strength', 'is for img2img');
    await rejectsInputError(() => pipeline.generate({ ...base, image, strength: 0 }), 'strength', '(0, 1]');
    await rejectsInputError(() => pipeline.generate({ ...base, image, strength: 1.5 }), 'strength', '(0, 1]');
    await rejectsInputError(() => pipeline.generate({ ...base, image, strength: 0.2 }), 'strength', 'runs no step of 4');
    await rejectsInputError(() => pipeline.generate({ ...base, image, latents: { data: new Float32Array(4 * 16 * 16), dims: [1, 4, 16, 16] } }), 'latents', 'image');
    await rejectsInputError(() => pipeline.generate({ ...base, image: { data: new Float32Array(5), width: 2, height: 2 } }), 'image', 'planar RGB');
    await rejectsInputError(() => pipeline.generate({ ...base, image: 'photo.png' as never }), 'image', 'readImage(file)');
    await rejectsInputError(() => pipeline.generate({ ...base, image: { data: new Float32Array(12).fill(255), width: 2, height: 2 } }), 'image', 'values in [0, 1]');
    await rejectsInputError(() => pipeline.generate({ ...base, image, width: 100 }), 'width/height', 'multiples of 8');
    // The size defaults to the image's, rounded down to the VAE factor; a given size resizes it.
    const odd = resizeLanczos(image, 45, 30);
    assert.deepEqual((await pipeline.generate({ ...base, image: odd })).latents.dims, [1, 4, 3, 5]);
    assert.deepEqual((await pipeline.generate({ ...base, image: odd, width: 64, height: 32 })).latents.dims, [1, 4, 4, 8]);
    // A batch: every image has its own seed, and a run of that seed alone gives it.
    const batch = await pipeline.generate({ ...base, image, seed: 7, imagesPerPrompt: 2 });
    const alone = await pipeline.generate({ ...base, image, seed: 8 });
    const per = alone.latents.data.length;
    assert.deepEqual(batch.seeds, [7, 8]);
    assert.ok(relativeError(batch.latents.data.subarray(per), alone.latents.data) < 1e-5, 'image 1 of seed 7 is seed 8 alone');
  } finally {
    await pipeline.release();
  }
});

test('init images: PNG of every colour type and depth, JPEG, and clear errors for anything else', (t) => {
  const dir = tempDir(t);
  const w = 5;
  const h = 3;
  const grey = Uint8Array.from({ length: w * h }, (_, i) => i * 17);
  const cases: [string, Uint8Array, (x: number, y: number) => number[]][] = [
    ['grey', encode({ width: w, height: h, data: grey, channels: 1, depth: 8 }), (x, y) => [grey[y * w + x], grey[y * w + x], grey[y * w + x]]],
    ['grey+alpha', encode({ width: w, height: h, data: Uint8Array.from({ length: w * h * 2 }, (_, i) => (i % 2 ? 9 : grey[i >> 1])), channels: 2, depth: 8 }),
      (x, y) => [grey[y * w + x], grey[y * w + x], grey[y * w + x]]],
    ['rgba', encode({ width: w, height: h, data: Uint8Array.from({ length: w * h * 4 }, (_, i) => (i % 4 === 3 ? 0 : i % 251)), channels: 4, depth: 8 }),
      (x, y) => [0, 1, 2].map((c) => ((y * w + x) * 4 + c) % 251)],
    ['rgb16', encode({ width: w, height: h, data: Uint16Array.from({ length: w * h * 3 }, (_, i) => i * 257), channels: 3, depth: 16 }),
      (x, y) => [0, 1, 2].map((c) => (y * w + x) * 3 + c)],
    ['palette', encode({ width: w, height: h, data: Uint8Array.from({ length: w * h }, (_, i) => i % 3), channels: 1, depth: 8, palette: [[255, 0, 0], [0, 255, 0], [10, 20, 30]] }),
      (x, y) => [[255, 0, 0], [0, 255, 0], [10, 20, 30]][(y * w + x) % 3]],
    ['grey1', encode({ width: w, height: h, data: Uint8Array.from([0b10101000, 0b01010000, 0b11111000]), channels: 1, depth: 1 }),
      (x, y) => new Array(3).fill([0b10101, 0b01010, 0b11111][y] & (1 << (4 - x)) ? 255 : 0)],
  ];
  for (const [name, bytes, expected] of cases) {
    const file = path.join(dir, `${name}.png`);
    fs.writeFileSync(file, bytes);
    const image = readImage(file);
    assert.equal(image.width, w);
    assert.equal(image.height, h);
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const got = [0, 1, 2].map((c) => Math.round(image.data[c * w * h + y * w + x] * 255));
        assert.deepEqual(got, expected(x, y), `${name} at ${x},${y}`);
      }
    }
  }
  // JPEG (lossy): close to what was encoded.
  const rgba = Uint8Array.from({ length: 16 * 16 * 4 }, (_, i) => (i % 4 === 3 ? 255 : 100 + (i % 4) * 40));
  const jpegFile = path.join(dir, 'flat.jpg');
  fs.writeFileSync(jpegFile, jpeg.encode({ data: rgba, width: 16, height: 16 }, 95).data);
  const photo = readImage(jpegFile);
  assert.equal(photo.width, 16);
  for (let c = 0; c < 3; c++) assert.ok(Math.abs(photo.data[c * 256 + 40] * 255 - (100 + c * 40)) <= 3, `jpeg channel ${c}`);
  // Errors: one InputError naming the file.
  const bad: [string, Uint8Array | null, string][] = [
    ['missing.png', null, 'no such file'],
    ['empty.png', new Uint8Array(0), 'an empty file'],
    ['text.png', new TextEncoder().encode('hello'), 'a PNG or JPEG file'],
    ['short.png', cases[0][1].subarray(0, 20), 'truncated PNG'],
    ['cut.png', cases[2][1].subarray(0, cases[2][1].length - 30), 'PNG'],
    ['huge.png', withPngSize(cases[0][1], 100_000, 2), 'image size out of range'],
    ['megapixels.png', withPngSize(cases[0][1], 10_000, 10_000), 'megapixels'],
    ['cut.jpg', fs.readFileSync(jpegFile).subarray(0, 200), 'JPEG'],
  ];
  for (const [name, bytes, fragment] of bad) {
    const file = path.join(dir, name);
    if (bytes) fs.writeFileSync(file, bytes);
    throwsInputError(() => readImage(file), file, fragment);
  }
});

/** A PNG with its IHDR width and height replaced (CRC left stale: the size check comes first). */
function withPngSize(png: Uint8Array, width: number, height: number): Uint8Array {
  const out = png.slice();
  const view = new DataView(out.buffer);
  view.setUint32(16, width);
  view.setUint32(20, height);
  return out;
}
