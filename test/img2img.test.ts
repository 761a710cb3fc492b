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
import { resizeLanczos, toBytes } from '../src/image/resize.ts';
import { loadPixArtPipeline } from '../src/pipelines/pixart.ts';
import { loadPipeline } from '../src/pipelines/stable-diffusion.ts';
import { readPipelineFolder } from '../src/weights/diffusers-folder.ts';
import type { SchedulerName } from '../src/schedulers/index.ts';
import { SafetensorsFile } from '../src/weights/safetensors.ts';
import { assertClose } from './helpers/compare.ts';

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
          const expected = goldens.readFloat32(`${c.name}.image`);
          const actual = result.images[0].data;
          let worst = 0;
          for (let i = 0; i < expected.length; i++) worst = Math.max(worst, Math.abs(actual[i] - expected[i]));
          assert.ok(worst <= 2e-3, `${c.name}: image differs by ${worst}`);
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
