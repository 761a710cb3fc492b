/**
 * `diffuse inspect` as a function: MAC and parameter counts of the built-in presets against
 * published figures, and the report on a real (tiny) pipeline folder.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { inspect, type InspectOptions } from '../src/cli/inspect.ts';
import { SafetensorsFile } from '../src/weights/safetensors.ts';
import { rejectsInputError } from './helpers/files.ts';

const TINY_SD1 = path.join(import.meta.dirname, 'fixtures', 'tiny-sd1');

interface JsonModel {
  component: string;
  className: string;
  parameters: number;
  dtypes: Record<string, number>;
  segments: { name: string; parameters: number }[];
  macs: { conv: number; linear: number; attention: number };
  macsFull: number;
  macsCalflops: number;
}

interface JsonReport {
  source: string;
  pipeline: string;
  components?: Record<string, unknown>;
  size: { width: number; height: number; batch: number };
  models: JsonModel[];
}

const options = (o: Partial<InspectOptions>): InspectOptions => ({ width: 512, height: 512, batch: 1, json: false, ...o });

async function inspectJson(dir: string | undefined, o: Partial<InspectOptions>): Promise<JsonReport> {
  return JSON.parse(await inspect(dir, options({ ...o, json: true }))) as JsonReport;
}

function model(report: JsonReport, component: string): JsonModel {
  const m = report.models.find((r) => r.component === component);
  assert.ok(m, `report has ${component}`);
  return m;
}

function assertWithin(actual: number, expected: number, relative: number, what: string): void {
  const err = Math.abs(actual - expected) / expected;
  assert.ok(err <= relative, `${what}: ${actual} is ${(err * 100).toFixed(3)}% from ${expected} (allowed ${relative * 100}%)`);
}


test('sd15 at 512×512, batch 1: U-Net MACs like calflops within 0.1% of 338.76 G; 859,520,964 parameters', async () => {
  const report = await inspectJson(undefined, { preset: 'sd15', width: 512, height: 512, batch: 1 });
  assert.deepEqual(report.size, { width: 512, height: 512, batch: 1 });
  const unet = model(report, 'unet');
  // The TGATE paper: SD 1.5 at 16.938 T MACs for 25 steps with CFG, i.e. 50 batch-1 U-Net evaluations.
  assertWithin(unet.macsCalflops, 16.938e12 / 25 / 2, 0.001, 'sd15 U-Net calflops MACs');
  assert.equal(unet.parameters, 859_520_964);
  assert.equal(unet.macsCalflops, unet.macs.conv + unet.macs.linear);
  assert.equal(unet.macsFull, unet.macs.conv + unet.macs.linear + unet.macs.attention);
});

test('sd21 at 768×768, batch 1: U-Net MACs like calflops within 0.1% of 760.82 G', async () => {
  const report = await inspectJson(undefined, { preset: 'sd21', width: 768, height: 768, batch: 1 });
  // The TGATE paper: SD 2.1 at 38.041 T MACs, i.e. 760.82 G per batch-1 U-Net evaluation (/ 50).
  assertWithin(model(report, 'unet').macsCalflops, 38.041e12 / 50, 0.001, 'sd21 U-Net calflops MACs');
});

test('sd15: full count exceeds the calflops count, scales with batch, segment names follow diffusers', async () => {
  const one = await inspectJson(undefined, { preset: 'sd15' });
  const two = await inspectJson(undefined, { preset: 'sd15', batch: 2 });
  const unet = model(one, 'unet');
  assert.ok(unet.macs.attention > 0, 'attention core counted');
  assert.ok(unet.macsFull > unet.macsCalflops, `full ${unet.macsFull} > calflops ${unet.macsCalflops}`);
  assert.equal(model(two, 'unet').macsFull, 2 * unet.macsFull);
  assert.equal(model(two, 'unet').parameters, unet.parameters);
  const names = unet.segments.map((s) => s.name);
  for (const name of ['conv_in', 'time_embedding', 'down_blocks.1.attentions.0.transformer_blocks.0.attn2',
    'mid_block.resnets.1', 'up_blocks.3.attentions.2.proj_out', 'conv_out']) {
    assert.ok(names.includes(name), `segment ${name}`);
  }
  assert.equal(new Set(names).size, names.length, 'segment names are unique');
  for (const c of ['vae', 'text_encoder']) assert.ok(model(one, c).macsFull > 0, `${c} counted`);
  assert.equal(model(one, 'text_encoder').parameters, 123_060_480, 'CLIP ViT-L/14 text model parameters');
});

test('sd15 text output: both U-Net totals, the per-segment table and every component', async () => {
  const json = model(await inspectJson(undefined, { preset: 'sd15' }), 'unet');
  const text = await inspect(undefined, options({ preset: 'sd15' }));
  const giga = (n: number) => (n / 1e9).toFixed(3);
  assert.match(text, /^preset sd15: Stable Diffusion 1\.5/);
  assert.ok(text.includes(`total unet: ${giga(json.macsCalflops)} GMACs counted like calflops, ${giga(json.macsFull)} GMACs full`),
    'U-Net totals line');
  assert.ok(text.includes('down_blocks.1.attentions.0.transformer_blocks.0.attn2'));
  assert.ok(text.includes('mid_block.resnets.1'));
  assert.ok(text.includes('segments at sample [1, 4, 64, 64]'));
  assert.ok(text.includes('parameters: 859.52M used'));
  for (const c of ['vae', 'text_encoder']) assert.match(text, new RegExp(`total ${c}: [\\d.]+ GMACs counted like calflops, [\\d.]+ GMACs full`));
});

test('tiny-sd1 folder: components, F32 dtype counts, segment list', async () => {
  const report = await inspectJson(TINY_SD1, { width: 64, height: 64 });
  assert.equal(report.pipeline, 'StableDiffusionPipeline');
  assert.equal(report.source, TINY_SD1);
  assert.deepEqual(Object.keys(report.components ?? {}).sort(),
    ['feature_extractor', 'image_encoder', 'safety_checker', 'scheduler', 'text_encoder', 'tokenizer', 'unet', 'vae']);
  assert.deepEqual(report.models.map((m) => m.component), ['unet', 'vae', 'text_encoder']);
  const weightFiles: Record<string, string> = {
    unet: 'unet/diffusion_pytorch_model.safetensors',
    vae: 'vae/diffusion_pytorch_model.safetensors',
    text_encoder: 'text_encoder/model.safetensors',
  };
  for (const [component, file] of Object.entries(weightFiles)) {
    const st = SafetensorsFile.open(path.join(TINY_SD1, file));
    let stored = 0;
    for (const info of st.tensors.values()) stored += info.shape.reduce((a, b) => a * b, 1);
    st.close();
    const m = model(report, component);
    assert.deepEqual(m.dtypes, { F32: stored }, `${component} dtype counts`);
    assert.equal(m.parameters, stored, `${component}: every stored weight is used`);
    assert.equal(m.segments.reduce((n, s) => n + s.parameters, 0), m.parameters);
  }
  const unet = model(report, 'unet');
  assert.equal(unet.segments[0].name, 'conv_in');
  assert.equal(unet.segments[unet.segments.length - 1].name, 'conv_out');
  assert.ok(unet.segments.some((s) => s.name === 'down_blocks.1.attentions.0.transformer_blocks.0.attn2'));
  assert.deepEqual(model(report, 'vae').segments.map((s) => s.name), ['encoder', 'decoder']);
  assert.deepEqual(model(report, 'text_encoder').segments.map((s) => s.name), ['text_model']);

  const text = await inspect(TINY_SD1, options({ width: 64, height: 64 }));
  assert.ok(text.startsWith(`StableDiffusionPipeline at ${TINY_SD1} (diffusers 0.40.0)`));
  assert.match(text, /^ {2}unet +diffusers\.UNet2DConditionModel {2}unet\/$/m);
  assert.match(text, /^ {2}text_encoder +transformers\.CLIPTextModel {2}text_encoder\/$/m);
  assert.match(text, /^ {2}safety_checker +\(absent\)$/m);
  assert.ok(text.includes(`== unet: UNet2DConditionModel  (${path.join(TINY_SD1, 'unet', 'config.json')})`));
  assert.match(text, /parameters: [\d.]+M used; stored F32 [\d.]+M/);
  assert.ok(text.includes('segments at sample [1, 4, 8, 8]'));
  assert.match(text, /^ {2}mid_block\.resnets\.1 +[\d.]+ +[\d.]+ +[\d.]+M {2}x\[1,64,2,2\]$/m);
  assert.match(text, /total unet: [\d.]+ GMACs counted like calflops, [\d.]+ GMACs full .* in 79 segments/);
});

test('--size not a multiple of 8: InputError naming --size', async () => {
  await rejectsInputError(() => inspect(TINY_SD1, options({ width: 100, height: 64 })), '--size', '8', 'found 100x64');
  await rejectsInputError(() => inspect(undefined, options({ preset: 'sd15', width: 512, height: 516 })), '--size', 'found 512x516');
});

test('an unknown preset: InputError naming --preset and the known ones', async () => {
  await rejectsInputError(() => inspect(undefined, options({ preset: 'sd3' })), '--preset', 'unknown preset', 'sd15', 'sd21', 'sdxl', 'found sd3');
});

test('no folder and no preset, or a folder that does not exist: InputError', async () => {
  await rejectsInputError(() => inspect(undefined, options({})), 'no model given', '--preset');
  const missing = path.join(import.meta.dirname, 'fixtures', 'no-such-model');
  await rejectsInputError(() => inspect(missing, options({})), missing, 'not found');
});

test('transformer presets: PixArt-α 1024 (0.61 B, 2140.6 G calflops per CFG-half call), T5-XXL (4.76 B), DiT-XL/2 256 (118.64 G, the DiT paper)', async () => {
  const alpha = await inspectJson(undefined, { preset: 'pixart-alpha-1024', width: undefined, height: undefined });
  assert.equal(alpha.pipeline, 'PixArtAlphaPipeline');
  assert.deepEqual(alpha.size, { width: 1024, height: 1024, batch: 1 });
  // The TGATE paper's 107.031 T over 25 CFG calls is 2140.62 G per image and call.
  assertWithin(model(alpha, 'transformer').macsCalflops, 107.031e12 / 50, 1e-3, 'PixArt-α transformer');
  assertWithin(model(alpha, 'transformer').parameters, 611e6, 1e-3, 'PixArt-α transformer parameters (paper: 0.6 B)');
  assertWithin(model(alpha, 'text_encoder').parameters, 4.762e9, 1e-3, 'T5-XXL encoder parameters');
  const dit = await inspectJson(undefined, { preset: 'dit-xl-2-256', width: undefined, height: undefined });
  // The DiT paper counts 118.64 GFLOPs for DiT-XL/2 at 256² (multiply-adds, attention core included).
  assertWithin(model(dit, 'transformer').macsFull, 118.64e9, 1e-3, 'DiT-XL/2 256');
  assert.equal(dit.models.length, 2, 'a DiT has no text encoder');
  await rejectsInputError(() => inspect(undefined, options({ preset: 'pixart-alpha-1024', width: 1000, height: 1000 })), '--size', 'multiples of 16');
});
