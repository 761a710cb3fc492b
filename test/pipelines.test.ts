/**
 * End to end against diffusers' StableDiffusionPipeline on the tiny fixtures (goldens from
 * tools/reference/make_pipeline_goldens.py): same starting latents in, final latents within 1e-3
 * relative, decoded image within 2e-3 absolute.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { loadPipeline } from '../src/pipelines/stable-diffusion.ts';
import type { SchedulerName } from '../src/schedulers/index.ts';
import { SafetensorsFile } from '../src/weights/safetensors.ts';
import { assertClose, assertImageClose } from './helpers/compare.ts';

const FIXTURES = path.join(import.meta.dirname, 'fixtures');

interface Case {
  name: string;
  scheduler: SchedulerName;
  prompt: string | string[];
  negative_prompt: string | null;
  num_inference_steps: number;
  guidance_scale: number;
  guidance_rescale: number;
  num_images_per_prompt: number;
  width: number;
  height: number;
  image?: boolean;
}

for (const fixture of ['tiny-sd1', 'tiny-sd2', 'tiny-sdxl']) {
  test(`${fixture}: text-to-image equals diffusers for every deterministic scheduler`, async (t) => {
    const cases = JSON.parse(fs.readFileSync(path.join(FIXTURES, 'goldens', 'pipelines', `${fixture}.json`), 'utf8')) as Case[];
    const goldens = SafetensorsFile.open(path.join(FIXTURES, 'goldens', 'pipelines', `${fixture}.safetensors`));
    const pipeline = await loadPipeline(path.join(FIXTURES, fixture));
    try {
      for (const c of cases) {
        const input = goldens.tensors.get(`${c.name}.latents_in`)!;
        const result = await pipeline.generate({
          prompt: c.prompt,
          negativePrompt: c.negative_prompt ?? undefined,
          steps: c.num_inference_steps,
          guidanceScale: c.guidance_scale,
          guidanceRescale: c.guidance_rescale,
          imagesPerPrompt: c.num_images_per_prompt,
          scheduler: c.scheduler,
          width: c.width,
          height: c.height,
          latents: { data: goldens.readFloat32(`${c.name}.latents_in`), dims: input.shape },
          output: c.image ? 'image' : 'latent',
        });
        const err = assertClose(result.latents.data, goldens.readFloat32(`${c.name}.latents_out`), 1e-3, `${c.name} latents`);
        let note = `${c.name}: latents relative error ${err.toExponential(2)}`;
        if (c.image) {
          const worst = assertImageClose(result.images[0].data, goldens.readFloat32(`${c.name}.image`), 2e-3, c.name);
          note += `, image max |diff| ${worst.toExponential(2)}`;
        }
        if (c.name === 'long-prompt') assert.ok(result.warnings.some((w) => w.includes('truncated')), 'long prompt warns');
        t.diagnostic(note);
      }
    } finally {
      goldens.close();
      await pipeline.release();
    }
  });
}

test('one pipeline, sizes that differ only after rounding at the deep levels: each gets graphs that fit it', async () => {
  // 40x24 and 64x32 both reach the deepest level as 1x2 latents, but upsample back to 2x3 and 2x4.
  const pipeline = await loadPipeline(path.join(FIXTURES, 'tiny-sd1'));
  try {
    for (const [width, height] of [[40, 24], [64, 32], [40, 24]]) {
      const result = await pipeline.generate({ prompt: 'a cat', steps: 2, seed: 1, width, height, output: 'latent' });
      assert.deepEqual(result.latents.dims, [1, 4, height / 8, width / 8]);
    }
  } finally {
    await pipeline.release();
  }
});
