/**
 * The acceleration framework: plans, the --accel syntax, whole-run MACs against the TGATE paper's
 * tables, and TGATE runs against the official T-GATE code on the tiny SD 1.x fixture.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { createAccelerator, parseAccelSpec } from '../src/accel/index.ts';
import { tgate, TGATE_DEFAULTS } from '../src/accel/tgate.ts';
import type { SegmentRole } from '../src/runtime/protocol.ts';
import { wholeRunMacs } from '../src/bench/run-macs.ts';
import { calflopsMacs } from '../src/graph/builder.ts';
import { transformerFromConfig } from '../src/models/components.ts';
import { PRESETS, TRANSFORMER_PRESETS } from '../src/models/presets.ts';
import { UNet2DConditionModel, parseUNetConfig } from '../src/models/unet2d-condition.ts';
import { loadPixArtPipeline } from '../src/pipelines/pixart.ts';
import { loadPipeline } from '../src/pipelines/stable-diffusion.ts';
import { readPipelineFolder } from '../src/weights/diffusers-folder.ts';
import { assertClose, relativeError } from './helpers/compare.ts';
import { accelGoldens } from './helpers/goldens.ts';
import { throwsInputError } from './helpers/files.ts';

const FIXTURES = path.join(import.meta.dirname, 'fixtures');

/** A transformer sub-layer as the U-Net declares it. */
const sublayer = (block: string, name: string, layer: SegmentRole['layer']) => ({ name: `${block}.${name}`, role: { block, layer } });

test('TGATE schedule: the official phases, call by call', () => {
  const plan = tgate({ ...TGATE_DEFAULTS, gate_step: 6, sp_interval: 3, fi_interval: 2, warm_up: 1 });
  const block = 'mid_block.attentions.0.transformer_blocks.0';
  const run = { fullPassCalls: plan.fullPassCalls! };
  const decide = (name: string, layer: SegmentRole['layer'], s: number, cfg: boolean) => plan.decide!(sublayer(block, name, layer), s, cfg, run);
  const cross = Array.from({ length: 9 }, (_, s) => decide('attn2', 'cross-attention', s, s < 6));
  const self = Array.from({ length: 9 }, (_, s) => decide('attn1', 'self-attention', s, s < 6));
  assert.deepEqual(cross, ['compute', 'compute', 'compute', 'compute', 'compute', 'cache-cfg-mean', 'reuse', 'reuse', 'reuse']);
  assert.deepEqual(self, ['compute', 'cache', 'reuse', 'cache', 'reuse', 'cache-cfg-mean', 'cache', 'reuse', 'cache']);
  assert.deepEqual(Array.from({ length: 8 }, (_, s) => plan.cfgActive!(s)), [true, true, true, true, true, true, false, false]);
  assert.equal(decide('ff', 'feed-forward', 7, false), 'compute');
  // Without CFG the gate-step cache is not averaged (the official code would crash here).
  assert.equal(decide('attn2', 'cross-attention', 5, false), 'cache');
  assert.deepEqual(plan.fullPassCalls, [5, 6]);
});

test('--accel syntax: defaults, knobs, and one clear error per mistake', () => {
  assert.deepEqual(parseAccelSpec('tgate'), { method: 'tgate', params: { ...TGATE_DEFAULTS } });
  assert.deepEqual(parseAccelSpec('tgate:gate_step=5,cache_self_attn=false').params, { ...TGATE_DEFAULTS, gate_step: 5, cache_self_attn: false });
  throwsInputError(() => parseAccelSpec('tomato'), 'accel', 'unknown method', 'tgate', 'tomato');
  throwsInputError(() => parseAccelSpec('tgate:gate=5'), 'accel tgate:gate', 'unknown key', 'gate_step');
  throwsInputError(() => parseAccelSpec('tgate:gate_step=0'), 'accel tgate:gate_step', 'an integer ≥ 1', 'found 0');
  throwsInputError(() => parseAccelSpec('tgate:gate_step=2.5'), 'accel tgate:gate_step', 'found 2.5');
  throwsInputError(() => parseAccelSpec('tgate:cache_self_attn=yes'), 'cache_self_attn', 'true or false');
  // A second "=" or a knob given twice would otherwise drop a value without a word.
  throwsInputError(() => parseAccelSpec('tgate:gate_step=10=999'), 'accel tgate:gate_step', 'found 10=999');
  throwsInputError(() => parseAccelSpec('tgate:gate_step=5,sp_interval=2,gate_step=10'), 'accel tgate:gate_step', 'given twice');
  throwsInputError(() => parseAccelSpec('tgate:warm_up'), 'tgate:warm_up', 'no value');
  throwsInputError(() => createAccelerator([parseAccelSpec('tgate'), parseAccelSpec('tgate')]), 'tgate given twice');
});

