/**
 * SDXL's model components against diffusers/transformers on the tiny-sdxl fixture (goldens made by
 * tools/reference/make_sdxl_fixtures.py): both text encoders (the second with its projection), the
 * U-Net with text_time micro-conditioning; the sdxl preset's size; refusals of bad inputs.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { inspect } from '../src/cli/inspect.ts';
import { ClipTextModelWithProjection } from '../src/models/clip-text.ts';
import { loadTextEncoder, loadUNet } from '../src/models/components.ts';
import { DryExecutor } from '../src/runtime/dry-executor.ts';
import { shaped } from '../src/runtime/executor.ts';
import { OrtExecutor } from '../src/runtime/ort-executor.ts';
import { readPipelineFolder } from '../src/weights/diffusers-folder.ts';
import { COMPONENT_TOLERANCE, assertClose } from './helpers/compare.ts';
import { tempDir, writeJson, rejectsInputError } from './helpers/files.ts';
import { openGoldens } from './helpers/goldens.ts';

const FIXTURES = path.join(import.meta.dirname, 'fixtures');
const TINY_SDXL = path.join(FIXTURES, 'tiny-sdxl');
const TINY_SD1 = path.join(FIXTURES, 'tiny-sd1');

const goldens = (t: TestContext, part: string) => openGoldens(t, path.join(FIXTURES, 'goldens', `tiny-sdxl-${part}.safetensors`));

function report(t: TestContext, actual: ort.Tensor, expected: ort.Tensor, what: string, tolerance: number): void {
  assert.deepEqual(actual.dims, expected.dims, `${what} shape`);
  const err = assertClose(actual.data as Float32Array, expected.data as Float32Array, tolerance, what);
  t.diagnostic(`${what}: relative error ${err.toExponential(2)}`);
}

const timestep = (value: number, batch: number) => new ort.Tensor('float32', new Float32Array(batch).fill(value), [batch]);


test('tiny-sdxl text_encoder_2 (CLIPTextModelWithProjection, fp16 weights) equals transformers, text_embeds included', async (t) => {
  const { model, params, weights } = loadTextEncoder(readPipelineFolder(TINY_SDXL), 'text_encoder_2');
  t.after(() => weights.close());
  assert.ok(model instanceof ClipTextModelWithProjection);
  assert.equal(model.hasProjection, true);
  assert.equal(model.config.eosTokenId, 2, 'legacy eos id as the published SDXL config');
  const g = goldens(t, 'text_encoder_2');
  const exec = new OrtExecutor(params);
  t.after(() => exec.release());
  const out = await model.forward(exec, g.i64('input_ids'));
  report(t, out.penultimateHiddenState, g.f32('penultimate'), 'penultimate (hidden_states[-2])', COMPONENT_TOLERANCE.textEncoder);
  report(t, out.lastHiddenState, g.f32('last_hidden_state'), 'last_hidden_state', COMPONENT_TOLERANCE.textEncoder);
  report(t, out.pooled, g.f32('pooler_output'), 'pooled', COMPONENT_TOLERANCE.textEncoder);
  report(t, out.textEmbeds, g.f32('text_embeds'), 'text_embeds', COMPONENT_TOLERANCE.textEncoder);
});

test('tiny-sdxl text_encoder (CLIPTextModel, fp16 weights) equals transformers; it has no projection', async (t) => {
  const { model, params, weights } = loadTextEncoder(readPipelineFolder(TINY_SDXL));
  t.after(() => weights.close());
  assert.equal(model.hasProjection, false);
  const g = goldens(t, 'text_encoder');
  const exec = new OrtExecutor(params);
  t.after(() => exec.release());
  const out = await model.forward(exec, g.i64('input_ids'));
  assert.equal(out.textEmbeds, undefined);
  report(t, out.penultimateHiddenState, g.f32('penultimate'), 'penultimate (hidden_states[-2])', COMPONENT_TOLERANCE.textEncoder);
  report(t, out.lastHiddenState, g.f32('last_hidden_state'), 'last_hidden_state', COMPONENT_TOLERANCE.textEncoder);
  report(t, out.pooled, g.f32('pooler_output'), 'pooled', COMPONENT_TOLERANCE.textEncoder);
});

test('tiny-sdxl U-Net forward (CFG batch of 2, text_embeds + time_ids) equals diffusers', async (t) => {
  const { model, params, weights } = loadUNet(readPipelineFolder(TINY_SDXL));
  t.after(() => weights.close());
  assert.deepEqual(model.config.addition, { type: 'text_time', timeEmbedDim: 8, inputDim: 80 });
  assert.deepEqual(model.config.transformerLayersPerBlock, [1, 2, 3]);
  assert.deepEqual(model.addedConditioningShapes(2, 32), { textEmbeds: [2, 32], timeIds: [2, 6] });
  const g = goldens(t, 'unet');
  const exec = new OrtExecutor(params);
  t.after(() => exec.release());
  const context = g.f32('encoder_hidden_states');
  const added = { textEmbeds: g.f32('text_embeds'), timeIds: g.f32('time_ids') };
  for (const [step, name] of [[999, 'out_t999'], [301, 'out_t301']] as const) {
    report(t, await model.forward(exec, g.f32('sample'), timestep(step, 2), context, added), g.f32(name), name, COMPONENT_TOLERANCE.unet);
  }
  const odd = await model.forward(exec, g.f32('sample_odd'), timestep(500, 2), context, added);
  report(t, odd, g.f32('out_odd'), 'out_odd (14×18 latent)', COMPONENT_TOLERANCE.unet);
});

test('tiny-sdxl U-Net segments: add_embedding after time_embedding, no attention at level 0, several transformer blocks', async (t) => {
  const { model, params, weights } = loadUNet(readPipelineFolder(TINY_SDXL));
  t.after(() => weights.close());
  const exec = new DryExecutor(params);
  const added = { textEmbeds: shaped([1, 32]), timeIds: shaped([1, 6]) };
  await model.forward(exec, shaped([1, 4, 16, 16]), shaped([1]), shaped([1, 77, 64]), added);
  const names = exec.calls.map((c) => c.name);
  assert.deepEqual(names.slice(0, 3), ['conv_in', 'time_embedding', 'add_embedding']);
  const addEmbedding = exec.calls[2];
  // linear_1 (80 → 64) and linear_2 (64 → 64), batch 1, counted as linear MACs.
  assert.deepEqual(addEmbedding.macs, { conv: 0, linear: 80 * 64 + 64 * 64, attention: 0 });
  assert.equal(addEmbedding.parameters, 80 * 64 + 64 + 64 * 64 + 64);
  assert.ok(!names.some((n) => n.startsWith('down_blocks.0.attentions')), 'DownBlock2D first');
  for (const n of ['down_blocks.1.attentions.1.transformer_blocks.1.ff', 'down_blocks.2.attentions.0.transformer_blocks.2.attn2',
    'mid_block.attentions.0.transformer_blocks.2.attn1', 'up_blocks.0.attentions.2.transformer_blocks.2.ff',
    'up_blocks.1.attentions.2.transformer_blocks.1.attn2']) {
    assert.ok(names.includes(n), `segment ${n}`);
  }
  assert.ok(!names.includes('up_blocks.1.attentions.0.transformer_blocks.2.attn1'), 'up block 1 has 2 transformer blocks');
  assert.ok(!names.some((n) => n.startsWith('up_blocks.2.attentions')), 'UpBlock2D last');
  // Every stored weight is used.
  const used = exec.calls.reduce((n, c) => n + c.parameters, 0);
  let stored = 0;
  for (const name of weights.names()) stored += weights.info(name).shape.reduce((a, b) => a * b, 1);
  assert.equal(used, stored);
});

test('text_time U-Net without added conditioning: InputError saying what is missing', async (t) => {
  const { model, params, weights } = loadUNet(readPipelineFolder(TINY_SDXL));
  t.after(() => weights.close());
  const run = (added?: { textEmbeds: ReturnType<typeof shaped>; timeIds: ReturnType<typeof shaped> }) =>
    model.forward(new DryExecutor(params), shaped([2, 4, 16, 16]), shaped([2]), shaped([2, 77, 64]), added);
  await rejectsInputError(() => run(), 'added', 'missing conditioning', 'text_time', 'textEmbeds', 'timeIds', 'found undefined');
  // Wrong batch, and a width that does not add up to projection_class_embeddings_input_dim.
  await rejectsInputError(() => run({ textEmbeds: shaped([1, 32]), timeIds: shaped([2, 6]) }), 'added.textEmbeds', 'float32 [2, N]', 'found float32 [1, 32]');
  await rejectsInputError(() => run({ textEmbeds: shaped([2, 32]), timeIds: shaped([2, 5]) }),
    'projection_class_embeddings_input_dim', 'expected 80', 'found 72');
});

test('SD 1.x U-Net given added conditioning: InputError (it takes none)', async (t) => {
  const { model, params, weights } = loadUNet(readPipelineFolder(TINY_SD1));
  t.after(() => weights.close());
  await rejectsInputError(() => model.forward(new DryExecutor(params), shaped([1, 4, 8, 8]), shaped([1]), shaped([1, 77, 32]),
    { textEmbeds: shaped([1, 32]), timeIds: shaped([1, 6]) }), 'added', 'takes no added conditioning', 'addition_embed_type');
});

/** A copy of tiny-sdxl's unet (and model_index.json) with config keys overwritten; returns [dir, config file]. */
function patchedUNet(t: TestContext, patch: Record<string, unknown>): [string, string] {
  const dir = tempDir(t);
  fs.copyFileSync(path.join(TINY_SDXL, 'model_index.json'), path.join(dir, 'model_index.json'));
  fs.cpSync(path.join(TINY_SDXL, 'unet'), path.join(dir, 'unet'), { recursive: true });
  const file = path.join(dir, 'unet', 'config.json');
  writeJson(file, { ...(JSON.parse(fs.readFileSync(file, 'utf8')) as object), ...patch });
  return [dir, file];
}

