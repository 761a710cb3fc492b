/**
 * Attention-map reuse against the method written on diffusers' attention processors
 * (tools/reference/make_attn_reuse_goldens.py), schedules, budgets and refusals.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createAccelerator, parseAccelSpec } from '../src/accel/index.ts';
import { fitMapBudget, hurry } from '../src/accel/attn-reuse.ts';
import { tune } from '../src/cli/tune.ts';
import { greedySearch, phast } from '../src/tune/greedy.ts';
import { loadPipeline } from '../src/pipelines/stable-diffusion.ts';
import { assertClose } from './helpers/compare.ts';
import { accelGoldens } from './helpers/goldens.ts';
import { tempDir } from './helpers/files.ts';

const FIXTURES = path.join(import.meta.dirname, 'fixtures');

test('attention-map reuse on tiny-sd1 equals the reference (HURRY, a PHAST-like schedule file, self-only fp32)', async (t) => {
  const pipeline = await loadPipeline(path.join(FIXTURES, 'tiny-sd1'));
  const dir = tempDir(t);
  try {
    for (const c of accelGoldens(t, 'attn-reuse')) {
      const file = path.join(dir, `${c.name}.json`);
      fs.writeFileSync(file, JSON.stringify({ method: 'attn-reuse', schedule: c.schedule }));
      const reused = await pipeline.generate({ ...c.request, accel: [parseAccelSpec(c.accel.replace('SCHEDULE', file))] });
      // Random weights give near-uniform maps, so reuse moves the result little: the tolerance is
      // tight (1e-4), and the change must be at least 10× our error, so the match is the reuse's.
      const err = assertClose(reused.latents.data, c.expected, 1e-4, `${c.name} vs reference`);
      const scale = Math.max(...c.baseline.map(Math.abs));
      const change = Math.max(...c.baseline.map((v, i) => Math.abs(v - reused.latents.data[i]))) / scale;
      assert.ok(change > 10 * err, `${c.name}: reuse changed the result by ${change}, error ${err}`);
      const reusing = c.schedule!.filter((v) => v === 0).length;
      assert.ok(reused.accel!.stats.reusedMaps > 0 && reused.accel!.stats.reusedMaps % reusing === 0, `${c.name}: ${reused.accel!.stats.reusedMaps} maps reused`);
      t.diagnostic(`${c.name}: relative error ${err.toExponential(2)} (reuse changes it by ${change.toExponential(2)}); ` +
        `${reused.accel!.stats.reusedMaps} maps reused, peak ${(reused.accel!.stats.peakMapBytes / 1024).toFixed(0)} KiB stored`);
    }
  } finally {
    await pipeline.release();
  }
});

test('attention-map reuse: HURRY, a memory budget that leaves the largest layers out and says which, refusals', async (t) => {
  assert.deepEqual(hurry(6, 2), [1, 1, 1, 1, 0, 0]);
  const fit = fitMapBudget([{ segment: 'a', bytes: 10 }, { segment: 'b', bytes: 30 }, { segment: 'c', bytes: 20 }], 35);
  assert.deepEqual([...fit.kept], ['a', 'c']);
  assert.deepEqual(fit.dropped, [{ segment: 'b', bytes: 30 }]);

  const pipeline = await loadPipeline(path.join(FIXTURES, 'tiny-sd1'));
  try {
    const request = { prompt: 'a cat', steps: 6, seed: 1, scheduler: 'ddim' as const, output: 'latent' as const };
    // tiny-sd1 at 128²: full-resolution self-attention maps are 2 × 4 heads × 256² × 2 bytes = 1 MiB each.
    const budgeted = await pipeline.generate({ ...request, accel: [parseAccelSpec('attn-reuse:reuse=3,max_map_memory=1.5')] });
    assert.ok(budgeted.warnings.some((w) => /max_map_memory leaves \d+ of 22 layers computing every call \(.*down_blocks\.0\.attentions\.0\.transformer_blocks\.0\.attn1 1\.0 MiB/.test(w)), budgeted.warnings.join('\n'));
    assert.ok(budgeted.accel!.stats.peakMapBytes <= 1.5 * 2 ** 20);
    await assert.rejects(pipeline.generate({ ...request, accel: [parseAccelSpec('attn-reuse:reuse=6')] }), /reuse=6 leaves no computing call in a run of 6 model calls/);
    await assert.rejects(pipeline.generate({ ...request, accel: [parseAccelSpec('attn-reuse:reuse=3,max_map_memory=0.001')] }), /no layer's attention maps fit/);
    await assert.rejects(pipeline.generate({ ...request, accel: [parseAccelSpec('attn-reuse:schedule=/nonexistent.json')] }), /cannot read the schedule \(ENOENT\)/);
    await assert.rejects(pipeline.generate({ ...request, accel: [parseAccelSpec('attn-reuse:schedule=11100')] }), /the schedule has 5 entries for a run of 6 model calls/);
    await assert.rejects(pipeline.generate({ ...request, accel: [parseAccelSpec('attn-reuse:schedule=011100')] }), /the first model call must compute/);
    const bad = path.join(tempDir(t), 'bad.json');
    fs.writeFileSync(bad, JSON.stringify({ schedule: [1, 2, 0] }));
    await assert.rejects(pipeline.generate({ ...request, accel: [parseAccelSpec(`attn-reuse:schedule=${bad}`)] }), /not a schedule; expected a JSON array of 0 \(reuse\) and 1 \(compute\)/);
  } finally {
    await pipeline.release();
  }
  assert.throws(() => createAccelerator([parseAccelSpec('tome'), parseAccelSpec('attn-reuse')]), /tome and attn-reuse cannot be combined: token merging/);
});

test('greedy search (PHAST moves): finds the schedule a synthetic objective prefers, round by round, and stops', async () => {
  const target = '101101';
  const objective = async (spec: { params: Record<string, unknown> }) => {
    const s = String(spec.params.schedule);
    return [...s].filter((c, i) => c === target[i]).length; // matches with the target
  };
  const rounds: string[] = [];
  const result = await greedySearch(phast(6, 2, hurry(6, 2)), objective, 0.5, (r) => rounds.push(`${r.round}:${r.state.join('')}:${r.objective}`));
  assert.equal(result.state.join(''), target);
  assert.equal(rounds[0], '0:111100:4');
  assert.equal(rounds.at(-1), `${rounds.length - 1}:${target}:6`);
  for (const r of result.rounds) assert.equal(r.state.filter((v) => v === 0).length, 2, 'r stays fixed');
});

test('diffuse tune writes a schedule that --accel attn-reuse:schedule=FILE runs', async (t) => {
  const dir = tempDir(t);
  const out = path.join(dir, 'schedule.json');
  const prompts = path.join(dir, 'prompts.txt');
  fs.writeFileSync(prompts, 'a red circle on the left\n');
  await tune({ model: path.join(FIXTURES, 'tiny-sd1'), method: 'attn-reuse', steps: 5, reuse: 2, prompts, count: 1, epsilon: 0.01,
    guidance: 7.5, seed: 0, scheduler: 'ddim', out, maxRounds: 1 });
  const report = JSON.parse(fs.readFileSync(out, 'utf8'));
  assert.equal(report.finished, true);
  assert.equal(report.model, 'tiny-sd1', 'the folder\'s name, not this machine\'s path');
  assert.ok(report.rounds.length <= 2, '--max-rounds 1: HURRY and one round');
  assert.equal(report.schedule.length, 5);
  assert.equal(report.schedule[0], 1);
  assert.equal(report.schedule.filter((v: number) => v === 0).length, 2);
  assert.ok(report.psnr >= report.hurryPsnr);
  const pipeline = await loadPipeline(path.join(FIXTURES, 'tiny-sd1'));
  try {
    const r = await pipeline.generate({ prompt: 'a cat', steps: 5, seed: 0, scheduler: 'ddim', output: 'latent', accel: [parseAccelSpec(`attn-reuse:schedule=${out}`)] });
    assert.ok(r.accel!.stats.reusedMaps > 0);
  } finally {
    await pipeline.release();
  }
  await assert.rejects(tune({ method: 'tome', steps: 5, reuse: 2, epsilon: 0, guidance: 7.5, seed: 0, out, maxRounds: 100 }), /--method: no search for this method yet/);
});
