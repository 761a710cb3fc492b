/**
 * Guidance-distilled (LCM) U-Nets: the guidance scale as an embedding (time_cond_proj_dim), no CFG.
 * Against diffusers' LatentConsistencyModelPipeline and StableDiffusionXLPipeline, and TGATE's LCM
 * recipe against the official T-GATE SDXL code (goldens from tools/reference/make_lcm_fixtures.py,
 * step noise from our generator for the case's seed).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseAccelSpec } from '../src/accel/index.ts';
import { macCounter } from '../src/bench/mac-counter.ts';
import { DryExecutor } from '../src/runtime/dry-executor.ts';
import { shaped } from '../src/runtime/executor.ts';
import { loadPipeline } from '../src/pipelines/stable-diffusion.ts';
import { SafetensorsFile } from '../src/weights/safetensors.ts';
import { assertClose, relativeError } from './helpers/compare.ts';
import { rejectsInputError } from './helpers/files.ts';
import { accelGoldens } from './helpers/goldens.ts';

const FIXTURES = path.join(import.meta.dirname, 'fixtures');
const GOLDENS = path.join(FIXTURES, 'goldens', 'lcm');

test('tiny LCM SD 1.x (LatentConsistencyModelPipeline folder) equals diffusers: steps, guidance embedding, batch', async (t) => {
  const cases = JSON.parse(fs.readFileSync(path.join(GOLDENS, 'tiny-lcm-sd1.json'), 'utf8')) as
    { name: string; seed: number; steps: number; guidance_scale: number; prompt: string | string[]; num_images_per_prompt: number }[];
  const goldens = SafetensorsFile.open(path.join(GOLDENS, 'tiny-lcm-sd1.safetensors'));
  const pipeline = await loadPipeline(path.join(FIXTURES, 'tiny-lcm-sd1'));
  try {
    for (const c of cases) {
      const result = await pipeline.generate({
        prompt: c.prompt, steps: c.steps, guidanceScale: c.guidance_scale, imagesPerPrompt: c.num_images_per_prompt, seed: c.seed,
        latents: { data: goldens.readFloat32(`${c.name}.latents_in`), dims: goldens.tensors.get(`${c.name}.latents_in`)!.shape }, output: 'latent',
      });
      const err = assertClose(result.latents.data, goldens.readFloat32(`${c.name}.latents_out`), 1e-4, c.name);
      assert.equal(result.scheduler, 'lcm', 'the folder\'s LCMScheduler');
      t.diagnostic(`${c.name}: relative error ${err.toExponential(2)}`);
    }
    // The guidance scale matters (it is embedded), and the pipeline's defaults are LCM's: 4 steps, guidance 8.5.
    const request = { prompt: 'a red circle', seed: 1, width: 64, height: 64, output: 'latent' as const };
    const calls: number[] = [];
    const defaults = await pipeline.generate({ ...request, onStep: (s) => calls.push(s.step) });
    assert.equal(calls.length, 4);
    assert.ok(relativeError(defaults.latents.data, (await pipeline.generate({ ...request, guidanceScale: 8.5, steps: 4 })).latents.data) === 0);
    assert.ok(relativeError(defaults.latents.data, (await pipeline.generate({ ...request, guidanceScale: 2, steps: 4 })).latents.data) > 1e-3);
    // No CFG: a negative prompt does nothing, and says so.
    const negative = await pipeline.generate({ ...request, negativePrompt: 'blue' });
    assert.ok(negative.warnings.some((w) => w.includes('negativePrompt has no effect') && w.includes('guidance-distilled')), negative.warnings.join('; '));
  } finally {
    goldens.close();
    await pipeline.release();
  }
});

test('TGATE\'s LCM recipe on a tiny LCM-SDXL equals the official T-GATE SDXL code (lcm=True), gate 1 and 2', async (t) => {
  const pipeline = await loadPipeline(path.join(FIXTURES, 'tiny-lcm-sdxl'));
  try {
    for (const c of accelGoldens(t, 'lcm', 'tiny-lcm-sdxl')) {
      const request = { ...c.request, negativePrompt: undefined, width: 128, height: 128 };
      const baseline = await pipeline.generate(request);
      const baseErr = assertClose(baseline.latents.data, c.baseline, 1e-4, `${c.name} baseline`);
      const accelerated = await pipeline.generate({ ...request, accel: [parseAccelSpec(c.accel)] });
      const err = assertClose(accelerated.latents.data, c.expected, 1e-4, `${c.name} vs official TGATE`);
      const change = relativeError(baseline.latents.data, c.expected);
      assert.ok(change > 10 * Math.max(err, baseErr), `${c.name}: TGATE's change ${change} is within our error`);
      assert.equal(accelerated.accel?.cfgCalls, 0, 'no CFG with a distilled U-Net');
      t.diagnostic(`${c.name}: relative error ${err.toExponential(2)}, TGATE's change ${change.toExponential(2)}`);
    }
  } finally {
    await pipeline.release();
  }
});

test('a guidance-distilled U-Net needs its guidance embedding, and others take none', async () => {
  const lcm = await loadPipeline(path.join(FIXTURES, 'tiny-lcm-sd1'));
  const plain = await loadPipeline(path.join(FIXTURES, 'tiny-sd1'));
  try {
    const args = (dim: number) => [shaped([1, 4, 8, 8]), shaped([1]), shaped([1, 77, dim])] as const;
    await rejectsInputError(() => lcm.unet.model.forward(new DryExecutor(), ...args(32)), 'timestepCond', 'time_cond_proj_dim');
    await rejectsInputError(() => lcm.unet.model.forward(new DryExecutor(), ...args(32), { timestepCond: shaped([1, 16]) }), 'timestepCond', '[1, 32]');
    await rejectsInputError(() => plain.unet.model.forward(new DryExecutor(), ...args(32), { timestepCond: shaped([1, 32]) }), 'timestepCond', 'no guidance embedding');
    // Plans written in code must be Accelerator objects.
    await rejectsInputError(() => lcm.generate({ prompt: 'x', steps: 2, plans: ['teacache'] as never }), 'plans', 'Accelerator objects');
    // bench --dry-run counts no CFG batch for it, whatever the guidance.
    assert.equal(macCounter({ model: path.join(FIXTURES, 'tiny-lcm-sdxl'), batch: 1, guidance: 8.5 }).cfg, false);
    assert.equal(macCounter({ model: path.join(FIXTURES, 'tiny-sdxl'), batch: 1, guidance: 8.5 }).cfg, true);
    // Shapes and MACs (bench --dry-run, inspect, the memory estimate) include the embedding's projection.
    const dry = new DryExecutor();
    await lcm.unet.model.forwardShapes(dry, { batch: 1, latentHeight: 8, latentWidth: 8 });
    assert.ok(dry.calls.some((c) => c.name === 'time_embedding'));
  } finally {
    await lcm.release();
    await plain.release();
  }
});
