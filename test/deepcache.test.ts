/**
 * DeepCache: the official non-uniform schedule, the uniform schedule and its restarts at TGATE's
 * gate calls, the U-Net cut (which segments a shallow pass runs), whole-run MACs on SD 1.5, the
 * --accel knobs, and runs on tiny-sd1 against the official DeepCacheSDHelper and T-GATE's
 * TgateSDDeepCacheLoader (goldens from tools/reference/make_deepcache_goldens.py).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DEEPCACHE_DEFAULTS, deepcache, nonUniformFullCalls, sampleFromQuadCenter } from '../src/accel/deepcache.ts';
import { createAccelerator, formatAccelSpec, parseAccelSpec } from '../src/accel/index.ts';
import { wholeRunMacs } from '../src/bench/run-macs.ts';
import { calflopsMacs, fullMacs } from '../src/graph/builder.ts';
import { PRESETS } from '../src/models/presets.ts';
import { UNet2DConditionModel, parseUNetConfig } from '../src/models/unet2d-condition.ts';
import { loadPipeline } from '../src/pipelines/stable-diffusion.ts';
import { DryExecutor } from '../src/runtime/dry-executor.ts';
import { shaped } from '../src/runtime/executor.ts';
import { PlannedExecutor, combine, shapedOps, type Accelerator } from '../src/runtime/plan.ts';
import type { SchedulerName } from '../src/schedulers/index.ts';
import { SafetensorsFile } from '../src/weights/safetensors.ts';
import { assertClose } from './helpers/compare.ts';
import { rejectsInputError, throwsInputError } from './helpers/files.ts';

const FIXTURES = path.join(import.meta.dirname, 'fixtures');
const GOLDENS = path.join(FIXTURES, 'goldens', 'deepcache');
const unetOf = (preset: string) => new UNet2DConditionModel(parseUNetConfig(PRESETS[preset].unet, preset));
const fullCalls = (a: Accelerator, calls: number, steps = calls) =>
  Array.from({ length: calls }, (_, c) => c).filter((c) => !a.branch!(c, { steps, fullPassCalls: a.fullPassCalls ?? [] })!.reuse);

test('non-uniform schedule: sample_from_quad_center equals the official function on 1400 settings', () => {
  // [total, n_samples, center, pow, pow used (null: ValueError), indices]
  const cases = JSON.parse(fs.readFileSync(path.join(GOLDENS, 'schedules.json'), 'utf8')) as [number, number, number, number, number | null, number[] | null][];
  assert.equal(cases.length, 1400);
  for (const [total, samples, center, pow, used, indices] of cases) {
    const what = `sample_from_quad_center(${total}, ${samples}, center=${center}, pow=${pow})`;
    if (used === null) {
      throwsInputError(() => sampleFromQuadCenter(total, samples, center, pow), 'deepcache:pow/center', `${samples} full passes over ${total} steps`);
    } else {
      assert.deepEqual(sampleFromQuadCenter(total, samples, center, pow), { indices, pow: used }, what);
    }
  }
  // The official SD script's setting: 50 steps, interval 5, pow 1.4, center 15.
  assert.deepEqual(nonUniformFullCalls({ ...DEEPCACHE_DEFAULTS, cache_interval: 5, uniform: false }, 50), [0, 5, 9, 13, 17, 21, 26, 31, 37, 43]);
});

test('uniform schedule: a full pass every cache_interval calls, restarted at the gate calls when composed with TGATE', () => {
  const dc = createAccelerator([parseAccelSpec('deepcache:cache_interval=3')])!;
  assert.deepEqual(fullCalls(dc, 12), [0, 3, 6, 9]);
  assert.deepEqual(dc.branch!(4, { fullPassCalls: [] }), { branch: 0, reuse: true });
  // T-GATE's SD_DeepCache.py resets the helper at gate_step-1 and gate_step: full passes there, then every 3 from the gate.
  for (const specs of [['tgate:gate_step=6', 'deepcache:cache_interval=3'], ['deepcache:cache_interval=3', 'tgate:gate_step=6']]) {
    const both = createAccelerator(specs.map(parseAccelSpec))!;
    assert.deepEqual(fullCalls(both, 14), [0, 3, 5, 6, 9, 12]);
    assert.deepEqual(Array.from({ length: 8 }, (_, c) => both.cfgActive!(c)), [true, true, true, true, true, true, false, false]);
  }
  const nonUniform = createAccelerator([parseAccelSpec('deepcache:cache_interval=3,uniform=false'), parseAccelSpec('tgate:gate_step=6')])!;
  assert.deepEqual(fullCalls(nonUniform, 20), [0, 4, 5, 6, 8, 11, 14, 15, 17]);
  // Without the step count a non-uniform plan cannot be made.
  assert.throws(() => nonUniform.branch!(1, { fullPassCalls: [] }), /number of inference steps/);
  assert.deepEqual(fullCalls(createAccelerator([parseAccelSpec('deepcache:cache_interval=1')])!, 4), [0, 1, 2, 3]);
  throwsInputError(() => combine([deepcache(DEEPCACHE_DEFAULTS), deepcache(DEEPCACHE_DEFAULTS)]), 'both cut the U-Net', 'one such method at a time');
});

/** Segment names one dry SD 1.5 forward runs at each call, through a plan. */
async function segmentsPerCall(spec: string, calls: number): Promise<string[][]> {
  const unet = unetOf('sd15');
  const dry = new DryExecutor();
  const planned = new PlannedExecutor(dry, createAccelerator([parseAccelSpec(spec)])!, shapedOps);
  const out: string[][] = [];
  for (let call = 0; call < calls; call++) {
    planned.call = call;
    const first = dry.calls.length;
    const noise = await unet.forward(planned, shaped([2, 4, 64, 64]), shaped([2]), shaped([2, 77, 768]));
    assert.deepEqual(noise.dims, [2, 4, 64, 64]);
    out.push(dry.calls.slice(first).map((r) => r.name));
  }
  return out;
}

