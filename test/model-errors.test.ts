/**
 * Bad model folders: each mistake gives one InputError naming the file (and key or tensor) with
 * what was expected and what was found. Every case works on a copy of test/fixtures/tiny-sd1.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { loadTextEncoder, loadUNet, loadVae } from '../src/models/components.ts';
import { DryExecutor } from '../src/runtime/dry-executor.ts';
import { shaped } from '../src/runtime/executor.ts';
import { OrtExecutor } from '../src/runtime/ort-executor.ts';
import { readPipelineFolder } from '../src/weights/diffusers-folder.ts';
import { SafetensorsFile } from '../src/weights/safetensors.ts';
import { writeSafetensors, type TensorToWrite, type WritableDType } from '../src/weights/safetensors-write.ts';
import { assertClose } from './helpers/compare.ts';
import { tempDir, throwsInputError, writeJson, rejectsInputError } from './helpers/files.ts';

const FIXTURES = path.join(import.meta.dirname, 'fixtures');
const TINY_SD1 = path.join(FIXTURES, 'tiny-sd1');

type Component = 'unet' | 'vae' | 'text_encoder';

/** A copy of tiny-sd1 holding model_index.json and only the components named. */
function copyFixture(t: Parameters<typeof tempDir>[0], components: Component[]): string {
  const dir = tempDir(t);
  fs.copyFileSync(path.join(TINY_SD1, 'model_index.json'), path.join(dir, 'model_index.json'));
  for (const c of components) fs.cpSync(path.join(TINY_SD1, c), path.join(dir, c), { recursive: true });
  return dir;
}

function readJson(file: string): Record<string, unknown> {
  return JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
}

/** Overwrites keys of a component's config.json; returns the config file's path. */
function patchConfig(dir: string, component: Component, patch: Record<string, unknown>): string {
  const file = path.join(dir, component, 'config.json');
  writeJson(file, { ...readJson(file), ...patch });
  return file;
}

/** throwsInputError, plus: the message is one line. */
function oneInputError(fn: () => unknown, ...fragments: string[]): string {
  const message = throwsInputError(fn, ...fragments);
  assert.ok(!message.includes('\n'), `message is not one line: ${message}`);
  return message;
}


/** Rewrites a safetensors file through `edit` (name → tensor), keeping dtypes and shapes. */
function rewriteSafetensors(file: string, edit: (tensors: Record<string, TensorToWrite>) => Record<string, TensorToWrite>): void {
  const src = SafetensorsFile.open(file);
  const tensors: Record<string, TensorToWrite> = {};
  try {
    for (const [name, info] of src.tensors) {
      tensors[name] = { dtype: info.dtype as WritableDType, shape: info.shape, data: src.readRaw(name) };
    }
  } finally {
    src.close();
  }
  writeSafetensors(file, edit(tensors));
}

/** One dry U-Net forward at an 8×8 latent, batch 1 (builds every segment's graph, checking each weight). */
async function dryUNetForward(dir: string, contextDim: number): Promise<void> {
  const { model, params, weights } = loadUNet(readPipelineFolder(dir));
  try {
    await model.forward(new DryExecutor(params), shaped([1, 4, 8, 8]), shaped([1]), shaped([1, 77, contextDim]));
  } finally {
    weights.close();
  }
}

test('model_index.json listing unet as UNet3DConditionModel: unsupported component class', (t) => {
  const dir = copyFixture(t, ['unet']);
  const index = readJson(path.join(dir, 'model_index.json'));
  writeJson(path.join(dir, 'model_index.json'), { ...index, unet: ['diffusers', 'UNet3DConditionModel'] });
  const folder = readPipelineFolder(dir);
  oneInputError(() => loadUNet(folder),
    `${path.join(dir, 'model_index.json')}: unet`, 'unsupported component class', 'expected UNet2DConditionModel',
    'found UNet3DConditionModel');
});

