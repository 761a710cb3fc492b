/**
 * The feature-change recorder (src/bench/feature-change.ts): per block, the relative change of its
 * output between consecutive model calls — checked against TeaCache's calibration recorder, which
 * measures the last block's output change its own way, and on a Skip-DiT whose shallow passes
 * leave the middle blocks unrun.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { parseAccelSpec } from '../src/accel/index.ts';
import { teaCacheRecorder } from '../src/accel/teacache.ts';
import { featureChangeRecorder } from '../src/bench/feature-change.ts';
import { openRunner } from '../src/bench/runner.ts';
import { convertOfficialDiT } from '../src/models/official-dit-checkpoint.ts';
import { tempDir } from './helpers/files.ts';

const FIXTURES = path.join(import.meta.dirname, 'fixtures');

test('feature change: one row per pair of calls, one column per block; the last block agrees with TeaCache\'s recorder', async () => {
  const runner = await openRunner(path.join(FIXTURES, 'tiny-dit'));
  try {
    const change = featureChangeRecorder();
    const tea = teaCacheRecorder();
    await runner.run({ prompt: '', seed: 3, steps: 6, guidanceScale: 4, width: 128, height: 128, batch: 1, plans: [change.plan, tea.plan], output: 'latent' });
    const { blocks, changes } = change.result;
    assert.deepEqual(blocks, ['transformer_blocks.0', 'transformer_blocks.1']);
    assert.equal(changes.length, 5);
    for (const row of changes) for (const c of row) assert.ok(c > 0 && c < 10, `${c}`);
    assert.equal(tea.samples.length, 5);
    tea.samples.forEach((s, i) => assert.ok(Math.abs(s.y - changes[i][1]) < 1e-6 * s.y, `call ${i + 1}: ${s.y} vs ${changes[i][1]}`));
  } finally {
    await runner.release();
  }
});

test('feature change on a Skip-DiT under Skip-Cache: the middle blocks have no value where shallow passes skipped them', async (t) => {
  const dir = path.join(tempDir(t), 'skip');
  convertOfficialDiT(path.join(FIXTURES, 'skip-dit', 'tiny-skip-dit.pt'), dir, { numHeads: 2, vae: path.join(FIXTURES, 'tiny-dit', 'vae') });
  const runner = await openRunner(dir);
  try {
    const change = featureChangeRecorder();
    await runner.run({ prompt: '', seed: 3, steps: 6, guidanceScale: 4, width: 64, height: 64, batch: 1, plans: [change.plan], output: 'latent',
      accel: [parseAccelSpec('skip-cache:cache_interval=2,skip_at_branch=2')] });
    const { blocks, changes } = change.result;
    assert.equal(blocks.length, 10);
    // Calls 1, 3, 5 are shallow passes: blocks 0–1 and 8–9 run, 2–7 reuse the cached feature.
    changes.forEach((row, i) => {
      const shallowCall = (i + 1) % 2 === 1;
      row.forEach((c, j) => {
        const ran = !shallowCall || j < 2 || j >= 8;
        const ranBefore = (i % 2 === 0) || j < 2 || j >= 8; // call i (the one before) was full when i is even
        assert.equal(Number.isFinite(c), ran && ranBefore, `call ${i}→${i + 1}, block ${j}: ${c}`);
      });
    });
  } finally {
    await runner.release();
  }
});