const badConfigs: { name: string; patch: Record<string, unknown>; key: string; fragments: string[] }[] = [
  {
    name: 'addition_embed_type "image"',
    patch: { addition_embed_type: 'image' },
    key: 'addition_embed_type',
    fragments: ['unsupported option', 'expected null or "text_time"', 'found "image"'],
  },
  {
    name: 'text_time without addition_time_embed_dim',
    patch: { addition_time_embed_dim: null },
    key: 'addition_time_embed_dim',
    fragments: ['missing required key', 'a positive integer'],
  },
  {
    name: 'text_time with an odd addition_time_embed_dim',
    patch: { addition_time_embed_dim: 7 },
    key: 'addition_time_embed_dim',
    fragments: ['an even width', 'found 7'],
  },
  {
    name: 'text_time without projection_class_embeddings_input_dim',
    patch: { projection_class_embeddings_input_dim: null },
    key: 'projection_class_embeddings_input_dim',
    fragments: ['missing required key'],
  },
];

for (const c of badConfigs) {
  test(`tiny-sdxl unet config.json with ${c.name}: InputError naming config.json: ${c.key}`, async (t) => {
    const [dir, file] = patchedUNet(t, c.patch);
    await rejectsInputError(async () => loadUNet(readPipelineFolder(dir)), `${file}: ${c.key}`, ...c.fragments);
  });
}

