/**
 * The embedded transformer references (tools/train-reference/train_dit.py): the DiT folder samples
 * as diffusers' DiTPipeline does, the Skip-DiT equals the official DiT_skip on its checkpoint and its
 * committed converted folder is what `diffuse convert` makes of that checkpoint; `generate` takes
 * both by name with class names, and they draw the class asked for (goldens from
 * tools/train-reference/make_dit_reference_goldens.py).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { adherence } from '../src/metrics/adherence.ts';
import { convertOfficialDiT } from '../src/models/official-dit-checkpoint.ts';
import { loadDiTPipeline, type DiTPipeline } from '../src/pipelines/dit.ts';
import { REFERENCE_MODELS } from '../src/pipelines/reference-model.ts';
import { parseCaption } from '../src/scenes/captions.ts';
import { readPipelineFolder } from '../src/weights/diffusers-folder.ts';
import { SafetensorsFile } from '../src/weights/safetensors.ts';
import { readImage } from '../src/image/read.ts';
import { assertClose } from './helpers/compare.ts';
import { tempDir } from './helpers/files.ts';

const ROOT = path.join(import.meta.dirname, '..');
const GOLDENS = path.join(import.meta.dirname, 'fixtures', 'goldens');
const DIT = REFERENCE_MODELS['reference-dit'];
const SKIP_DIT = REFERENCE_MODELS['reference-skip-dit'];
/** Measured when the models were trained: 0.84 (DiT) and 0.78 (Skip-DiT) on these four classes (docs/REFERENCE_MODEL.md). */
const ADHERENCE_FLOOR = 0.6;
const MODELS = ['reference-dit', 'reference-skip-dit'];

test('reference DiT samples as diffusers\' DiTPipeline: 10 DDIM steps, guidance 4, two classes, from the same latents', async (t) => {
  const goldens = SafetensorsFile.open(path.join(GOLDENS, 'reference-dit.safetensors'));
  const pipeline = loadDiTPipeline(readPipelineFolder(DIT));
  try {
    const classLabels = JSON.parse(goldens.metadata.class_labels) as number[];
    const result = await pipeline.generate({
      classLabels, steps: Number(goldens.metadata.steps), guidanceScale: Number(goldens.metadata.guidance_scale),
      latents: { data: goldens.readFloat32('latents_in'), dims: [classLabels.length, 4, 16, 16] },
    });
    const err = assertClose(result.latents.data, goldens.readFloat32('latents_out'), 1e-3, 'latents');
    const expected = goldens.readFloat32('image');
    const diff = result.images[0].data.reduce((m, v, i) => Math.max(m, Math.abs(v - expected[i])), 0);
    assert.ok(diff < 1e-3, `image max |diff| ${diff}`);
    t.diagnostic(`latents relative error ${err.toExponential(2)}, image max |diff| ${diff.toExponential(2)}`);
  } finally {
    goldens.close();
    await pipeline.release();
  }
});

test('reference Skip-DiT equals the official DiT_skip forward; its folder is `diffuse convert` of its checkpoint', async (t) => {
  const goldens = SafetensorsFile.open(path.join(GOLDENS, 'reference-skip-dit.safetensors'));
  const pipeline = loadDiTPipeline(readPipelineFolder(SKIP_DIT));
  try {
    const f32 = (name: string) => new ort.Tensor('float32', goldens.readFloat32(name), goldens.tensors.get(name)!.shape);
    const raw = goldens.readRaw('y');
    const y = new ort.Tensor('int64', new BigInt64Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength)), [3]);
    const exec = (pipeline as unknown as { transformerExec: Parameters<DiTPipeline['transformer']['model']['forward']>[0] }).transformerExec;
    const out = await pipeline.transformer.model.forward(exec, f32('x'), f32('t'), y);
    const err = assertClose((out as ort.Tensor).data as Float32Array, goldens.readFloat32('out'), 1e-4, 'forward');
    t.diagnostic(`forward relative error ${err.toExponential(2)}`);
  } finally {
    goldens.close();
    await pipeline.release();
  }
  // The heads come from the checkpoint's args.num_heads, the class names from the labels file; half precision stays half.
  const dir = path.join(tempDir(t), 'converted');
  convertOfficialDiT(path.join(ROOT, 'assets', 'reference-skip-dit.pt'), dir, { vae: path.join(DIT, 'vae'), labels: path.join(ROOT, 'assets', 'reference-dit-labels.json') });
  for (const file of ['model_index.json', 'transformer/diffusion_pytorch_model.safetensors', 'scheduler/scheduler_config.json', 'vae/diffusion_pytorch_model.safetensors']) {
    assert.ok(fs.readFileSync(path.join(dir, file)).equals(fs.readFileSync(path.join(SKIP_DIT, file))), file);
  }
  const config = (d: string) => ({ ...JSON.parse(fs.readFileSync(path.join(d, 'transformer', 'config.json'), 'utf8')), _source: undefined });
  assert.deepEqual(config(dir), config(SKIP_DIT));
});

test('generate --model reference-dit / reference-skip-dit --class NAME: the named class, drawn', async (t) => {
  const dir = tempDir(t);
  // Each class's names end with its scene caption ("a red circle at the top left"), which the adherence checker reads.
  const labels = JSON.parse(fs.readFileSync(path.join(ROOT, 'assets', 'reference-dit-labels.json'), 'utf8')) as Record<string, string>;
  const captionOf = (name: string) => Object.values(labels).find((names) => names.split(', ').includes(name))!.split(', ').at(-1)!;
  const classes = ['red circle top left', 'blue square right', 'yellow triangle bottom', 'green circle centre'];
  for (const model of MODELS) {
    const run = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'diffuse.js'), 'generate', '--model', model, '--class', classes.join(','),
      '--seed', '1', '--out', path.join(dir, `${model}.png`)], { encoding: 'utf8' });
    assert.equal(run.status, 0, run.stderr);
    const scores = classes.map((name, i) => {
      const image = readImage(path.join(dir, `${model}-${i}.png`));
      return adherence(image.data, image.width, image.height, parseCaption(captionOf(name))).score;
    });
    t.diagnostic(`${model}: adherence ${scores.map((s) => s.toFixed(2)).join(', ')}`);
    const mean = scores.reduce((a, b) => a + b, 0) / scores.length;
    assert.ok(mean >= ADHERENCE_FLOOR, `${model}: mean adherence ${mean.toFixed(3)} < ${ADHERENCE_FLOOR}`);
  }
});
