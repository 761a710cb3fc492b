import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  cfgBool, cfgInt, cfgIntList, cfgIntOrIntList, cfgNumber, cfgNumberList, cfgOneOf, cfgOptionalInt, cfgOptionalString,
  cfgString, cfgStringList, readJsonFile, readJsonObject, parsePythonJson,
} from '../src/weights/config.ts';
import {
  openComponentWeights, openShardedWeights, readComponentConfig, readPipelineFolder, WeightSet,
} from '../src/weights/diffusers-folder.ts';
import { float32ToFloat16 } from '../src/graph/half.ts';
import { writeSafetensors, type TensorToWrite } from '../src/weights/safetensors-write.ts';
import { tempDir, throwsInputError, writeJson } from './helpers/files.ts';

const f32 = (...v: number[]) => new Float32Array(v);
const tensor = (...v: number[]): TensorToWrite => ({ dtype: 'F32', shape: [v.length], data: f32(...v) });
const half = (...v: number[]): TensorToWrite => ({ dtype: 'F16', shape: [v.length], data: float32ToFloat16(f32(...v)) });

function write(file: string, tensors: Record<string, TensorToWrite>): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  writeSafetensors(file, tensors);
}

function open(t: TestContext, dir: string, variant?: string): WeightSet {
  const set = openComponentWeights(dir, variant === undefined ? {} : { variant });
  t.after(() => set.close());
  return set;
}

/** A small SD-like pipeline folder. */
function makePipeline(t: TestContext): string {
  const dir = tempDir(t);
  writeJson(path.join(dir, 'model_index.json'), {
    _class_name: 'StableDiffusionPipeline',
    _diffusers_version: '0.30.0',
    _name_or_path: 'some/model',
    unet: ['diffusers', 'UNet2DConditionModel'],
    vae: ['diffusers', 'AutoencoderKL'],
    text_encoder: ['transformers', 'CLIPTextModel'],
    tokenizer: ['transformers', 'CLIPTokenizer'],
    scheduler: ['diffusers', 'PNDMScheduler'],
    safety_checker: [null, null],
    feature_extractor: ['transformers', 'CLIPImageProcessor'],
    requires_safety_checker: false,
    image_encoder: [null, null],
  });
  writeJson(path.join(dir, 'unet', 'config.json'), { _class_name: 'UNet2DConditionModel', in_channels: 4 });
  writeJson(path.join(dir, 'scheduler', 'scheduler_config.json'), { _class_name: 'PNDMScheduler', beta_start: 0.00085 });
  writeJson(path.join(dir, 'tokenizer', 'tokenizer_config.json'), { model_max_length: 77 });
  write(path.join(dir, 'unet', 'diffusion_pytorch_model.safetensors'), { 'conv_in.weight': tensor(1, 2) });
  write(path.join(dir, 'unet', 'diffusion_pytorch_model.fp16.safetensors'), { 'conv_in.weight': half(1, 2) });
  write(path.join(dir, 'text_encoder', 'model.safetensors'), { 'emb': tensor(3) });
  return dir;
}

test('readPipelineFolder reads components, absent components and settings', (t) => {
  const dir = makePipeline(t);
  const p = readPipelineFolder(dir);
  assert.equal(p.dir, dir);
  assert.equal(p.className, 'StableDiffusionPipeline');
  assert.equal(p.diffusersVersion, '0.30.0');
  assert.deepEqual(p.components.unet,
    { library: 'diffusers', className: 'UNet2DConditionModel', dir: path.join(dir, 'unet') });
  assert.equal(p.components.text_encoder!.library, 'transformers');
  assert.equal(p.components.safety_checker, null);
  assert.equal(p.components.image_encoder, null);
  assert.ok(!('_name_or_path' in p.components));
  assert.ok(!('requires_safety_checker' in p.components));
  assert.deepEqual(p.options, { requires_safety_checker: false });
});

test('readComponentConfig picks config.json or the scheduler/tokenizer config file', (t) => {
  const p = readPipelineFolder(makePipeline(t));
  const unet = readComponentConfig(p, 'unet');
  assert.equal(unet.where, path.join(p.dir, 'unet', 'config.json'));
  assert.equal(unet.config.in_channels, 4);
  const sched = readComponentConfig(p, 'scheduler');
  assert.equal(sched.where, path.join(p.dir, 'scheduler', 'scheduler_config.json'));
  assert.equal(sched.config.beta_start, 0.00085);
  assert.equal(readComponentConfig(p, 'tokenizer').config.model_max_length, 77);

  const index = path.join(p.dir, 'model_index.json');
  throwsInputError(() => readComponentConfig(p, 'vae'), path.join(p.dir, 'vae', 'config.json'), 'file not found');
  throwsInputError(() => readComponentConfig(p, 'transformer'), `${index}: transformer`, 'no such component', 'unet');
  throwsInputError(() => readComponentConfig(p, 'safety_checker'), `${index}: safety_checker`, 'absent');
  fs.writeFileSync(path.join(p.dir, 'unet', 'config.json'), '{"in_channels": 4,}');
  throwsInputError(() => readComponentConfig(p, 'unet'), path.join(p.dir, 'unet', 'config.json'), 'not valid JSON');
});