const blocks = (names: string[]) => [...new Set(names.map((n) => n.replace(/\.(transformer_blocks|proj_in|proj_out).*$/, '')))];

test('the cut: branch 0 runs conv_in and the last up layer, branch 1 adds the shallowest down/up pair, as the official helper', async () => {
  const [full, shallow0] = await segmentsPerCall('deepcache:cache_interval=2,cache_branch_id=0', 2);
  assert.equal(full.length, 111); // conv_in, time_embedding, 41 down, 7 mid, 60 up, conv_out
  assert.deepEqual(blocks(shallow0), ['conv_in', 'time_embedding', 'up_blocks.3.resnets.2', 'up_blocks.3.attentions.2', 'conv_out']);
  const [, shallow1] = await segmentsPerCall('deepcache:cache_interval=2,cache_branch_id=1', 2);
  assert.deepEqual(blocks(shallow1), ['conv_in', 'time_embedding', 'down_blocks.0.resnets.0', 'down_blocks.0.attentions.0',
    'up_blocks.3.resnets.1', 'up_blocks.3.attentions.1', 'up_blocks.3.resnets.2', 'up_blocks.3.attentions.2', 'conv_out']);
  // Branch 3 crosses down_blocks.0's downsampler: up_blocks.2 resumes at its last layer, then its upsampler.
  const [, shallow3] = await segmentsPerCall('deepcache:cache_interval=2,cache_branch_id=3', 2);
  assert.deepEqual(blocks(shallow3).slice(2, 9), ['down_blocks.0.resnets.0', 'down_blocks.0.attentions.0', 'down_blocks.0.resnets.1',
    'down_blocks.0.attentions.1', 'down_blocks.0.downsamplers.0', 'up_blocks.2.resnets.2', 'up_blocks.2.attentions.2']);
  assert.equal(blocks(shallow3)[9], 'up_blocks.2.upsamplers.0');
  // The deepest branch skips the mid block alone.
  const [full11, shallow11] = await segmentsPerCall('deepcache:cache_interval=2,cache_branch_id=11', 2);
  assert.deepEqual(shallow11, full11.filter((n) => !n.startsWith('mid_block')));
});

test('cache_branch_id beyond the U-Net\'s depth is refused for that config', async () => {
  const run = (preset: string, spec: string) => wholeRunMacs(unetOf(preset), {
    calls: 2, batch: 1, latentHeight: 32, latentWidth: 32, cfg: true, accelerator: createAccelerator([parseAccelSpec(spec)]),
    textEmbedsDim: preset === 'sdxl' ? 1280 : undefined,
  });
  await rejectsInputError(() => run('sd15', 'deepcache:cache_branch_id=12'), 'accel deepcache:cache_branch_id', "beyond this U-Net's depth",
    '11 down-path outputs', '0 to 11', 'found 12');
  await rejectsInputError(() => run('sdxl', 'deepcache:cache_branch_id=9'), 'cache_branch_id', '0 to 8', 'found 9');
  await run('sdxl', 'deepcache:cache_branch_id=8');
  const pipeline = await loadPipeline(path.join(FIXTURES, 'tiny-sd1'));
  try {
    await rejectsInputError(() => pipeline.generate({ prompt: 'x', steps: 2, output: 'latent', accel: [parseAccelSpec('deepcache:cache_branch_id=9')] }),
      'cache_branch_id', '0 to 8', 'found 9');
  } finally {
    await pipeline.release();
  }
});

