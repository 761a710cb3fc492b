/**
 * ToMe for SD against the official tomesd v0.1.3 (goldens from tools/reference/make_tome_goldens.py,
 * use_rand=false), the partition layout, MAC accounting and refusals.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { parseAccelSpec, createAccelerator } from '../src/accel/index.ts';
import { partitionTokens } from '../src/accel/tome.ts';
import { PRESETS } from '../src/models/presets.ts';
import { UNet2DConditionModel, parseUNetConfig } from '../src/models/unet2d-condition.ts';
import { DryExecutor } from '../src/runtime/dry-executor.ts';
import { shaped } from '../src/runtime/executor.ts';
import { PlannedExecutor, shapedOps } from '../src/runtime/plan.ts';
import { loadPipeline } from '../src/pipelines/stable-diffusion.ts';
import { assertClose } from './helpers/compare.ts';
import { accelGoldens } from './helpers/goldens.ts';

const FIXTURES = path.join(import.meta.dirname, 'fixtures');

test('ToMe on tiny-sd1 equals tomesd (PNDM and DDIM; cross-attention/MLP merging; max_downsample 2 with the ratio cap)', async (t) => {
  const pipeline = await loadPipeline(path.join(FIXTURES, 'tiny-sd1'));
  try {
    for (const c of accelGoldens(t, 'tome')) {
      const merged = await pipeline.generate({ ...c.request, accel: [parseAccelSpec(c.accel)] });
      const err = assertClose(merged.latents.data, c.expected, 1e-3, `${c.name} vs tomesd`);
      assert.ok(c.baseline.some((v, i) => Math.abs(v - merged.latents.data[i]) > 1e-2), `${c.name}: ToMe changed nothing`);
      t.diagnostic(`${c.name}: relative error ${err.toExponential(2)}, ${merged.accel?.stats.mergedBlocks} block runs merged`);
    }
  } finally {
    await pipeline.release();
  }
});

test('ToMe partition: one dst per 2×2 cell (top-left without use_rand), edge leftovers are src', () => {
  const { src, dst } = partitionTokens(3, 5, 2, 2, () => 0);
  assert.deepEqual(dst, [0, 2]);
  assert.equal(src.length, 13);
  const random = partitionTokens(4, 4, 2, 2, (cell) => cell % 4);
  // cell 0 → (0,0); cell 1 → (0,1) of the second cell; cell 2 → (1,0) of the third; cell 3 → (1,1) of the fourth
  assert.deepEqual(random.dst, [0, 3, 12, 15]);
});

test('ToMe beyond the cap (ratio 0.9 > 1 − 1/(sx·sy)): every src token merges, shapes and MACs as at the cap', async () => {
  // SD 1.5 at 256²: the full-resolution blocks have N = 32·32 tokens of C = 320 channels, batch 2 (CFG).
  const unet = new UNet2DConditionModel(parseUNetConfig(PRESETS.sd15.unet, 'sd15'));
  const [batch, n, c] = [2, 32 * 32, 320];
  const reports = async (ratio: number) => {
    const dry = new DryExecutor();
    const planned = new PlannedExecutor(dry, createAccelerator([parseAccelSpec(`tome:ratio=${ratio},use_rand=false`)])!, shapedOps);
    await unet.forward(planned, shaped([batch, 4, 32, 32]), shaped([batch]), shaped([batch, 77, 768]));
    return dry.calls;
  };
  const capped = await reports(0.9);
  const merged = capped.filter((r) => r.name.endsWith('.attn1@tome'));
  assert.equal(merged.length, 5); // down_blocks.0 (2) and up_blocks.3 (3)
  const src = (3 * n) / 4; // one dst per 2×2 cell
  const kept = n - src; // every src token merged: N/4 tokens left
  for (const r of merged) {
    assert.deepEqual(r.inputShapes['tome.merged'], [batch, src], r.name);
    assert.deepEqual(r.inputShapes['tome.unmerged'], [batch, 0], r.name);
    assert.deepEqual(r.outputShapes.tokens, [batch, n, c], r.name);
    // to_q, to_k, to_v and to_out on the kept tokens; QKᵀ and AV over kept × kept
    assert.equal(r.macs.linear, 4 * batch * kept * c * c, `${r.name} linear MACs`);
    assert.equal(r.macs.attention, 2 * batch * kept * kept * c, `${r.name} attention MACs`);
  }
  for (const r of capped.filter((r) => r.name.endsWith('.tome_match'))) assert.equal(r.macs.attention, batch * src * (n / 4) * c, r.name);
  // At the cap itself the graphs are the same.
  const atCap = await reports(0.75);
  assert.deepEqual(atCap.map((r) => [r.name, r.macs]), capped.map((r) => [r.name, r.macs]));
});

test('ToMe knobs: ratio in [0, 1), integers ≥ 1 for strides; only one token-merging method', () => {
  assert.throws(() => parseAccelSpec('tome:ratio=1'), /accel tome:ratio: wrong value; expected a number ≥ 0 and < 1/);
  assert.throws(() => parseAccelSpec('tome:sx=0'), /accel tome:sx: wrong value/);
  assert.throws(() => parseAccelSpec('tome:merge=true'), /unknown key/);
  assert.ok(createAccelerator([parseAccelSpec('tome'), parseAccelSpec('tgate'), parseAccelSpec('deepcache')]));
});

test('composition: ToMe with TGATE and DeepCache, attention-map reuse with TGATE, run and report what each did', async () => {
  const pipeline = await loadPipeline(path.join(FIXTURES, 'tiny-sd1'));
  try {
    const request = { prompt: 'a cat', steps: 8, seed: 2, scheduler: 'ddim' as const, output: 'latent' as const };
    const a = await pipeline.generate({ ...request, accel: ['tgate:gate_step=4,warm_up=1', 'deepcache:cache_interval=2', 'tome:ratio=0.5'].map(parseAccelSpec) });
    assert.ok(a.accel!.stats.mergedBlocks > 0 && a.accel!.stats.shallowPasses > 0 && a.accel!.stats.reusedSegments > 0, JSON.stringify(a.accel));
    assert.equal(a.accel!.cfgCalls, 4);
    const b = await pipeline.generate({ ...request, accel: ['tgate:gate_step=4,warm_up=1', 'attn-reuse:reuse=3'].map(parseAccelSpec) });
    assert.ok(b.accel!.stats.reusedMaps > 0 && b.accel!.stats.reusedSegments > 0, JSON.stringify(b.accel));
    for (const r of [a, b]) assert.ok(r.latents.data.every(Number.isFinite));
  } finally {
    await pipeline.release();
  }
});