test('readPipelineFolder errors name the folder, file and key', (t) => {
  const dir = tempDir(t);
  const missing = path.join(dir, 'nope');
  throwsInputError(() => readPipelineFolder(missing), missing, 'model folder not found');
  const file = path.join(dir, 'file.txt');
  fs.writeFileSync(file, 'x');
  throwsInputError(() => readPipelineFolder(file), file, 'not a folder');
  const index = path.join(dir, 'model_index.json');
  throwsInputError(() => readPipelineFolder(dir), index, 'missing model_index.json');

  const withIndex = (value: unknown) => {
    writeJson(index, value);
    return () => readPipelineFolder(dir);
  };
  throwsInputError(withIndex({ unet: ['diffusers', 'UNet2DConditionModel'] }), `${index}: _class_name`, 'missing');
  throwsInputError(withIndex({ _class_name: 'P', unet: ['diffusers'] }), `${index}: unet`, 'malformed component entry',
    '["diffusers"]');
  throwsInputError(withIndex({ _class_name: 'P', unet: ['diffusers', null] }), `${index}: unet`, 'malformed');
  throwsInputError(withIndex({ _class_name: 'P', unet: [1, 'X'] }), `${index}: unet`, 'malformed');
  throwsInputError(withIndex({ _class_name: 'P', _diffusers_version: 30 }), `${index}: _diffusers_version`);
  throwsInputError(withIndex(['not', 'an', 'object']), index, 'top level must be a JSON object');
  fs.writeFileSync(index, '{"_class_name": ');
  throwsInputError(() => readPipelineFolder(dir), index, 'not valid JSON');
});

test('openComponentWeights picks the default file, the fp16 variant, or model.safetensors', (t) => {
  const dir = makePipeline(t);
  const unet = open(t, path.join(dir, 'unet'));
  assert.equal(unet.info('conv_in.weight').dtype, 'F32');
  assert.equal(unet.info('conv_in.weight').file, path.join(dir, 'unet', 'diffusion_pytorch_model.safetensors'));
  assert.deepEqual(unet.names(), ['conv_in.weight']);
  const fp16 = open(t, path.join(dir, 'unet'), 'fp16');
  assert.equal(fp16.info('conv_in.weight').dtype, 'F16');
  assert.deepEqual([...fp16.readFloat32('conv_in.weight')], [1, 2]);
  const te = open(t, path.join(dir, 'text_encoder'));
  assert.ok(te.has('emb') && !te.has('nope'));
  assert.deepEqual([...te.readFloat32('emb')], [3]);
  assert.deepEqual([...te.readRaw('emb')], [...new Uint8Array(f32(3).buffer)]);
});

test('openComponentWeights explains what is missing', (t) => {
  const dir = makePipeline(t);
  const te = path.join(dir, 'text_encoder');
  throwsInputError(() => openComponentWeights(te, { variant: 'fp16' }), te, 'no "fp16" variant',
    'model.fp16.safetensors', 'found model.safetensors');

  const onlyFp16 = path.join(dir, 'only16');
  write(path.join(onlyFp16, 'diffusion_pytorch_model.fp16.safetensors'), { a: half(1) });
  throwsInputError(() => openComponentWeights(onlyFp16), onlyFp16, 'no safetensors weights', 'variants present: fp16',
    'diffusion_pytorch_model.fp16.safetensors');

  const pickles = path.join(dir, 'pickles');
  fs.mkdirSync(pickles);
  fs.writeFileSync(path.join(pickles, 'diffusion_pytorch_model.bin'), 'x');
  fs.writeFileSync(path.join(pickles, 'config.json'), '{}');
  throwsInputError(() => openComponentWeights(pickles), pickles, 'only PyTorch pickle weights',
    'only .safetensors is supported', 'diffusion_pytorch_model.bin');

  const empty = path.join(dir, 'empty');
  fs.mkdirSync(empty);
  throwsInputError(() => openComponentWeights(empty), empty, 'no safetensors weights', 'an empty folder');
  throwsInputError(() => openComponentWeights(path.join(dir, 'vae')), path.join(dir, 'vae'), 'folder not found');

  const unet = open(t, path.join(dir, 'unet'));
  throwsInputError(() => unet.info('down.0.weight'), path.join(dir, 'unet'), '"down.0.weight"', 'missing');
  throwsInputError(() => unet.readFloat32('down.0.weight'), path.join(dir, 'unet'), 'missing');
});