test('the deep-feature cache is kept per shape: when the batch changes, the next call is a full pass', async () => {
  const dropCfg: Accelerator = { name: 'drop-cfg', cfgActive: (c) => c < 1 };
  const unet = unetOf('sd15');
  const common = { calls: 6, batch: 1, latentHeight: 32, latentWidth: 32, cfg: true };
  const r = await wholeRunMacs(unet, { ...common, accelerator: combine([deepcache({ ...DEEPCACHE_DEFAULTS, cache_interval: 6 }), dropCfg]) });
  // call 0 full at batch 2; call 1 finds no batch-1 feature and runs full; calls 2-5 are shallow
  assert.equal(r.stats.shallowPasses, 4);
  const base = await wholeRunMacs(unet, { ...common, accelerator: dropCfg });
  assert.deepEqual(r.perCall.slice(0, 2), base.perCall.slice(0, 2));
  assert.ok(calflopsMacs(r.perCall[2]) < calflopsMacs(base.perCall[2]) / 5);
});

test('whole-run MACs, SD 1.5 at 512², 50 calls with CFG: full passes plus shallow passes', async (t) => {
  const unet = unetOf('sd15');
  const common = { calls: 50, batch: 1, latentHeight: 64, latentWidth: 64, cfg: true };
  const base = await wholeRunMacs(unet, common);
  const perCall = calflopsMacs(base.total) / 50;
  t.diagnostic(`baseline ${(calflopsMacs(base.total) / 1e12).toFixed(3)} T calflops, ${(fullMacs(base.total) / 1e12).toFixed(3)} T full`);
  const expected: Record<string, [number, number]> = {}; // spec → [full passes, calflops ratio lower bound]
  for (const [spec, fullPasses, atLeast] of [
    ['deepcache:cache_interval=3,cache_branch_id=0', 17, 2.6],
    ['deepcache:cache_interval=5,cache_branch_id=0', 10, 4.0],
    ['deepcache:cache_interval=3,cache_branch_id=1', 17, 2.2],
    ['deepcache:cache_interval=5,cache_branch_id=1', 10, 2.9],
    ['deepcache:cache_interval=5,cache_branch_id=1,uniform=false', 10, 2.9],
  ] as [string, number, number][]) {
    expected[spec] = [fullPasses, atLeast];
    const r = await wholeRunMacs(unet, { ...common, accelerator: createAccelerator([parseAccelSpec(spec)]) });
    assert.equal(r.stats.shallowPasses, 50 - fullPasses, spec);
    // every call is either a full pass (the baseline's cost) or a shallow one (all alike)
    const costs = r.perCall.map(calflopsMacs);
    const shallow = Math.min(...costs);
    assert.ok(costs.every((m) => m === shallow || m === perCall), spec);
    const total = calflopsMacs(r.total);
    assert.equal(total, fullPasses * perCall + (50 - fullPasses) * shallow);
    const ratio = calflopsMacs(base.total) / total;
    t.diagnostic(`${spec}: ${(total / 1e12).toFixed(3)} T calflops (×${ratio.toFixed(2)}), full-count ×${(fullMacs(base.total) / fullMacs(r.total)).toFixed(2)}; ` +
      `shallow pass ${(shallow / 2e9).toFixed(2)} G per image vs ${(perCall / 2e9).toFixed(2)} G`);
    assert.ok(ratio > atLeast && ratio < atLeast + 0.1, `${spec}: ×${ratio}`);
  }
});

