import assert from 'node:assert/strict';
import type { TestContext } from 'node:test';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import type { SchedulerName } from '../../src/schedulers/index.ts';
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

/** One case of an acceleration-method golden file (tools/reference/make_*_goldens.py). */
export interface AccelCase {
  name: string;
  scheduler: SchedulerName;
  steps: number;
  accel: string;
  prompt: string | string[];
  negative_prompt: string;
  guidance_scale: number;
  /** For stochastic schedulers: the seed of the step noise (our generator). */
  seed?: number;
  schedule?: number[];
}

/**
 * The cases of test/fixtures/goldens/<method>/<fixture>.{json,safetensors}, each with its request
 * (fixed starting latents, latent output) and its expected final and baseline latents.
 */
export function accelGoldens(t: TestContext, method: string, fixture = 'tiny-sd1') {
  const dir = path.join(import.meta.dirname, '..', 'fixtures', 'goldens', method);
  const cases = JSON.parse(fs.readFileSync(path.join(dir, `${fixture}.json`), 'utf8')) as AccelCase[];
  const st = SafetensorsFile.open(path.join(dir, `${fixture}.safetensors`));
  t.after(() => st.close());
  return cases.map((c) => ({
    ...c,
    request: {
      prompt: c.prompt, negativePrompt: c.negative_prompt, steps: c.steps, guidanceScale: c.guidance_scale, scheduler: c.scheduler, seed: c.seed,
      latents: { data: st.readFloat32(`${c.name}.latents_in`), dims: st.tensors.get(`${c.name}.latents_in`)!.shape }, output: 'latent' as const,
    },
    expected: st.readFloat32(`${c.name}.latents_out`),
    baseline: st.readFloat32(`${c.name}.baseline_out`),
  }));
}
