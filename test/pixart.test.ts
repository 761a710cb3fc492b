/**
 * PixArt-α and PixArt-Σ text-to-image against diffusers' pipelines on the tiny folders (goldens
 * from tools/reference/make_pixart_fixtures.py): same starting latents in, final latents (and for
 * image cases the image, resolution binning included) out; prompt preprocessing; bins.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseAccelSpec } from '../src/accel/index.ts';
import { loadDiTPipeline } from '../src/pipelines/dit.ts';
import { loadPipeline } from '../src/pipelines/stable-diffusion.ts';
import { binResolution, loadPixArtPipeline, pythonStrip } from '../src/pipelines/pixart.ts';
import type { SchedulerName } from '../src/schedulers/index.ts';
import { readPipelineFolder } from '../src/weights/diffusers-folder.ts';
import { SafetensorsFile } from '../src/weights/safetensors.ts';
import { assertClose } from './helpers/compare.ts';

const FIXTURES = path.join(import.meta.dirname, 'fixtures');
const GOLDENS = path.join(FIXTURES, 'goldens', 'pixart');

interface PipelineCase {
  name: string;
  prompt: string | string[];
  negative_prompt: string | string[] | null;
  steps: number;
  guidance_scale: number;
  scheduler: SchedulerName;
  height: number;
  width: number;
  max_sequence_length: number;
  use_resolution_binning: boolean;
  output: 'latent' | 'image';
  num_images_per_prompt: number;
  generated_height: number;
  generated_width: number;
  latents_shape: number[];
}

for (const fixture of ['tiny-pixart-alpha', 'tiny-pixart-sigma']) {
  test(`${fixture}: text-to-image equals diffusers for every scheduler, negative prompts, long prompts, batches, non-square sizes and binning`, async (t) => {
    const cases = JSON.parse(fs.readFileSync(path.join(GOLDENS, `${fixture}-pipelines.json`), 'utf8')) as PipelineCase[];
    const goldens = SafetensorsFile.open(path.join(GOLDENS, `${fixture}-pipelines.safetensors`));
    const pipeline = loadPixArtPipeline(readPipelineFolder(path.join(FIXTURES, fixture)));
    try {
      for (const c of cases) {
        const result = await pipeline.generate({
          prompt: c.prompt, negativePrompt: c.negative_prompt ?? undefined, steps: c.steps, guidanceScale: c.guidance_scale, scheduler: c.scheduler,
          height: c.height, width: c.width, imagesPerPrompt: c.num_images_per_prompt, maxSequenceLength: c.max_sequence_length,
          resolutionBinning: c.use_resolution_binning, output: c.output,
          latents: { data: goldens.readFloat32(`${c.name}.latents_in`), dims: c.latents_shape },
        });
        assert.deepEqual(result.generated, { width: c.generated_width, height: c.generated_height }, `${c.name}: generated size`);
        const err = assertClose(result.latents.data, goldens.readFloat32(`${c.name}.latents_out`), 1e-3, `${c.name} latents`);
        let note = '';
        if (c.output === 'image') {
          const expected = goldens.readFloat32(`${c.name}.image_out`);
          const image = result.images[0];
          assert.deepEqual([image.height, image.width], [c.height, c.width]);
          const diff = image.data.reduce((m, v, i) => Math.max(m, Math.abs(v - expected[i])), 0);
          assert.ok(diff < 1e-3, `${c.name}: image max |diff| ${diff}`);
          note = `, image max |diff| ${diff.toExponential(2)}`;
        }
        t.diagnostic(`${c.name}: latents relative error ${err.toExponential(2)}${note}`);
      }
    } finally {
      goldens.close();
      await pipeline.release();
    }
  });
}

test('prompts are lower-cased and stripped as Python does (diffusers without clean_caption)', () => {
  const golden = JSON.parse(fs.readFileSync(path.join(GOLDENS, 't5-tokens.json'), 'utf8')) as { prompts: { prompt: string; preprocessed: string }[] };
  for (const c of golden.prompts) assert.equal(pythonStrip(c.prompt.toLowerCase()), c.preprocessed, JSON.stringify(c.prompt));
});

test('resolution bins: the nearest trained aspect ratio, first of equals; unknown sample sizes refused', () => {
  assert.deepEqual(binResolution(256, 192, 128), [1152, 896]);
  assert.deepEqual(binResolution(256, 192, 32), [288, 224]);
  assert.deepEqual(binResolution(1024, 1024, 128), [1024, 1024]);
  assert.deepEqual(binResolution(100, 1000, 128), [512, 2048]);
  assert.throws(() => binResolution(256, 256, 48), /resolutionBinning: PixArt has no resolution bins for transformer sample_size 48/);
});

test('methods on the protocol reach PixArt and DiT without model code: TGATE, FORA and attention reuse run; DeepCache and ToMe are refused by what the models declare', async () => {
  const pixart = loadPixArtPipeline(readPipelineFolder(path.join(FIXTURES, 'tiny-pixart-sigma')));
  try {
    const request = { prompt: 'a cactus', steps: 6, seed: 1, height: 256, width: 256, resolutionBinning: false, output: 'latent' as const };
    const plain = await pixart.generate(request);
    for (const spec of ['tgate:gate_step=3,warm_up=1', 'fora:cache_interval=2', 'attn-reuse:reuse=2']) {
      const r = await pixart.generate({ ...request, accel: [parseAccelSpec(spec)] });
      assert.ok(r.latents.data.every(Number.isFinite), spec);
      assert.ok(r.latents.data.some((v, i) => v !== plain.latents.data[i]), `${spec} changed nothing`);
      assert.ok(r.accel!.summary.length > 0, `${spec}: ${JSON.stringify(r.accel)}`);
    }
    const tgate = await pixart.generate({ ...request, accel: [parseAccelSpec('tgate:gate_step=3,warm_up=1')] });
    assert.equal(tgate.accel!.cfgCalls, 3, 'CFG dropped after the gate');
    await assert.rejects(pixart.generate({ ...request, accel: [parseAccelSpec('deepcache')] }),
      /^InputError: accel deepcache:cache_branch_id: this PixArt transformer has no long skip connections to cut/);
    await assert.rejects(pixart.generate({ ...request, accel: [parseAccelSpec('tome')] }),
      /no transformer block of this PixArt transformer runs at a downsampling ≤ 1/);
  } finally {
    await pixart.release();
  }
  const dit = loadDiTPipeline(readPipelineFolder(path.join(FIXTURES, 'tiny-dit')));
  try {
    const r = await dit.generate({ classLabels: [207], steps: 6, seed: 1, output: 'latent', accel: [parseAccelSpec('fora:cache_interval=3')] });
    assert.ok(r.accel!.stats.reusedSegments > 0 && r.latents.data.every(Number.isFinite), JSON.stringify(r.accel));
  } finally {
    await dit.release();
  }
});

test('the memory check refuses before any text encoder runs (SD, SDXL\'s two, PixArt\'s T5)', async (t) => {
  const request = { prompt: 'x', width: 4096, height: 4096, guidanceScale: 2, steps: 2, memoryLimit: 2 ** 26 };
  for (const name of ['tiny-sd1', 'tiny-sdxl', 'tiny-pixart-alpha']) {
    const dir = path.join(FIXTURES, name);
    const pipeline = name.includes('pixart') ? loadPixArtPipeline(readPipelineFolder(dir)) : await loadPipeline(dir);
    t.after(() => pipeline.release());
    const encoders = 'xl' in pipeline && pipeline.xl ? [pipeline.textEncoder, pipeline.xl.textEncoder2] : [pipeline.textEncoder];
    let encoded = 0;
    for (const encoder of encoders) {
      const forward = encoder.model.forward.bind(encoder.model) as (...args: unknown[]) => Promise<unknown>;
      (encoder.model as { forward: unknown }).forward = (...args: unknown[]) => { encoded++; return forward(...args); };
    }
    await assert.rejects(pipeline.generate(request), (err: Error) => err.name === 'InputError' && /over the limit of 0\.1 GiB/.test(err.message), name);
    assert.equal(encoded, 0, `${name}: a text encoder ran before the refusal`);
    // Within the limit the same request shapes check and run (SDXL's pooled width comes from text_encoder_2's config).
    await pipeline.generate({ ...request, width: 64, height: 64, memoryLimit: undefined, output: 'latent' });
    assert.ok(encoded >= encoders.length, name);
  }
});

test('the memory check counts the images handed back at the asked size (resolution binning generates smaller), and neither decoding nor images for latent output', async (t) => {
  const pipeline = loadPixArtPipeline(readPipelineFolder(path.join(FIXTURES, 'tiny-pixart-alpha')));
  t.after(() => pipeline.release());
  // 4 images of 8192² as float32 RGB: 3.0 GiB, though the transformer runs at a 1024² bin.
  const request = { prompt: 'x', width: 8192, height: 8192, imagesPerPrompt: 4, guidanceScale: 1, steps: 2, memoryLimit: 2 ** 30 };
  await assert.rejects(pipeline.generate(request), (err: Error) => err.name === 'InputError' && /images 3\.0 GiB.*found 8192x8192, 4 images/.test(err.message));
  // Latent output neither decodes nor hands back images: it fits.
  await pipeline.generate({ ...request, output: 'latent' });
});