test('--accel deepcache syntax: defaults, knobs, and one clear error per mistake', () => {
  assert.deepEqual(parseAccelSpec('deepcache'), { method: 'deepcache', params: { ...DEEPCACHE_DEFAULTS } });
  assert.deepEqual(parseAccelSpec('deepcache:cache_interval=5,cache_branch_id=1,uniform=false,pow=1.25,center=20').params,
    { cache_interval: 5, cache_branch_id: 1, uniform: false, pow: 1.25, center: 20 });
  assert.equal(formatAccelSpec(parseAccelSpec('deepcache')), 'deepcache:cache_interval=3,cache_branch_id=0,uniform=true,pow=1.4,center=15');
  throwsInputError(() => parseAccelSpec('deepcache:cache_interval=0'), 'accel deepcache:cache_interval', 'an integer ≥ 1', 'found 0');
  throwsInputError(() => parseAccelSpec('deepcache:cache_interval=2.5'), 'deepcache:cache_interval', 'found 2.5');
  throwsInputError(() => parseAccelSpec('deepcache:cache_branch_id=-1'), 'deepcache:cache_branch_id', 'an integer ≥ 0', 'found -1');
  throwsInputError(() => parseAccelSpec('deepcache:uniform=no'), 'deepcache:uniform', 'true or false', 'found no');
  throwsInputError(() => parseAccelSpec('deepcache:pow=1'), 'deepcache:pow', 'a number > 1', 'found 1');
  throwsInputError(() => parseAccelSpec('deepcache:pow=abc'), 'deepcache:pow', 'a number > 1', 'found abc');
  throwsInputError(() => parseAccelSpec('deepcache:pow=Infinity'), 'deepcache:pow', 'found Infinity');
  throwsInputError(() => parseAccelSpec('deepcache:center=-3'), 'deepcache:center', 'an integer ≥ 0', 'found -3');
  throwsInputError(() => parseAccelSpec('deepcache:cache_layer_id=0'), 'accel deepcache:cache_layer_id', 'unknown key', 'cache_branch_id');
  throwsInputError(() => parseAccelSpec('deepcache:pow'), 'deepcache:pow', 'no value');
  throwsInputError(() => createAccelerator([parseAccelSpec('deepcache'), parseAccelSpec('deepcache:cache_interval=5')]), 'deepcache given twice');
});

test('a non-uniform schedule the official search cannot place is refused at the first call', async () => {
  const unet = unetOf('sd15');
  await rejectsInputError(() => wholeRunMacs(unet, {
    calls: 10, batch: 1, latentHeight: 32, latentWidth: 32, cfg: false,
    accelerator: createAccelerator([parseAccelSpec('deepcache:cache_interval=2,uniform=false,pow=1.4,center=5')]),
  }), 'deepcache:pow/center', '5 full passes over 10 steps around center 5', 'uniform=true');
});

interface Case {
  name: string;
  scheduler: SchedulerName;
  steps: number;
  method: 'helper' | 'nonuniform' | 'tgate';
  accel: string[];
  prompt: string;
  negative_prompt: string;
  guidance_scale: number;
  full_calls: number[] | null;
  gate_step?: number;
}

const CASES = JSON.parse(fs.readFileSync(path.join(GOLDENS, 'tiny-sd1.json'), 'utf8')) as Case[];

async function conformance(t: { diagnostic(message: string): void }, cases: Case[]): Promise<void> {
  const goldens = SafetensorsFile.open(path.join(GOLDENS, 'tiny-sd1.safetensors'));
  const pipeline = await loadPipeline(path.join(FIXTURES, 'tiny-sd1'));
  try {
    for (const c of cases) {
      const accel = c.accel.map(parseAccelSpec);
      if (c.full_calls) assert.deepEqual(fullCalls(createAccelerator(accel)!, c.steps), c.full_calls, `${c.name}: schedule`);
      const result = await pipeline.generate({
        prompt: c.prompt, negativePrompt: c.negative_prompt, steps: c.steps, guidanceScale: c.guidance_scale, scheduler: c.scheduler,
        latents: { data: goldens.readFloat32(`${c.name}.latents_in`), dims: [1, 4, 16, 16] }, output: 'latent', accel,
      });
      const err = assertClose(result.latents.data, goldens.readFloat32(`${c.name}.latents_out`), 1e-3, `${c.name} vs the official code`);
      // DeepCache really changed the result, so the comparison means something
      const baseline = goldens.readFloat32(`${c.name}.baseline_out`);
      const change = Math.max(...result.latents.data.map((v, i) => Math.abs(v - baseline[i])));
      assert.ok(change > 1e-2, `${c.name}: DeepCache changed nothing`);
      if (c.gate_step !== undefined) assert.equal(result.accel?.cfgCalls, c.gate_step);
      t.diagnostic(`${c.name}: relative error ${err.toExponential(2)} (max change vs baseline ${change.toFixed(3)})`);
    }
  } finally {
    goldens.close();
    await pipeline.release();
  }
}

test('DeepCache on tiny-sd1 equals the official DeepCacheSDHelper (final latents within 1e-3)', async (t) => {
  await conformance(t, CASES.filter((c) => c.method === 'helper'));
});

test('TGATE + DeepCache on tiny-sd1 equals T-GATE\'s TgateSDDeepCacheLoader (final latents within 1e-3)', async (t) => {
  await conformance(t, CASES.filter((c) => c.method === 'tgate'));
});

// Needs the pipeline to tell the PlannedExecutor the step count (planned.steps = steps).
test('non-uniform DeepCache on tiny-sd1 equals the helper run on the official non-uniform schedule (within 1e-3)', async (t) => {
  await conformance(t, CASES.filter((c) => c.method === 'nonuniform'));
});
