/**
 * The diffusion transformers and their text encoder against diffusers / transformers on tiny
 * seeded folders (goldens from tools/reference/make_dit_fixtures.py and make_pixart_fixtures.py).
 */
import { test } from 'node:test';
import * as path from 'node:path';
import assert from 'node:assert/strict';
import * as ort from 'onnxruntime-node';
import { DiTTransformer2DModel } from '../src/models/dit-transformer-2d.ts';
import { loadT5Encoder, loadTransformer } from '../src/models/components.ts';
import { PixArtTransformer2DModel } from '../src/models/pixart-transformer-2d.ts';
import { OrtExecutor } from '../src/runtime/ort-executor.ts';
import { readPipelineFolder } from '../src/weights/diffusers-folder.ts';
import { COMPONENT_TOLERANCE, assertClose } from './helpers/compare.ts';
import { openGoldens } from './helpers/goldens.ts';

const FIXTURES = path.join(import.meta.dirname, 'fixtures');
const GOLDENS = path.join(FIXTURES, 'goldens');

const float32 = (t: ort.Tensor) => new ort.Tensor('float32', Float32Array.from(t.data as BigInt64Array, Number), t.dims);

test('tiny-dit: DiT transformer (Transformer2DModel, ada_norm_zero) equals diffusers, two labels and two null classes', async (t) => {
  const { model, params, weights } = loadTransformer(readPipelineFolder(path.join(FIXTURES, 'tiny-dit')));
  t.after(() => weights.close());
  assert.ok(model instanceof DiTTransformer2DModel);
  const g = openGoldens(t, path.join(GOLDENS, 'dit', 'tiny-dit-transformer.safetensors'));
  const exec = new OrtExecutor(params);
  const out = await model.forward(exec, g.f32('hidden_states'), float32(g.i64('timestep')), g.i64('class_labels'));
  const err = assertClose(out.data as Float32Array, g.f32('out').data as Float32Array, COMPONENT_TOLERANCE.transformer, 'DiT out');
  t.diagnostic(`out: relative error ${err.toExponential(2)}`);
  await exec.release();
});

for (const fixture of ['tiny-pixart-alpha', 'tiny-pixart-sigma']) {
  test(`${fixture}: PixArt transformer equals diffusers (batch 2 with a padding mask; square and 24×40 latents)`, async (t) => {
    const folder = readPipelineFolder(path.join(FIXTURES, fixture));
    const { model, params, weights } = loadTransformer(folder);
    t.after(() => weights.close());
    assert.ok(model instanceof PixArtTransformer2DModel);
    const g = openGoldens(t, path.join(GOLDENS, 'pixart', `${fixture}-transformer.safetensors`));
    const exec = new OrtExecutor(params);
    const text = { states: g.f32('encoder_hidden_states'), mask: g.i64('encoder_attention_mask') };
    const sizes = (suffix: string) => (model.config.useAdditionalConditions
      ? { resolution: g.f32(`resolution${suffix}`), aspectRatio: g.f32(`aspect_ratio${suffix}`) } : undefined);
    const cases: [string, string, string][] = [['out', 'hidden_states', ''], ['out_nonsquare', 'hidden_states_nonsquare', '_nonsquare']];
    if (model.config.useAdditionalConditions) cases.push(['out_mixed', 'hidden_states', '_mixed']);
    for (const [out, input, suffix] of cases) {
      const result = await model.forward(exec, g.f32(input), g.f32('timestep'), text, sizes(suffix));
      const err = assertClose(result.data as Float32Array, g.f32(out).data as Float32Array, COMPONENT_TOLERANCE.transformer, `${fixture} ${out}`);
      t.diagnostic(`${out}: relative error ${err.toExponential(2)}`);
    }
    // Cross-attention keys and values computed once per prompt give the same output.
    const kv = await model.crossAttentionKV(exec, text.states, text.mask);
    const again = await model.forward(exec, g.f32('hidden_states'), g.f32('timestep'), { ...text, kv }, sizes(''));
    const err = assertClose(again.data as Float32Array, g.f32('out').data as Float32Array, COMPONENT_TOLERANCE.transformer, `${fixture} out with precomputed K/V`);
    t.diagnostic(`out with precomputed K/V: relative error ${err.toExponential(2)}`);
    await exec.release();
  });

  test(`${fixture}: T5 encoder equals transformers (one prompt filling 120 tokens, one padded)`, async (t) => {
    const folder = readPipelineFolder(path.join(FIXTURES, fixture));
    const { model, params, weights } = loadT5Encoder(folder);
    t.after(() => weights.close());
    const g = openGoldens(t, path.join(GOLDENS, 'pixart', `${fixture}-text_encoder.safetensors`));
    const exec = new OrtExecutor(params);
    const out = await model.forward(exec, g.i64('input_ids'), g.i64('attention_mask'));
    const err = assertClose(out.data as Float32Array, g.f32('last_hidden_state').data as Float32Array, COMPONENT_TOLERANCE.textEncoder, `${fixture} T5`);
    t.diagnostic(`last_hidden_state: relative error ${err.toExponential(2)}`);
    await exec.release();
  });
}