// The TGATE paper's tables (calflops MACs, U-Net only, CFG batch included, 25 steps).
const TABLES: [string, number, string | undefined, number][] = [
  ['sd15', 512, undefined, 16.938e12],
  ['sd15', 512, 'tgate:gate_step=5,cache_self_attn=false', 9.875e12],
  ['sd21', 768, undefined, 38.041e12],
  ['sd21', 768, 'tgate:gate_step=5,cache_self_attn=false', 22.208e12],
  ['sdxl', 1024, undefined, 149.438e12],
  ['sdxl', 1024, 'tgate:gate_step=5,cache_self_attn=false', 84.438e12],
  ['sdxl', 1024, 'tgate:gate_step=10,sp_interval=5,fi_interval=1,warm_up=2', 95.988e12],
];

for (const [preset, size, spec, paper] of TABLES) {
  test(`whole-run MACs: ${preset} ${size}² ${spec ?? 'baseline'} within 0.1% of the TGATE paper's ${paper / 1e12} T`, async (t) => {
    const unet = new UNet2DConditionModel(parseUNetConfig(PRESETS[preset].unet, preset));
    const macs = await wholeRunMacs(unet, {
      calls: 25, batch: 1, latentHeight: size / 8, latentWidth: size / 8, cfg: true,
      accelerator: spec ? createAccelerator([parseAccelSpec(spec)]) : undefined,
      textEmbedsDim: preset === 'sdxl' ? 1280 : undefined,
    });
    const ours = calflopsMacs(macs.total);
    t.diagnostic(`${(ours / 1e12).toFixed(3)} T (${(((ours - paper) / paper) * 100).toFixed(3)}%)`);
    assert.ok(Math.abs(ours - paper) / paper < 1e-3, `${ours} vs ${paper}`);
  });
}

// The TGATE paper's LCM-SDXL rows: 4 calls, no CFG (guidance-distilled), lcm-sdxl's U-Net (SDXL's with time_cond_proj_dim 256).
for (const [spec, paper] of [[undefined, 11.955e12], ['tgate:gate_step=1,sp_interval=1,fi_interval=1,warm_up=0', 11.171e12]] as const) {
  test(`whole-run MACs: LCM-SDXL 1024² 4 calls ${spec ?? 'baseline'} within 0.1% of the TGATE paper's ${paper / 1e12} T`, async (t) => {
    const unet = new UNet2DConditionModel(parseUNetConfig({ ...PRESETS.sdxl.unet, time_cond_proj_dim: 256 }, 'lcm-sdxl'));
    const macs = await wholeRunMacs(unet, {
      calls: 4, batch: 1, latentHeight: 128, latentWidth: 128, cfg: false, textEmbedsDim: 1280,
      accelerator: spec ? createAccelerator([parseAccelSpec(spec)]) : undefined,
    });
    const ours = calflopsMacs(macs.total);
    t.diagnostic(`${(ours / 1e12).toFixed(3)} T (${(((ours - paper) / paper) * 100).toFixed(3)}%)`);
    assert.ok(Math.abs(ours - paper) / paper < 1e-3, `${ours} vs ${paper}`);
  });
}

// The TGATE paper's PixArt rows (calflops MACs, transformer only — text encoder out, caption
// projection in — 1024², CFG batch); its LCM-PixArt row is 4 calls without CFG.
const PIXART_TABLES: [string, string | undefined, number, boolean, number][] = [
  ['pixart-alpha-1024', undefined, 25, true, 107.031e12],
  ['pixart-alpha-1024', 'tgate:gate_step=8,cache_self_attn=false', 25, true, 65.318e12],
  ['pixart-alpha-1024', 'tgate:gate_step=15,sp_interval=3,fi_interval=1,warm_up=2', 25, true, 73.971e12],
  ['pixart-sigma-1024', undefined, 25, true, 107.766e12],
  ['pixart-sigma-1024', 'tgate:gate_step=15,sp_interval=3,fi_interval=1,warm_up=2', 25, true, 74.420e12],
  ['pixart-alpha-1024', undefined, 4, false, 8.563e12],
  ['pixart-alpha-1024', 'tgate:gate_step=1,sp_interval=1,fi_interval=1,warm_up=0', 4, false, 7.623e12],
];