const unetConfigCases: { name: string; patch: Record<string, unknown>; fragments: string[] }[] = [
  {
    name: 'block_out_channels not a list of integers',
    patch: { block_out_channels: 'abc' },
    fragments: ['block_out_channels', 'wrong value', 'integers', 'found "abc"'],
  },
  {
    name: 'layers_per_block not an integer',
    patch: { layers_per_block: 2.5 },
    fragments: ['layers_per_block', 'wrong value', 'expected a positive integer', 'found 2.5'],
  },
  {
    name: 'down_block_types of the wrong length',
    patch: { down_block_types: ['CrossAttnDownBlock2D', 'DownBlock2D'] },
    fragments: ['down_block_types', 'wrong number of blocks', 'expected 3', 'found 2'],
  },
  {
    name: 'an unsupported down block type',
    patch: { down_block_types: ['SimpleCrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'DownBlock2D'] },
    fragments: ['down_block_types', 'unsupported block type', 'CrossAttnDownBlock2D or DownBlock2D', 'found SimpleCrossAttnDownBlock2D'],
  },
  {
    name: 'addition_embed_type "image" (Kandinsky-style) refused',
    patch: { addition_embed_type: 'image' },
    fragments: ['addition_embed_type', 'unsupported option', 'expected null or "text_time"', 'found "image"'],
  },
];

for (const c of unetConfigCases) {
  test(`unet config.json with ${c.name}: InputError naming config.json: key`, (t) => {
    const dir = copyFixture(t, ['unet']);
    const configFile = patchConfig(dir, 'unet', c.patch);
    const key = Object.keys(c.patch)[0];
    const folder = readPipelineFolder(dir);
    oneInputError(() => loadUNet(folder), `${configFile}: ${key}`, ...c.fragments);
  });
}

test('unet cross_attention_dim 48 against 32-wide weights: error when the graph is built, naming file, tensor and shapes', async (t) => {
  const dir = copyFixture(t, ['unet']);
  const configFile = patchConfig(dir, 'unet', { cross_attention_dim: 48 });
  const weightsFile = path.join(dir, 'unet', 'diffusion_pytorch_model.safetensors');
  // The config alone is valid: loading succeeds and the weights are checked as graphs are built.
  const loaded = loadUNet(readPipelineFolder(dir));
  loaded.weights.close();
  await rejectsInputError(() => dryUNetForward(dir, 48),
    `${weightsFile}: down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight`,
    `shape disagrees with ${configFile}`, 'expected [32, 48]', 'found [32, 32]');
});

test('text_encoder config.json hidden_act "relu": names the key and the allowed values', (t) => {
  const dir = copyFixture(t, ['text_encoder']);
  const configFile = patchConfig(dir, 'text_encoder', { hidden_act: 'relu' });
  const folder = readPipelineFolder(dir);
  oneInputError(() => loadTextEncoder(folder),
    `${configFile}: hidden_act`, 'wrong value', '"quick_gelu"', '"gelu"', 'found "relu"');
});

test('vae folder without its weights file: names the vae folder and the file names looked for', (t) => {
  const dir = copyFixture(t, ['vae']);
  fs.rmSync(path.join(dir, 'vae', 'diffusion_pytorch_model.safetensors'));
  const folder = readPipelineFolder(dir);
  oneInputError(() => loadVae(folder),
    `${path.join(dir, 'vae')}: no safetensors weights`, 'diffusion_pytorch_model.safetensors', 'found config.json');
});

test('a tensor missing from the unet weights: names the tensor and says missing', async (t) => {
  const dir = copyFixture(t, ['unet']);
  const missing = 'mid_block.attentions.0.transformer_blocks.0.attn2.to_v.weight';
  const weightsFile = path.join(dir, 'unet', 'diffusion_pytorch_model.safetensors');
  rewriteSafetensors(weightsFile, (tensors) => {
    assert.ok(missing in tensors, `fixture has ${missing}`);
    const { [missing]: _dropped, ...rest } = tensors;
    return rest;
  });
  const check = SafetensorsFile.open(weightsFile);
  assert.equal(check.tensors.has(missing), false);
  check.close();
  const message = await rejectsInputError(() => dryUNetForward(dir, 32),
    path.join(dir, 'unet'), `tensor "${missing}" is missing`, 'expected a weight of shape',
    `${path.join(dir, 'unet', 'config.json')} implies`);
  assert.match(message, /shape \[64, ?32\]/);
});

test('transformers 4.x text encoder (keys under text_model.) loads and matches the fixture', async (t) => {
  const dir = copyFixture(t, ['text_encoder']);
  const weightsFile = path.join(dir, 'text_encoder', 'model.safetensors');
  rewriteSafetensors(weightsFile, (tensors) => {
    const out: Record<string, TensorToWrite> = {};
    for (const [name, tensor] of Object.entries(tensors)) out[`text_model.${name}`] = tensor;
    // transformers 4.x also saved the position_ids buffer; it is not a parameter.
    const ids = BigInt64Array.from({ length: 77 }, (_, i) => BigInt(i));
    out['text_model.embeddings.position_ids'] = { dtype: 'I64', shape: [1, 77], data: ids };
    return out;
  });
  const check = SafetensorsFile.open(weightsFile);
  assert.ok([...check.tensors.keys()].every((k) => k.startsWith('text_model.')));
  check.close();

  const golden = SafetensorsFile.open(path.join(FIXTURES, 'goldens', 'tiny-sd1-text_encoder.safetensors'));
  t.after(() => golden.close());
  const idsInfo = golden.tensors.get('input_ids')!;
  const raw = golden.readRaw('input_ids');
  const inputIds = new ort.Tensor('int64', new BigInt64Array(raw.buffer, raw.byteOffset, raw.byteLength / 8), idsInfo.shape);
  const expected = golden.readFloat32('last_hidden_state');

  const run = async (folderDir: string): Promise<Float32Array> => {
    const { model, params, weights } = loadTextEncoder(readPipelineFolder(folderDir));
    const exec = new OrtExecutor(params, { threads: 1 });
    try {
      const out = await model.forward(exec, inputIds);
      return out.lastHiddenState.data as Float32Array;
    } finally {
      await exec.release();
      weights.close();
    }
  };
  const prefixed = await run(dir);
  const original = await run(TINY_SD1);
  assert.equal(prefixed.length, expected.length);
  assertClose(prefixed, original, 1e-6, 'last_hidden_state, text_model. keys vs fixture');
  assertClose(prefixed, expected, 1e-4, 'last_hidden_state, text_model. keys vs transformers');
});

// Configs whose problem only shows as an impossible shape: refused at parse time, naming the key.
const inconsistentConfigs: { name: string; component: Component; patch: Record<string, unknown> }[] = [
  { name: 'unet norm_num_groups 7 (does not divide 32 channels)', component: 'unet', patch: { norm_num_groups: 7 } },
  { name: 'unet attention_head_dim 5 (does not divide 32 channels)', component: 'unet', patch: { attention_head_dim: 5 } },
  { name: 'unet block_out_channels 320 (an integer, not a list)', component: 'unet', patch: { block_out_channels: 320 } },
  { name: 'text_encoder num_attention_heads 5 (does not divide hidden_size 32)', component: 'text_encoder', patch: { num_attention_heads: 5 } },
];

for (const c of inconsistentConfigs) {
  test(`${c.name}: InputError naming config.json: key`, async (t) => {
    const dir = copyFixture(t, [c.component]);
    const configFile = patchConfig(dir, c.component, c.patch);
    const key = Object.keys(c.patch)[0];
    await rejectsInputError(async () => {
      const folder = readPipelineFolder(dir);
      if (c.component === 'unet') {
        await dryUNetForward(dir, 32);
      } else {
        const { model, params, weights } = loadTextEncoder(folder);
        try {
          await model.forward(new DryExecutor(params), shaped([1, 77], 'int64'));
        } finally {
          weights.close();
        }
      }
    }, `${configFile}: ${key}`);
  });
}
