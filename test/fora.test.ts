/**
 * FORA, the method written against the plan protocol alone (src/accel/fora.ts): its schedule, runs
 * on tiny-sd1 against FORA written on diffusers' hook registry (goldens from
 * tools/reference/make_fora_goldens.py), what it saves, and how it composes.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createAccelerator, parseAccelSpec } from '../src/accel/index.ts';
import { foraRefreshes } from '../src/accel/fora.ts';
import { wholeRunMacs } from '../src/bench/run-macs.ts';
import { calflopsMacs } from '../src/graph/builder.ts';
import { PRESETS } from '../src/models/presets.ts';
import { UNet2DConditionModel, parseUNetConfig } from '../src/models/unet2d-condition.ts';
import { loadPipeline } from '../src/pipelines/stable-diffusion.ts';
import { DryExecutor } from '../src/runtime/dry-executor.ts';
import { assertClose } from './helpers/compare.ts';
import { throwsInputError } from './helpers/files.ts';
import { accelGoldens } from './helpers/goldens.ts';

const FIXTURES = path.join(import.meta.dirname, 'fixtures');
const CASES = JSON.parse(fs.readFileSync(path.join(FIXTURES, 'goldens', 'fora', 'tiny-sd1.json'), 'utf8')) as
  { name: string; cache_interval: number; calls: number; refresh_calls: number[] }[];

test('FORA schedule: refresh at the first call and where the step index counted down is a multiple of cache_interval', () => {
  for (const c of CASES) {
    const refreshes = Array.from({ length: c.calls }, (_, call) => call).filter((call) => foraRefreshes({ cache_interval: c.cache_interval }, call, c.calls));
    assert.deepEqual(refreshes, c.refresh_calls, c.name);
  }
  assert.deepEqual([0, 1, 2, 3, 4, 5, 6].filter((call) => foraRefreshes({ cache_interval: 3 }, call, 7)), [0, 3, 6]);
});

test('FORA on tiny-sd1 equals FORA written on diffusers\' hooks (DDIM, PNDM, Euler, no CFG; final latents within 1e-3)', async (t) => {
  const pipeline = await loadPipeline(path.join(FIXTURES, 'tiny-sd1'));
  // tiny-sd1 has 11 transformer blocks: attn1, attn2 and ff of each are cached.
  const sublayers = 3 * pipeline.unet.model.declaration.transformerBlocks.length;
  assert.equal(sublayers, 33);
  try {
    for (const c of accelGoldens(t, 'fora')) {
      const golden = CASES.find((g) => g.name === c.name)!;
      const result = await pipeline.generate({ ...c.request, accel: [parseAccelSpec(c.accel)] });
      const err = assertClose(result.latents.data, c.expected, 1e-3, `${c.name} vs FORA on diffusers hooks`);
      const change = Math.max(...c.baseline.map((v, i) => Math.abs(v - result.latents.data[i])));
      assert.ok(change > 10 * err * Math.max(...c.baseline.map(Math.abs)), `${c.name}: FORA changed the result by ${change} only`);
      // Every sub-layer of every non-refreshing call came from the cache.
      assert.equal(result.accel!.stats.reusedSegments, (golden.calls - golden.refresh_calls.length) * sublayers, c.name);
      t.diagnostic(`${c.name}: relative error ${err.toExponential(2)} (max change vs baseline ${change.toFixed(3)}), ${result.accel!.stats.reusedSegments} sub-layer calls reused`);
    }
  } finally {
    await pipeline.release();
  }
});

test('FORA whole-run MACs on SD 1.5 512²: a reusing call costs the U-Net without its transformer sub-layers', async (t) => {
  const unet = new UNet2DConditionModel(parseUNetConfig(PRESETS.sd15.unet, 'sd15'));
  const common = { calls: 25, batch: 1, latentHeight: 64, latentWidth: 64, cfg: true };
  const base = await wholeRunMacs(unet, common);
  const r = await wholeRunMacs(unet, { ...common, accelerator: createAccelerator([parseAccelSpec('fora:cache_interval=3')]) });
  const refreshing = Array.from({ length: 25 }, (_, c) => c).filter((c) => foraRefreshes({ cache_interval: 3 }, c, 25));
  assert.deepEqual(refreshing, [0, 3, 6, 9, 12, 15, 18, 21, 24]);
  assert.equal(r.stats.reusedSegments, (25 - refreshing.length) * 16 * 3);
  const perCall = r.perCall.map(calflopsMacs);
  const full = calflopsMacs(base.perCall[0]);
  for (const c of refreshing) assert.equal(perCall[c], full);
  const dry = new DryExecutor();
  await unet.forwardShapes(dry, { batch: 2, latentHeight: 64, latentWidth: 64 });
  const sublayers = dry.calls.filter((s) => /\.(attn1|attn2|ff)$/.test(s.name)).reduce((n, s) => n + calflopsMacs(s.macs), 0);
  for (const [c, m] of perCall.entries()) if (!refreshing.includes(c)) assert.equal(m, full - sublayers, `call ${c}`);
  const reusing = perCall.filter((_, c) => !refreshing.includes(c));
  t.diagnostic(`a reusing call: ${(reusing[0] / 1e9).toFixed(1)} G of ${(full / 1e9).toFixed(1)} G calflops; whole run ×${(calflopsMacs(base.total) / calflopsMacs(r.total)).toFixed(2)}`);
});

test('FORA composes with DeepCache and ToMe; with TGATE (both cache sub-layer outputs) it is refused', async () => {
  throwsInputError(() => createAccelerator(['tgate', 'fora'].map(parseAccelSpec)), 'accel', 'tgate and fora both cache attention outputs', 'one such method at a time');
  throwsInputError(() => parseAccelSpec('fora:cache_interval=0'), 'accel fora:cache_interval', 'an integer ≥ 1', 'found 0');
  const pipeline = await loadPipeline(path.join(FIXTURES, 'tiny-sd1'));
  try {
    const request = { prompt: 'a cat', steps: 6, seed: 3, scheduler: 'ddim' as const, output: 'latent' as const };
    const r = await pipeline.generate({ ...request, accel: ['deepcache:cache_interval=2', 'fora:cache_interval=2', 'tome:ratio=0.5'].map(parseAccelSpec) });
    assert.ok(r.accel!.stats.shallowPasses > 0 && r.accel!.stats.reusedSegments > 0 && r.accel!.stats.mergedBlocks > 0, JSON.stringify(r.accel));
    assert.ok(r.latents.data.every(Number.isFinite));
    // cache_interval=1 refreshes every call: the same latents as no method at all.
    const every = await pipeline.generate({ ...request, accel: [parseAccelSpec('fora:cache_interval=1')] });
    const plain = await pipeline.generate(request);
    assert.deepEqual(every.latents.data, plain.latents.data);
  } finally {
    await pipeline.release();
  }
});
