/**
 * F16 and BF16 weights are cast to float32 inside the graph (ORT folds the cast at session
 * start): a model stored in either must compute exactly what the same rounded values give in F32.
 */
import { test } from 'node:test';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { loadTextEncoder } from '../src/models/components.ts';
import { OrtExecutor } from '../src/runtime/ort-executor.ts';
import { readPipelineFolder } from '../src/weights/diffusers-folder.ts';
import { SafetensorsFile } from '../src/weights/safetensors.ts';
import { float16ToFloat32, float32ToFloat16 } from '../src/graph/half.ts';
import { writeSafetensors, type TensorToWrite } from '../src/weights/safetensors-write.ts';
import { assertClose } from './helpers/compare.ts';
import { tempDir } from './helpers/files.ts';

const FIXTURE = path.join(import.meta.dirname, 'fixtures', 'tiny-sd1');

function float32ToBfloat16(values: Float32Array): Uint16Array {
  const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
  return Uint16Array.from(bits, (u) => (u + 0x7fff + ((u >>> 16) & 1)) >>> 16); // round to nearest even
}

function bfloat16ToFloat32(half: Uint16Array): Float32Array {
  return new Float32Array(Uint32Array.from(half, (h) => h << 16).buffer);
}

/** A pipeline folder holding only the text encoder, its weights transformed by `convert`. */
function textEncoderFolder(dir: string, convert: (values: Float32Array, shape: number[]) => TensorToWrite): string {
  fs.mkdirSync(path.join(dir, 'text_encoder'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'model_index.json'), JSON.stringify({ _class_name: 'StableDiffusionPipeline', text_encoder: ['transformers', 'CLIPTextModel'] }));
  fs.copyFileSync(path.join(FIXTURE, 'text_encoder', 'config.json'), path.join(dir, 'text_encoder', 'config.json'));
  const source = SafetensorsFile.open(path.join(FIXTURE, 'text_encoder', 'model.safetensors'));
  const tensors: Record<string, TensorToWrite> = {};
  for (const [name, info] of source.tensors) tensors[name] = convert(source.readFloat32(name), info.shape);
  source.close();
  writeSafetensors(path.join(dir, 'text_encoder', 'model.safetensors'), tensors);
  return dir;
}

async function encode(dir: string): Promise<Float32Array> {
  const { model, params, weights } = loadTextEncoder(readPipelineFolder(dir));
  const ids = BigInt64Array.from({ length: 2 * 77 }, (_, i) => BigInt(i % 77 === 0 ? 49406 : i % 77 < 9 ? 320 + (i % 77) * 7 : 49407));
  const exec = new OrtExecutor(params);
  const out = await model.forward(exec, new ort.Tensor('int64', ids, [2, 77]));
  await exec.release();
  weights.close();
  return out.lastHiddenState.data as Float32Array;
}

const formats = {
  F16: { store: float32ToFloat16, restore: float16ToFloat32 },
  BF16: { store: float32ToBfloat16, restore: bfloat16ToFloat32 },
} as const;

for (const [dtype, { store, restore }] of Object.entries(formats)) {
  test(`${dtype} weights compute what their values give in F32`, async (t) => {
    const base = tempDir(t);
    const half = textEncoderFolder(path.join(base, 'half'), (v, shape) => ({ dtype: dtype as 'F16' | 'BF16', shape, data: store(v) }));
    const rounded = textEncoderFolder(path.join(base, 'f32'), (v, shape) => ({ dtype: 'F32', shape, data: restore(store(v)) }));
    const full = await encode(FIXTURE);
    const fromHalf = await encode(half);
    assertClose(fromHalf, await encode(rounded), 1e-6, `${dtype} vs rounded F32`);
    // and the rounding did change something, so the comparison above means something
    const changed = fromHalf.some((v, i) => v !== full[i]);
    if (!changed) throw new Error(`${dtype} storage left every output bit-identical to F32`);
  });
}
