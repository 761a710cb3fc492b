/**
 * The diffusion transformers and their text encoder against diffusers / transformers on tiny
 * seeded folders (goldens from tools/reference/make_dit_fixtures.py and make_pixart_fixtures.py).
 */
import { test } from 'node:test';
import * as fs from 'node:fs';
import * as path from 'node:path';
import assert from 'node:assert/strict';
import * as ort from 'onnxruntime-node';
import { DiTTransformer2DModel, parseDiTConfig } from '../src/models/dit-transformer-2d.ts';
import { parseOfficialDiTConfig } from '../src/models/official-dit.ts';
import { loadT5Encoder, loadTransformer } from '../src/models/components.ts';
import { PixArtTransformer2DModel } from '../src/models/pixart-transformer-2d.ts';
import { parseT5EncoderConfig, relativePositionBucket } from '../src/models/t5-encoder.ts';
import { loadPixArtPipeline } from '../src/pipelines/pixart.ts';
import { OrtExecutor, retainSessionsFor } from '../src/runtime/ort-executor.ts';
import { readPipelineFolder } from '../src/weights/diffusers-folder.ts';
import { COMPONENT_TOLERANCE, assertClose } from './helpers/compare.ts';
import { tempDir, throwsInputError, writeJson } from './helpers/files.ts';
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
    assert.ok(exec.openSessions > 0);
    await exec.release();

    // Released after each block (as T5-XXL runs on a 24 GiB machine): the same states, no session left open.
    const transient = new OrtExecutor(params, {}, { retainSessions: false });
    const again = await model.forward(transient, g.i64('input_ids'), g.i64('attention_mask'));
    assert.deepEqual(again.data, out.data);
    assert.equal(transient.openSessions, 0);
  });
}

test('T5 relative-position buckets equal transformers for other bucket counts and distances, odd counts included', () => {
  const golden = JSON.parse(fs.readFileSync(path.join(GOLDENS, 't5', 'relative-buckets.json'), 'utf8')) as
    { range: number; cases: { num_buckets: number; max_distance: number; buckets: number[] }[] };
  for (const c of golden.cases) {
    const ours = c.buckets.map((_, i) => relativePositionBucket(i - golden.range, c.num_buckets, c.max_distance));
    assert.deepEqual(ours, c.buckets, `${c.num_buckets} buckets, max distance ${c.max_distance}`);
  }
});

test('bad input: T5 configs whose buckets have no exact distances, or a max distance inside them, are refused by field', () => {
  const where = 'text_encoder/config.json';
  throwsInputError(() => parseT5EncoderConfig({ relative_attention_num_buckets: 3 }, where), `${where}: relative_attention_num_buckets`, 'from 4 to 4096', 'found 3');
  throwsInputError(() => parseT5EncoderConfig({ relative_attention_num_buckets: 32, relative_attention_max_distance: 8 }, where),
    `${where}: relative_attention_max_distance`, 'above the 8 exact distances of 32 buckets', 'found 8');
});

test('bad input: DiT configs without a sin-cos position table (inner width not a multiple of 4, a grid too large to hold one) are refused by field', () => {
  const where = 'transformer/config.json';
  throwsInputError(() => parseDiTConfig({ num_attention_heads: 7, attention_head_dim: 3 }, where, false),
    `${where}: num_attention_heads × attention_head_dim`, 'no 2-D sin-cos position table of this width', 'a multiple of 4', 'found 21');
  throwsInputError(() => parseDiTConfig({ sample_size: 1000, patch_size: 1 }, where, false),
    `${where}: sample_size`, 'a 1000×1000 grid of patches', 'found 1000 with patch_size 1');
  throwsInputError(() => parseOfficialDiTConfig({ _class_name: 'DiT', hidden_size: 18, num_heads: 3 }, 'model.pt'), 'model.pt: hidden_size', 'a multiple of 4', 'found 18');
});

test('session policy: a component is kept in memory up to a quarter of the machine\'s', () => {
  const GIB = 2 ** 30;
  assert.equal(retainSessionsFor(2.4 * GIB, 24 * GIB), true); // PixArt's transformer
  assert.equal(retainSessionsFor(17.7 * GIB, 24 * GIB), false); // T5-XXL as float32
  assert.equal(retainSessionsFor(6 * GIB, 24 * GIB), true);
  assert.equal(retainSessionsFor(6 * GIB + 1, 24 * GIB), false);
});

test('bad input: an unknown Transformer2DModel norm_type, caption_channels against the T5 width, a sample size the patch does not divide', (t) => {
  const dir = tempDir(t);
  fs.cpSync(path.join(FIXTURES, 'tiny-pixart-alpha'), dir, { recursive: true });
  const configFile = path.join(dir, 'transformer', 'config.json');
  const config = JSON.parse(fs.readFileSync(configFile, 'utf8'));
  const edit = (changes: Record<string, unknown>) => writeJson(configFile, { ...config, ...changes });
  // As the Hub's PixArt-α folder names it: diffusers' older class, told apart by norm_type.
  const indexFile = path.join(dir, 'model_index.json');
  const index = JSON.parse(fs.readFileSync(indexFile, 'utf8'));
  writeJson(indexFile, { ...index, transformer: ['diffusers', 'Transformer2DModel'] });
  edit({ _class_name: 'Transformer2DModel', norm_type: 'layer_norm' });
  throwsInputError(() => loadTransformer(readPipelineFolder(dir)), 'transformer/config.json: norm_type', 'unsupported Transformer2DModel',
    '"ada_norm_single" (PixArt) or "ada_norm_zero" (DiT)', 'found "layer_norm"');
  edit({ caption_channels: 64 });
  throwsInputError(() => loadPixArtPipeline(readPipelineFolder(dir)), 'transformer/config.json: caption_channels', "disagrees with the text encoder's d_model",
    'expected 32', 'found 64');
  edit({ sample_size: 33 });
  throwsInputError(() => loadTransformer(readPipelineFolder(dir)), 'transformer/config.json: sample_size', 'not divisible by patch_size 2');
  edit({ norm_type: 'ada_norm_zero', cross_attention_dim: null, caption_channels: null });
  throwsInputError(() => loadPixArtPipeline(readPipelineFolder(dir)), 'transformer/config.json: norm_type', 'a PixArtAlphaPipeline needs a PixArt transformer',
    'found a DiT (ada_norm_zero)');
});
