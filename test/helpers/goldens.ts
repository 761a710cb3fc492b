import assert from 'node:assert/strict';
import type { TestContext } from 'node:test';
import * as ort from 'onnxruntime-node';
import { SafetensorsFile } from '../../src/weights/safetensors.ts';

/** A goldens safetensors file as ORT tensors by name; closed when the test ends. */
export function openGoldens(t: TestContext, file: string) {
  const st = SafetensorsFile.open(file);
  t.after(() => st.close());
  const info = (name: string) => {
    const found = st.tensors.get(name);
    assert.ok(found, `${file} has ${name}`);
    return found;
  };
  const f32 = (name: string) => new ort.Tensor('float32', st.readFloat32(name), info(name).shape);
  const i64 = (name: string) => {
    const { shape } = info(name);
    const raw = st.readRaw(name);
    return new ort.Tensor('int64', new BigInt64Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength)), shape);
  };
  return { f32, i64 };
}