test('sharded weights: index, fp16 variant index, each shard opened once', (t) => {
  const dir = path.join(tempDir(t), 'transformer');
  write(path.join(dir, 'diffusion_pytorch_model-00001-of-00002.safetensors'), { a: tensor(1), b: tensor(2) });
  write(path.join(dir, 'diffusion_pytorch_model-00002-of-00002.safetensors'), { c: tensor(3) });
  writeJson(path.join(dir, 'diffusion_pytorch_model.safetensors.index.json'), {
    metadata: { total_size: 12 },
    weight_map: {
      a: 'diffusion_pytorch_model-00001-of-00002.safetensors',
      c: 'diffusion_pytorch_model-00002-of-00002.safetensors',
      b: 'diffusion_pytorch_model-00001-of-00002.safetensors',
    },
  });
  write(path.join(dir, 'diffusion_pytorch_model.fp16-00001-of-00001.safetensors'), { a: half(1), b: half(2), c: half(3) });
  writeJson(path.join(dir, 'diffusion_pytorch_model.safetensors.index.fp16.json'), {
    weight_map: Object.fromEntries(
      ['a', 'b', 'c'].map((n) => [n, 'diffusion_pytorch_model.fp16-00001-of-00001.safetensors'])),
  });

  const set = open(t, dir);
  assert.equal(set.files.length, 2);
  assert.deepEqual(set.names().sort(), ['a', 'b', 'c']);
  assert.deepEqual([...set.readFloat32('c')], [3]);
  assert.equal(path.basename(set.info('c').file), 'diffusion_pytorch_model-00002-of-00002.safetensors');
  const fp16 = open(t, dir, 'fp16');
  assert.equal(fp16.files.length, 1);
  assert.equal(fp16.info('b').dtype, 'F16');
  assert.deepEqual([...fp16.readFloat32('b')], [2]);

  // transformers naming for a text encoder
  const te = path.join(path.dirname(dir), 'text_encoder_3');
  write(path.join(te, 'model-00001-of-00001.safetensors'), { w: tensor(9) });
  writeJson(path.join(te, 'model.safetensors.index.json'), { weight_map: { w: 'model-00001-of-00001.safetensors' } });
  assert.deepEqual([...open(t, te).readFloat32('w')], [9]);
});

test('sharded weights: inconsistent indexes are InputErrors naming the index and tensor', (t) => {
  const dir = tempDir(t);
  write(path.join(dir, 's1.safetensors'), { a: tensor(1) });
  write(path.join(dir, 's2.safetensors'), { a: tensor(2), b: tensor(3) });
  const index = path.join(dir, 'x.safetensors.index.json');
  const withMap = (weightMap: unknown) => {
    writeJson(index, { weight_map: weightMap });
    return () => openShardedWeights(index);
  };
  throwsInputError(withMap({ a: 's1.safetensors', b: 's2.safetensors' }), index, 'tensor "a" appears in two weight files',
    's1.safetensors and s2.safetensors');
  throwsInputError(withMap({ b: 's1.safetensors' }), `${index}: weight_map.b`, 'not in the shard', 's1.safetensors');
  throwsInputError(withMap({ a: 'missing.safetensors' }), path.join(dir, 'missing.safetensors'), 'not found');
  throwsInputError(withMap({ a: '../s1.safetensors' }), `${index}: weight_map.a`, 'invalid shard file name');
  throwsInputError(withMap({ a: 5 }), `${index}: weight_map.a`, 'invalid shard');
  throwsInputError(withMap([1]), `${index}: weight_map`, 'not an object');
  // A failed open closes the shards it had opened: the set above left no descriptor behind.
  const before = fs.readdirSync('/proc/self/fd').length;
  for (let i = 0; i < 20; i++) assert.throws(withMap({ a: 's1.safetensors', b: 's2.safetensors' }));
  assert.ok(fs.readdirSync('/proc/self/fd').length <= before + 1);
});

test('a truncated or corrupt weight file in a component is reported with its path', (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'diffusion_pytorch_model.safetensors');
  write(file, { a: tensor(1, 2, 3) });
  fs.truncateSync(file, fs.statSync(file).size - 4);
  throwsInputError(() => openComponentWeights(dir), `${file}: a.data_offsets`, 'past the end of the file');
});