test('tiny-sdxl unet with projection_class_embeddings_input_dim 88 against 80-wide weights: names the tensor', async (t) => {
  const [dir, file] = patchedUNet(t, { projection_class_embeddings_input_dim: 88 });
  const { model, params, weights } = loadUNet(readPipelineFolder(dir));
  t.after(() => weights.close());
  await rejectsInputError(() => model.forward(new DryExecutor(params), shaped([1, 4, 8, 8]), shaped([1]), shaped([1, 77, 64]),
    { textEmbeds: shaped([1, 40]), timeIds: shaped([1, 6]) }),
  'add_embedding.linear_1.weight', `shape disagrees with ${file}`, 'expected [64, 88]', 'found [64, 80]');
});

test('sdxl preset at 1024², batch 1: U-Net 2,567,463,684 parameters, calflops MACs within 0.1% of 2988.8 G', async () => {
  const report = JSON.parse(await inspect(undefined, { preset: 'sdxl', width: 1024, height: 1024, batch: 1, json: true })) as {
    pipeline: string;
    models: { component: string; className: string; parameters: number; macsCalflops: number; segments: { name: string }[] }[];
  };
  assert.equal(report.pipeline, 'StableDiffusionXLPipeline');
  assert.deepEqual(report.models.map((m) => m.component), ['unet', 'vae', 'text_encoder', 'text_encoder_2']);
  const unet = report.models[0];
  assert.equal(unet.parameters, 2_567_463_684);
  // The TGATE paper: SD-XL at 149.438 T MACs for 25 steps with CFG, i.e. 50 batch-1 U-Net evaluations.
  const expected = 149.438e12 / 50;
  assert.ok(Math.abs(unet.macsCalflops - expected) / expected < 0.001, `${unet.macsCalflops} vs ${expected}`);
  assert.ok(unet.segments.some((s) => s.name === 'add_embedding'));
  const te2 = report.models[3];
  assert.equal(te2.className, 'CLIPTextModelWithProjection');
  assert.deepEqual(te2.segments.map((s) => s.name), ['text_model', 'text_projection']);
  assert.equal(te2.parameters, 694_659_840, 'OpenCLIP ViT-bigG/14 text model + projection');
  assert.equal(report.models[2].parameters, 123_060_480, 'CLIP ViT-L/14 text model');
});

test('inspect on the tiny-sdxl folder: every component, text_encoder_2 with its projection, all weights used', async () => {
  const report = JSON.parse(await inspect(TINY_SDXL, { width: 128, height: 128, batch: 1, json: true })) as {
    pipeline: string;
    models: { component: string; parameters: number; dtypes: Record<string, number> }[];
  };
  assert.equal(report.pipeline, 'StableDiffusionXLPipeline');
  assert.deepEqual(report.models.map((m) => m.component), ['unet', 'vae', 'text_encoder', 'text_encoder_2']);
  for (const m of report.models) {
    const stored = Object.values(m.dtypes).reduce((a, b) => a + b, 0);
    assert.equal(m.parameters, stored, `${m.component}: every stored weight is used`);
  }
  assert.deepEqual(Object.keys(report.models[3].dtypes), ['F16']);
});
