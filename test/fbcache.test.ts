/**
 * The span caches, which decide from tensor values: First-Block-Cache against diffusers'
 * apply_first_block_cache and TeaCache against its official rule applied to diffusers' PixArt, on
 * the tiny PixArt-α / PixArt-Σ (goldens from tools/reference/make_fbcache_goldens.py and
 * make_teacache_goldens.py): the same calls skipped, the same final latents; and what they refuse.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseAccelSpec } from '../src/accel/index.ts';
import { loadPixArtPipeline } from '../src/pipelines/pixart.ts';
import { loadPipeline } from '../src/pipelines/stable-diffusion.ts';
import { readPipelineFolder } from '../src/weights/diffusers-folder.ts';
import { spawnSync } from 'node:child_process';
import { polynomial, teaCacheRecorder } from '../src/accel/teacache.ts';
import { computedCalls, fitPolynomial } from '../src/tune/teacache-calibration.ts';
import { assertClose, relativeError } from './helpers/compare.ts';
import { rejectsInputError, tempDir } from './helpers/files.ts';
import { accelGoldens } from './helpers/goldens.ts';

const FIXTURES = path.join(import.meta.dirname, 'fixtures');

for (const fixture of ['tiny-pixart-alpha', 'tiny-pixart-sigma']) {
  test(`First-Block-Cache on ${fixture} equals diffusers' apply_first_block_cache: same calls skipped, same latents`, async (t) => {
    const index = JSON.parse(fs.readFileSync(path.join(FIXTURES, 'goldens', 'fbcache', `${fixture}.json`), 'utf8')) as
      { name: string; threshold: number; calls: { change: number | null; skipped: boolean }[] }[];
    const pixart = loadPixArtPipeline(readPipelineFolder(path.join(FIXTURES, fixture)));
    try {
      for (const c of accelGoldens(t, 'fbcache', fixture)) {
        const { calls, threshold } = index.find((x) => x.name === c.name)!;
        // Our decisions are diffusers' unless a change sits within float error of the threshold.
        assert.ok(calls.every((x) => x.change === null || Math.abs(x.change - threshold) > 1e-4), `${c.name}: a change too close to the threshold to compare`);
        const request = { ...c.request, width: 128, height: 128, resolutionBinning: false };
        const cached = await pixart.generate({ ...request, accel: [parseAccelSpec(c.accel)] });
        assert.equal(cached.accel?.stats.cachedCalls ?? 0, calls.filter((x) => x.skipped).length, `${c.name}: calls skipped`);
        const err = assertClose(cached.latents.data, c.expected, 3e-4, `${c.name} vs diffusers`);
        const change = relativeError(c.baseline, c.expected);
        if (calls.some((x) => x.skipped)) assert.ok(change > 10 * err, `${c.name}: the cache's change ${change} is within our error`);
        t.diagnostic(`${c.name}: ${cached.accel?.stats.cachedCalls} of ${calls.length} calls from the cache, relative error ${err.toExponential(2)}, change ${change.toExponential(2)}`);
      }
    } finally {
      await pixart.release();
    }
  });
}

test('First-Block-Cache refuses models whose blocks are not one chain, knobs that leave nothing to skip, and a second span cache', async () => {
  const unet = await loadPipeline(path.join(FIXTURES, 'tiny-sd1'));
  const pixart = loadPixArtPipeline(readPipelineFolder(path.join(FIXTURES, 'tiny-pixart-alpha')));
  try {
    await rejectsInputError(() => unet.generate({ prompt: 'x', steps: 4, accel: ['fbcache'] }), 'accel fbcache', 'not one chain', 'deepcache');
    const request = { prompt: 'x', steps: 4, width: 128, height: 128, resolutionBinning: false, output: 'latent' as const };
    await rejectsInputError(() => pixart.generate({ ...request, accel: ['fbcache:Fn_compute_blocks=2'] }), 'accel fbcache:Fn_compute_blocks', 'no block of 2');
    await rejectsInputError(() => pixart.generate({ ...request, accel: ['fbcache', 'fbcache'] }), 'accel', 'given twice');
    // Warm-up and the cap on cached calls in a row keep calls computed.
    const loose = await pixart.generate({ ...request, steps: 10, accel: ['fbcache:residual_diff_threshold=10'] });
    assert.equal(loose.accel?.stats.cachedCalls, 9, 'all but the first call from the cache at a huge threshold');
    const warm = await pixart.generate({ ...request, steps: 10, accel: ['fbcache:residual_diff_threshold=10,max_warmup_steps=4'] });
    assert.equal(warm.accel?.stats.cachedCalls, 6);
    const capped = await pixart.generate({ ...request, steps: 10, accel: ['fbcache:residual_diff_threshold=10,max_continuous_cached_steps=2'] });
    assert.equal(capped.accel?.stats.cachedCalls, 6, 'two cached, one computed, repeated');
  } finally {
    await unet.release();
    await pixart.release();
  }
});

for (const fixture of ['tiny-pixart-alpha', 'tiny-pixart-sigma']) {
  test(`TeaCache on ${fixture} equals its official rule on diffusers' PixArt: same calls skipped, same latents`, async (t) => {
    const index = JSON.parse(fs.readFileSync(path.join(FIXTURES, 'goldens', 'teacache', `${fixture}.json`), 'utf8')) as
      { name: string; threshold: number; calls: { accumulated: number | null; skipped: boolean }[] }[];
    const pixart = loadPixArtPipeline(readPipelineFolder(path.join(FIXTURES, fixture)));
    try {
      for (const c of accelGoldens(t, 'teacache', fixture)) {
        const { calls, threshold } = index.find((x) => x.name === c.name)!;
        assert.ok(calls.every((x) => x.accumulated === null || Math.abs(x.accumulated - threshold) > 1e-4), `${c.name}: a sum too close to the threshold to compare`);
        const request = { ...c.request, width: 128, height: 128, resolutionBinning: false };
        const cached = await pixart.generate({ ...request, accel: [parseAccelSpec(c.accel)] });
        assert.equal(cached.accel?.stats.cachedCalls ?? 0, calls.filter((x) => x.skipped).length, `${c.name}: calls skipped`);
        const err = assertClose(cached.latents.data, c.expected, 3e-4, `${c.name} vs TeaCache's rule`);
        const change = relativeError(c.baseline, c.expected);
        assert.ok(change > 10 * err, `${c.name}: the cache's change ${change} is within our error`);
        t.diagnostic(`${c.name}: ${cached.accel?.stats.cachedCalls} of ${calls.length} calls skipped every block, relative error ${err.toExponential(2)}, change ${change.toExponential(2)}`);
      }
    } finally {
      await pixart.release();
    }
  });
}

test('TeaCache: first and last calls compute, a zero threshold computes everything, bad coefficients are refused', async () => {
  const pixart = loadPixArtPipeline(readPipelineFolder(path.join(FIXTURES, 'tiny-pixart-alpha')));
  try {
    const request = { prompt: 'x', steps: 10, seed: 2, width: 128, height: 128, resolutionBinning: false, output: 'latent' as const };
    const plain = await pixart.generate(request);
    const none = await pixart.generate({ ...request, accel: ['teacache:rel_l1_thresh=0'] });
    assert.equal(none.accel?.stats.cachedCalls ?? 0, 0);
    assert.deepEqual(none.latents.data, plain.latents.data);
    const all = await pixart.generate({ ...request, accel: ['teacache:rel_l1_thresh=100'] });
    assert.equal(all.accel?.stats.cachedCalls, 8, 'every call but the first and the last');
    await rejectsInputError(() => pixart.generate({ ...request, accel: ['teacache:coefficients=1:x'] }), 'accel teacache:coefficients', '":"');
    await rejectsInputError(() => pixart.generate({ ...request, accel: ['teacache', 'fbcache'] }), 'accel', 'both skip spans');
    await rejectsInputError(() => pixart.generate({ ...request, accel: ['fora', 'teacache'] }), 'accel', 'fora and teacache cannot be combined', 'FORA\'s refresh');
    // With TGATE: its gate calls compute in full; after the gate the span cache skips as before.
    const both = await pixart.generate({ ...request, accel: ['tgate:gate_step=4,sp_interval=1,warm_up=0', 'fbcache:residual_diff_threshold=10'] });
    assert.equal(both.accel?.cfgCalls, 4);
    assert.ok((both.accel?.stats.cachedCalls ?? 0) > 0 && (both.accel?.stats.reusedSegments ?? 0) > 0, JSON.stringify(both.accel?.stats));
    assert.ok(both.latents.data.every(Number.isFinite));
  } finally {
    await pixart.release();
  }
});

test('TeaCache calibration: the polynomial fit recovers a known one; the recorded changes predict the calls a run computes; diffuse tune writes it', async (t) => {
  // numpy.polyfit's order: 0.5x⁴ − x³ + 2x² + 0.25x + 0.1, sampled without noise.
  const xs = Array.from({ length: 30 }, (_, i) => 0.05 + i * 0.03);
  const truth = [0.5, -1, 2, 0.25, 0.1];
  const fitted = fitPolynomial(xs, xs.map(polynomial(truth.join(':'), 'truth')), 4);
  fitted.forEach((c, i) => assert.ok(Math.abs(c - truth[i]) < 1e-6, `coefficient ${i}: ${c}`));

  const pixart = loadPixArtPipeline(readPipelineFolder(path.join(FIXTURES, 'tiny-pixart-sigma')));
  try {
    const request = { prompt: 'a red circle', steps: 12, seed: 4, width: 128, height: 128, resolutionBinning: false, output: 'latent' as const };
    const { plan, samples } = teaCacheRecorder();
    const plain = await pixart.generate({ ...request, plans: [plan] });
    assert.equal(samples.length, 11, 'one pair per call after the first');
    assert.deepEqual(plain.latents.data, (await pixart.generate(request)).latents.data, 'recording changes nothing');
    for (const threshold of [0.3, 0.6, 1.0]) {
      const cached = await pixart.generate({ ...request, accel: [`teacache:rel_l1_thresh=${threshold}`] });
      assert.equal(12 - (cached.accel?.stats.cachedCalls ?? 0), computedCalls(samples.map((s) => s.x), (x) => x, threshold), `threshold ${threshold}`);
    }
  } finally {
    await pixart.release();
  }
  const dir = tempDir(t);
  const out = path.join(dir, 'teacache.json');
  const run = spawnSync(process.execPath, [path.join(FIXTURES, '..', '..', 'bin', 'diffuse.js'), 'tune', '--method', 'teacache', '--model', path.join(FIXTURES, 'tiny-pixart-alpha'),
    '--steps', '8', '--count', '2', '--guidance', '4.5', '--out', out], { encoding: 'utf8' });
  assert.equal(run.status, 0, run.stderr);
  const report = JSON.parse(fs.readFileSync(out, 'utf8')) as { coefficients: number[]; samples: unknown[]; thresholds: { computedCalls: number }[] };
  assert.equal(report.coefficients.length, 5);
  assert.equal(report.samples.length, 2 * 7);
  const suggestion = /--accel (\S+)/.exec(run.stdout)![1];
  const pixart2 = loadPixArtPipeline(readPipelineFolder(path.join(FIXTURES, 'tiny-pixart-alpha')));
  try {
    const r = await pixart2.generate({ prompt: 'x', steps: 8, width: 128, height: 128, resolutionBinning: false, output: 'latent', accel: [suggestion] });
    assert.ok(r.latents.data.every(Number.isFinite), 'the suggested setting runs');
  } finally {
    await pixart2.release();
  }
});