test('config readers return typed values and name file: key on errors', () => {
  const where = '/m/unet/config.json';
  const cfg = {
    n: 0.5, i: 320, s: 'silu', b: true, ss: ['a', 'b'], ns: [1, 2.5], is: [1, 2], nul: null, head: 8, heads: [5, 10, 20],
    bad: 'x', frac: 1.5, mixed: [1, 'a'],
  };
  assert.equal(cfgNumber(cfg, 'n', where), 0.5);
  assert.equal(cfgNumber(cfg, 'missing', where, 7), 7);
  assert.equal(cfgNumber(cfg, 'nul', where, 7), 7, 'null falls back to the default');
  assert.equal(cfgInt(cfg, 'i', where), 320);
  assert.equal(cfgString(cfg, 's', where), 'silu');
  assert.equal(cfgBool(cfg, 'b', where), true);
  assert.equal(cfgBool(cfg, 'missing', where, false), false);
  assert.deepEqual(cfgStringList(cfg, 'ss', where), ['a', 'b']);
  assert.deepEqual(cfgNumberList(cfg, 'ns', where), [1, 2.5]);
  assert.deepEqual(cfgIntList(cfg, 'is', where), [1, 2]);
  assert.deepEqual(cfgIntOrIntList(cfg, 'head', where, 3), [8, 8, 8]);
  assert.deepEqual(cfgIntOrIntList(cfg, 'heads', where, 3), [5, 10, 20]);
  assert.deepEqual(cfgIntOrIntList(cfg, 'missing', where, 2, 1), [1, 1]);
  assert.equal(cfgOneOf(cfg, 's', where, ['silu', 'gelu']), 'silu');
  assert.equal(cfgOneOf(cfg, 'missing', where, ['epsilon', 'v_prediction'], 'epsilon'), 'epsilon');
  assert.equal(cfgOptionalInt(cfg, 'nul', where), undefined);
  assert.equal(cfgOptionalInt(cfg, 'missing', where), undefined);
  assert.equal(cfgOptionalString(cfg, 's', where), 'silu');
  assert.equal(cfgNumber({ toString: 5 }, 'constructor', where, 3), 3, 'inherited properties are not keys');

  throwsInputError(() => cfgNumber(cfg, 'missing', where), `${where}: missing`, 'missing required key', 'a finite number');
  throwsInputError(() => cfgNumber(cfg, 'nul', where), `${where}: nul`, 'missing');
  throwsInputError(() => cfgNumber(cfg, 'bad', where), `${where}: bad`, 'expected a finite number', 'found "x"');
  throwsInputError(() => cfgInt(cfg, 'frac', where), `${where}: frac`, 'an integer', 'found 1.5');
  throwsInputError(() => cfgString(cfg, 'i', where), `${where}: i`, 'a string', 'found 320');
  throwsInputError(() => cfgBool(cfg, 's', where), `${where}: s`, 'true or false');
  throwsInputError(() => cfgStringList(cfg, 'mixed', where), `${where}: mixed`, 'list of strings', '[1,"a"]');
  throwsInputError(() => cfgIntList(cfg, 'ns', where), `${where}: ns`, 'list of integers');
  throwsInputError(() => cfgIntOrIntList(cfg, 'heads', where, 4), `${where}: heads`, 'a list of 4 positive integers',
    '[5,10,20]');
  throwsInputError(() => cfgIntOrIntList(cfg, 'frac', where, 2), `${where}: frac`);
  throwsInputError(() => cfgOneOf(cfg, 's', where, ['gelu', 'relu']), `${where}: s`, 'one of "gelu", "relu"',
    'found "silu"');
  throwsInputError(() => cfgOptionalString(cfg, 'i', where), `${where}: i`, 'a string');
  const deep = JSON.parse('['.repeat(50000) + ']'.repeat(50000));
  throwsInputError(() => cfgInt({ deep }, 'deep', where), `${where}: deep`, 'deeply nested');
});

test('readJsonFile errors name the path', (t) => {
  const dir = tempDir(t);
  const missing = path.join(dir, 'config.json');
  throwsInputError(() => readJsonFile(missing), missing, 'file not found');
  throwsInputError(() => readJsonFile(dir), dir, 'is a folder');
  fs.writeFileSync(missing, 'nope');
  throwsInputError(() => readJsonFile(missing), missing, 'not valid JSON');
  fs.writeFileSync(missing, '[1]');
  assert.deepEqual(readJsonFile(missing), [1]);
  throwsInputError(() => readJsonObject(missing), missing, 'top level must be a JSON object', 'found [1]');
});

test('configs: Python json extensions (NaN, Infinity, -Infinity) read as numbers, also in arrays, never inside strings', () => {
  assert.deepEqual(parsePythonJson('{"a": -Infinity, "b": [Infinity, NaN, 1], "c": "NaN -Infinity", "d": "x\\"Infinity"}'),
    { a: -Infinity, b: [Infinity, NaN, 1], c: 'NaN -Infinity', d: 'x"Infinity' });
  assert.throws(() => parsePythonJson('{"a": Infinityx}'), SyntaxError);
  assert.throws(() => parsePythonJson('{"a": inf}'), SyntaxError);
});