for (const [preset, spec, calls, cfg, paper] of PIXART_TABLES) {
  test(`whole-run MACs: ${preset} ${calls} calls${cfg ? '' : ' without CFG'} ${spec ?? 'baseline'} within 0.1% of the TGATE paper's ${paper / 1e12} T`, async (t) => {
    const p = TRANSFORMER_PRESETS[preset];
    const macs = await wholeRunMacs(transformerFromConfig(p.transformerClass, p.transformer, preset), {
      calls, batch: 1, latentHeight: 128, latentWidth: 128, cfg, tokens: p.maxSequenceLength,
      accelerator: spec ? createAccelerator([parseAccelSpec(spec)]) : undefined,
    });
    const ours = calflopsMacs(macs.total);
    t.diagnostic(`${(ours / 1e12).toFixed(3)} T (${(((ours - paper) / paper) * 100).toFixed(3)}%)`);
    assert.ok(Math.abs(ours - paper) / paper < 1e-3, `${ours} vs ${paper}`);
  });
}

test('TGATE on tiny-sd1 equals the official T-GATE code (final latents within 1e-3)', async (t) => {
  const pipeline = await loadPipeline(path.join(FIXTURES, 'tiny-sd1'));
  try {
    for (const c of accelGoldens(t, 'accel')) {
      const accelerated = await pipeline.generate({ ...c.request, accel: [parseAccelSpec(c.accel)] });
      const err = assertClose(accelerated.latents.data, c.expected, 1e-3, `${c.name} vs official TGATE`);
      const baseline = await pipeline.generate(c.request);
      assertClose(baseline.latents.data, c.baseline, 1e-3, `${c.name} baseline`);
      // and TGATE really changed the result, so the comparison means something
      assert.ok(baseline.latents.data.some((v, i) => Math.abs(v - accelerated.latents.data[i]) > 1e-2), `${c.name}: TGATE changed nothing`);
      const gate = parseAccelSpec(c.accel).params.gate_step as number;
      assert.equal(accelerated.accel?.cfgCalls, Math.min(gate, c.steps));
      t.diagnostic(`${c.name}: relative error ${err.toExponential(2)}, ${accelerated.accel?.stats.reusedSegments} segment calls reused`);
    }
  } finally {
    await pipeline.release();
  }
});

for (const fixture of ['tiny-pixart-alpha', 'tiny-pixart-sigma']) {
  test(`TGATE on ${fixture} equals the official T-GATE PixArt code: the paper's recipe, a batch, a negative prompt, LCM`, async (t) => {
    const pixart = loadPixArtPipeline(readPipelineFolder(path.join(FIXTURES, fixture)));
    try {
      for (const c of accelGoldens(t, 'tgate-pixart', fixture)) {
        const request = { ...c.request, width: 128, height: 128, resolutionBinning: false };
        const accelerated = await pixart.generate({ ...request, accel: [parseAccelSpec(c.accel)] });
        // Relative to max |x|, which the tiny random transformer drives to ~10³ in places: TGATE's
        // effect on that scale is 6e-5 (LCM) to 1.8; it must stand well clear of our error.
        const err = assertClose(accelerated.latents.data, c.expected, 1e-4, `${c.name} vs official TGATE`);
        const baseline = await pixart.generate(request);
        const baseErr = assertClose(baseline.latents.data, c.baseline, 1e-4, `${c.name} baseline`);
        const change = relativeError(baseline.latents.data, c.expected);
        assert.ok(change > 10 * Math.max(err, baseErr), `${c.name}: TGATE's change ${change} is within our error`);
        const gate = parseAccelSpec(c.accel).params.gate_step as number;
        assert.equal(accelerated.accel?.cfgCalls, c.guidance_scale > 1 ? gate : 0);
        t.diagnostic(`${c.name}: relative error ${err.toExponential(2)}, TGATE's change ${change.toExponential(2)}, ${accelerated.accel?.stats.reusedSegments} segment calls reused`);
      }
    } finally {
      await pixart.release();
    }
  });
}

test('TGATE with CFG off (guidance ≤ 1, as with LCM): no averaging, no CFG calls, still gates', async () => {
  const pipeline = await loadPipeline(path.join(FIXTURES, 'tiny-sd1'));
  try {
    const request = { prompt: 'a red circle', steps: 6, guidanceScale: 1, scheduler: 'ddim' as const, seed: 3, width: 64, height: 64, output: 'latent' as const };
    const baseline = await pipeline.generate(request);
    const gated = await pipeline.generate({ ...request, accel: [parseAccelSpec('tgate:gate_step=2,sp_interval=1,warm_up=0')] });
    assert.equal(gated.accel?.cfgCalls, 0);
    assert.ok((gated.accel?.stats.reusedSegments ?? 0) > 0, 'cross-attention reused after the gate');
    assert.ok(gated.latents.data.every(Number.isFinite));
    assert.notDeepEqual(gated.latents.data, baseline.latents.data);
  } finally {
    await pipeline.release();
  }
});
