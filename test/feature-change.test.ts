/**
 * The feature-change recorder (src/bench/feature-change.ts): per block, the relative change of its
 * output between consecutive model calls — checked against TeaCache's calibration recorder, which
 * measures the last block's output change its own way, and on a Skip-DiT whose shallow passes
 * leave the middle blocks unrun. And the span caches on a Skip-DiT, whose skip fusions they pass on.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { parseAccelSpec } from '../src/accel/index.ts';
import { teaCacheRecorder } from '../src/accel/teacache.ts';
import { featureChangeRecorder } from '../src/bench/feature-change.ts';
import { openRunner } from '../src/bench/runner.ts';
import { convertOfficialDiT } from '../src/models/official-dit-checkpoint.ts';
import type { TensorLike } from '../src/runtime/executor.ts';
import type { Accelerator, RunHooks } from '../src/runtime/plan.ts';
import { rejectsInputError, tempDir } from './helpers/files.ts';

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

/** A plan that only watches which skip fusions run, per call (composed after a method, it sees what the method did not answer itself). */
function fusionWatcher(): { plan: Accelerator; ran: Map<number, string[]> } {
  const ran = new Map<number, string[]>();
  return {
    ran,
    plan: {
      name: 'fusion-watcher',
      begin: <T extends TensorLike>(): RunHooks<T> => ({
        async around(segment, at, next) {
          const out = await next();
          if (segment.role.layer === 'skip-fusion') ran.set(at.call, [...(ran.get(at.call) ?? []), segment.role.block]);
          return out;
        },
      }),
    },
  };
}

test('First-Block-Cache and TeaCache on a Skip-DiT: a span that holds both ends of its long skips, fusions passed on while skipped', async (t) => {
  const dir = path.join(tempDir(t), 'skip');
  convertOfficialDiT(path.join(FIXTURES, 'skip-dit', 'tiny-skip-dit.pt'), dir, { numHeads: 2, vae: path.join(FIXTURES, 'tiny-dit', 'vae') });
  const runner = await openRunner(dir);
  try {
    const run = async (accel: string[], plans: Accelerator[] = []) => runner.run({ prompt: '', seed: 3, steps: 6, guidanceScale: 4, width: 64, height: 64, batch: 1,
      accel: accel.map((a) => parseAccelSpec(a)), plans, output: 'latent' });
    await rejectsInputError(() => run(['fbcache']), 'accel fbcache', 'both ends of every long skip', 'Bn_compute_blocks = Fn_compute_blocks');
    const plain = (await run([])).latents.data;
    // Thresholds of 0 skip nothing: the fusions' roles change nothing.
    for (const accel of ['fbcache:residual_diff_threshold=0,Fn_compute_blocks=1,Bn_compute_blocks=1', 'teacache:rel_l1_thresh=0']) {
      assert.deepEqual((await run([accel])).latents.data, plain, accel);
    }
    const all = [5, 6, 7, 8, 9].map((j) => `blocks.${j}`);
    for (const [accel, whileSkipped] of [
      // Fn = Bn = 2 of 10 blocks: blocks 2–7 skipped, so the fusions of blocks 5–7; blocks 8–9 fuse with the skips of blocks 0–1, computed.
      ['fbcache:residual_diff_threshold=10,Fn_compute_blocks=2,Bn_compute_blocks=2', ['blocks.8', 'blocks.9']],
      ['teacache:rel_l1_thresh=100', undefined],
    ] as [string, string[] | undefined][]) {
      const watcher = fusionWatcher();
      const result = await run([accel], [watcher.plan]);
      assert.ok(result.latents.data.every(Number.isFinite));
      assert.notDeepEqual(result.latents.data, plain, `${accel} skipped something`);
      // Call 0 computes everything; teacache also computes the last call (5).
      for (let call = 0; call < 6; call++) {
        const skipped = call > 0 && !(accel.startsWith('teacache') && call === 5);
        assert.deepEqual(watcher.ran.get(call), skipped ? whileSkipped : all, `${accel}, call ${call}`);
      }
    }
  } finally {
    await runner.release();
  }
});
