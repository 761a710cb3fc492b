/**
 * Conformance of each model component with diffusers/transformers on the tiny fixtures
 * (goldens made by tools/reference/make_fixtures.py).
 */
import { test, type TestContext } from 'node:test';
import * as path from 'node:path';
import assert from 'node:assert/strict';
import { fullMacs } from '../src/graph/builder.ts';
import { PRESETS } from '../src/models/presets.ts';
import { UNet2DConditionModel, parseUNetConfig } from '../src/models/unet2d-condition.ts';
import { DryExecutor } from '../src/runtime/dry-executor.ts';
import { shaped } from '../src/runtime/executor.ts';
import * as ort from 'onnxruntime-node';
import { OrtExecutor } from '../src/runtime/ort-executor.ts';
import { readPipelineFolder } from '../src/weights/diffusers-folder.ts';
import { loadTextEncoder, loadUNet, loadVae } from '../src/models/components.ts';
import { COMPONENT_TOLERANCE, assertClose } from './helpers/compare.ts';
import { openGoldens } from './helpers/goldens.ts';

const FIXTURES = path.join(import.meta.dirname, 'fixtures');
const { textEncoder: TEXT, unet: UNET, vae: VAE } = COMPONENT_TOLERANCE;

const goldens = (t: TestContext, fixture: string, part: string) =>
  openGoldens(t, path.join(FIXTURES, 'goldens', `${fixture}-${part}.safetensors`));

/** Asserts closeness and reports the measured relative error in the test output. */
function report(t: TestContext, actual: Float32Array, expected: Float32Array, tolerance: number, what: string): void {
  t.diagnostic(`${what}: relative error ${assertClose(actual, expected, tolerance, what).toExponential(2)}`);
}

const timestep = (t: number, batch: number) => new ort.Tensor('float32', new Float32Array(batch).fill(t), [batch]);

for (const fixture of ['tiny-sd1', 'tiny-sd2']) {
  const folder = readPipelineFolder(path.join(FIXTURES, fixture));

  test(`${fixture}: CLIP text encoder equals transformers`, async (t) => {
    const { model, params } = loadTextEncoder(folder);
    const g = goldens(t, fixture, 'text_encoder');
    const out = await model.forward(new OrtExecutor(params), g.i64('input_ids'));
    report(t, out.lastHiddenState.data as Float32Array, g.f32('last_hidden_state').data as Float32Array, TEXT, 'last_hidden_state');
    report(t, out.penultimateHiddenState.data as Float32Array, g.f32('penultimate').data as Float32Array, TEXT, 'penultimate');
    report(t, out.pooled.data as Float32Array, g.f32('pooler_output').data as Float32Array, TEXT, 'pooler_output');
  });

  test(`${fixture}: U-Net forward (CFG batch of 2) equals diffusers`, async (t) => {
    const { model, params } = loadUNet(folder);
    const g = goldens(t, fixture, 'unet');
    const exec = new OrtExecutor(params);
    const context = g.f32('encoder_hidden_states');
    for (const [step, name] of [[999, 'out_t999'], [301, 'out_t301']] as const) {
      const out = await model.forward(exec, g.f32('sample'), timestep(step, 2), context);
      report(t, out.data as Float32Array, g.f32(name).data as Float32Array, UNET, `${name}`);
    }
    const odd = await model.forward(exec, g.f32('sample_odd'), timestep(500, 2), context);
    report(t, odd.data as Float32Array, g.f32('out_odd').data as Float32Array, UNET, 'out_odd (14×18 latent)');
  });

  test(`${fixture}: VAE encode and decode equal diffusers`, async (t) => {
    const { model, params } = loadVae(folder);
    const g = goldens(t, fixture, 'vae');
    const exec = new OrtExecutor(params);
    const { mean, std } = await model.encode(exec, g.f32('image'));
    report(t, mean.data as Float32Array, g.f32('latent_mean').data as Float32Array, VAE, 'latent mean');
    report(t, std.data as Float32Array, g.f32('latent_std').data as Float32Array, VAE, 'latent std');
    const decoded = await model.decode(exec, g.f32('latents'));
    report(t, decoded.data as Float32Array, g.f32('decoded').data as Float32Array, VAE, 'decoded image');
  });
}

test('cross-attention keys/values computed once per prompt give the same U-Net output (tiny-sd1)', async (t) => {
  const folder = readPipelineFolder(path.join(FIXTURES, 'tiny-sd1'));
  const { model, params } = loadUNet(folder);
  const g = goldens(t, 'tiny-sd1', 'unet');
  const exec = new OrtExecutor(params);
  const context = g.f32('encoder_hidden_states');
  const kv = await model.crossAttentionKV(exec, context);
  assert.equal(kv.size, model.crossAttentionLayers().length);
  const out = await model.forward(exec, g.f32('sample'), timestep(999, 2), context, undefined, kv);
  report(t, out.data as Float32Array, g.f32('out_t999').data as Float32Array, UNET, 'out_t999 with precomputed K/V');
});

test('precomputed K/V save exactly the to_k/to_v MACs per call: 2.95 G for SD 1.5 with CFG', async () => {
  const unet = new UNet2DConditionModel(parseUNetConfig(PRESETS.sd15.unet, 'sd15'));
  const count = async (withKV: boolean) => {
    const dry = new DryExecutor();
    const context = shaped([2, 77, 768]);
    const kv = withKV ? await unet.crossAttentionKV(new DryExecutor(), context) : undefined;
    await unet.forward(dry, shaped([2, 4, 64, 64]), shaped([2]), context, undefined, kv);
    return dry.calls.reduce((n, c) => n + fullMacs(c.macs), 0);
  };
  const saved = (await count(false)) - (await count(true));
  const channels = unet.crossAttentionLayers().reduce((n, l) => n + l.channels, 0);
  assert.equal(unet.crossAttentionLayers().length, 16);
  assert.equal(saved, 2 * 2 * 77 * 768 * channels);
  assert.equal(saved, 2_952_069_120);
});
