import assert from 'node:assert/strict';
import * as path from 'node:path';
import { test } from 'node:test';
import { parseAccelSpec } from '../src/accel/index.ts';
import { fidelitySweep, formatFidelity } from '../src/bench/fidelity.ts';
import { parseSweepSetting } from '../src/accel/index.ts';

const tinySd1 = path.resolve(import.meta.dirname, 'fixtures/tiny-sd1');

test('fidelity sweep: baseline, each setting and its equal-MAC fewer-steps baseline, compared image by image', async () => {
  const options = {
    model: tinySd1, prompts: ['a red circle on the left', 'a large blue square at the top right on a white background'], steps: 6,
    guidance: 7.5, seed: 3, scheduler: 'ddim' as const, sweep: [[parseAccelSpec('deepcache:cache_interval=3')]], keepImages: 1,
  };
  const r = await fidelitySweep(options);
  assert.deepEqual(r.rows.map((row) => [row.label, row.kind, row.steps]), [
    ['baseline (6 steps)', 'baseline', 6],
    ['deepcache:cache_interval=3', 'method', 6],
    [`${Math.round((6 * r.rows[1].macs) / r.rows[0].macs)} steps`, 'fewer steps', Math.round((6 * r.rows[1].macs) / r.rows[0].macs)],
  ]);
  assert.equal(r.rows[0].psnr, Infinity);
  assert.equal(r.rows[0].ssim, 1);
  for (const row of r.rows.slice(1)) {
    assert.ok(Number.isFinite(row.psnr) && row.psnr > 10, `${row.label}: PSNR ${row.psnr}`);
    assert.ok(row.ssim < 1, `${row.label}: SSIM ${row.ssim}`);
    assert.equal(row.perPrompt.length, 2);
    assert.ok(row.macRatio > 1);
  }
  // The captions are of the scene grammar, so every image is scored; random weights draw no scene.
  for (const row of r.rows) assert.ok(row.adherence !== undefined && row.adherence >= 0 && row.adherence <= 1);
  assert.equal(r.images.get('deepcache:cache_interval=3')!.length, 1);
  const table = formatFidelity(r, options);
  assert.match(table, /deepcache:cache_interval=3 +6 /);
  assert.match(table, /adherence by chance/);
});

test('fidelity sweep: prompts outside the scene grammar get no adherence; --sweep settings compose with "+"; explicit step baselines', async () => {
  const r = await fidelitySweep({ model: tinySd1, prompts: ['a photo of a cat'], steps: 4, guidance: 1, seed: 0, scheduler: 'ddim',
    sweep: [parseSweepSetting('tgate:gate_step=2,warm_up=1+deepcache:cache_interval=2')], fewerSteps: false, stepBaselines: [2] });
  assert.deepEqual(r.rows.map((row) => [row.label, row.kind]), [
    ['baseline (4 steps)', 'baseline'], ['tgate:gate_step=2,warm_up=1 + deepcache:cache_interval=2', 'method'], ['2 steps', 'fewer steps'],
  ]);
  assert.ok(r.rows[2].psnr > 5 && r.rows[2].psnr < Infinity);
  assert.equal(r.rows[1].label, 'tgate:gate_step=2,warm_up=1 + deepcache:cache_interval=2');
  assert.equal(r.rows[1].adherence, undefined);
  assert.equal(r.chanceAdherence, undefined);
  assert.throws(() => parseSweepSetting('tgate:gate=3'), /accel tgate:gate: unknown key/);
});
