/**
 * DiT class-to-image against diffusers' DiTPipeline on the tiny folder (goldens from
 * tools/reference/make_dit_fixtures.py): same starting latents in, final latents (and an image)
 * out; class names through id2label; bad labels.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { loadDiTPipeline } from '../src/pipelines/dit.ts';
import type { SchedulerName } from '../src/schedulers/index.ts';
import { readPipelineFolder } from '../src/weights/diffusers-folder.ts';
import { SafetensorsFile } from '../src/weights/safetensors.ts';
import { assertClose } from './helpers/compare.ts';
import { rejectsInputError, tempDir, throwsInputError } from './helpers/files.ts';

const FIXTURES = path.join(import.meta.dirname, 'fixtures');
const GOLDENS = path.join(FIXTURES, 'goldens', 'dit');

interface DiTCase {
  name: string;
  class_labels: number[];
  label_names?: string[];
  guidance_scale: number;
  steps: number;
  scheduler: SchedulerName;
  scheduler_from: 'folder' | 'from_config';
  config_overrides: Record<string, unknown>;
  output: 'image' | 'latent';
  noise: boolean;
}

test('tiny-dit: class-to-image equals diffusers (DDIM, DDIM trailing, DPM++ 2M, Euler; with and without CFG; labels by name)', async (t) => {
  const { cases } = JSON.parse(fs.readFileSync(path.join(GOLDENS, 'tiny-dit-pipelines.json'), 'utf8')) as { cases: DiTCase[] };
  const goldens = SafetensorsFile.open(path.join(GOLDENS, 'tiny-dit-pipelines.safetensors'));
  const pipeline = loadDiTPipeline(readPipelineFolder(path.join(FIXTURES, 'tiny-dit')));
  // A case with scheduler config overrides runs on a copy of the folder whose
  // scheduler_config.json holds them, as a user's folder would.
  const overridden = fs.mkdtempSync(path.join(os.tmpdir(), 'tiny-dit-'));
  fs.cpSync(path.join(FIXTURES, 'tiny-dit'), overridden, { recursive: true });
  const schedulerFile = path.join(overridden, 'scheduler', 'scheduler_config.json');
  const schedulerConfig = JSON.parse(fs.readFileSync(schedulerFile, 'utf8'));
  const pipelines = new Map<string, ReturnType<typeof loadDiTPipeline>>();
  const pipelineFor = (c: DiTCase) => {
    if (Object.keys(c.config_overrides).length === 0) return pipeline;
    const key = JSON.stringify(c.config_overrides);
    if (!pipelines.has(key)) {
      fs.writeFileSync(schedulerFile, JSON.stringify({ ...schedulerConfig, ...c.config_overrides }));
      pipelines.set(key, loadDiTPipeline(readPipelineFolder(overridden)));
    }
    return pipelines.get(key)!;
  };
  try {
    // DDPM draws noise: ours is our own generator's (the scheduler is checked step by step in
    // schedulers.test.ts).
    const runnable = cases.filter((c) => !c.noise);
    assert.ok(runnable.some((c) => Object.keys(c.config_overrides).length > 0));
    for (const c of runnable) {
      const labels = c.label_names ?? c.class_labels;
      const latentsIn = goldens.readFloat32(`${c.name}.latents_in`);
      const result = await pipelineFor(c).generate({
        classLabels: labels, steps: c.steps, guidanceScale: c.guidance_scale, scheduler: c.scheduler_from === 'folder' ? undefined : c.scheduler,
        latents: { data: latentsIn, dims: [labels.length, 4, 16, 16] }, output: c.output,
      });
      assert.deepEqual(result.classIds, c.class_labels, `${c.name}: class ids`);
      const err = assertClose(result.latents.data, goldens.readFloat32(`${c.name}.latents_out`), 1e-3, `${c.name} latents`);
      let note = '';
      if (c.output === 'image') {
        const expected = goldens.readFloat32(`${c.name}.image_out`);
        const plane = expected.length / labels.length;
        const diff = result.images.reduce((m, image, b) => image.data.reduce((mm, v, i) => Math.max(mm, Math.abs(v - expected[b * plane + i])), m), 0);
        assert.ok(diff < 1e-3, `${c.name}: image max |diff| ${diff}`);
        note = `, image max |diff| ${diff.toExponential(2)}`;
      }
      t.diagnostic(`${c.name}: latents relative error ${err.toExponential(2)}${note}`);
    }
  } finally {
    goldens.close();
    await pipeline.release();
    for (const p of pipelines.values()) await p.release();
    fs.rmSync(overridden, { recursive: true, force: true });
  }
});

test('tiny-dit: class names resolve as DiTPipeline does; unknown names and ids out of range are refused', async () => {
  const pipeline = loadDiTPipeline(readPipelineFolder(path.join(FIXTURES, 'tiny-dit')));
  try {
    // "twin" is on ids 9 and 10: diffusers keeps the last in its (string-sorted) key order.
    assert.deepEqual(pipeline.classIds(['tench', 'Tinca tinca', 'goldfish', 'twin', 207, 'golden retriever']), [0, 0, 1, 9, 207, 207]);
    throwsInputError(() => pipeline.classIds(['zebra crossing']), 'classLabels', 'unknown class name', '"zebra crossing"');
    throwsInputError(() => pipeline.classIds([1000]), 'classLabels', 'class id out of range', '[0, 1000)', 'found 1000');
    throwsInputError(() => pipeline.classIds([-1]), 'classLabels', 'found -1');
    throwsInputError(() => pipeline.classIds([]), 'classLabels', 'no class given');
  } finally {
    await pipeline.release();
  }
});

test('a scheduler that steps with the predicted variance (DDPM learned_range) is refused by name: the pipelines drop that variance, as diffusers\'s do', async (t) => {
  const dir = tempDir(t);
  fs.cpSync(path.join(FIXTURES, 'tiny-dit'), dir, { recursive: true });
  const file = path.join(dir, 'scheduler', 'scheduler_config.json');
  fs.writeFileSync(file, JSON.stringify({ ...JSON.parse(fs.readFileSync(file, 'utf8')), variance_type: 'learned_range' }));
  const pipeline = loadDiTPipeline(readPipelineFolder(dir));
  try {
    await rejectsInputError(() => pipeline.generate({ classLabels: [1], steps: 2, scheduler: 'ddpm', output: 'latent' }),
      'scheduler_config.json: variance_type', 'predicted variance', 'found learned_range');
    // The folder's own DDIM has no such variance: it runs.
    assert.equal((await pipeline.generate({ classLabels: [1], steps: 2, output: 'latent' })).latents.dims[0], 1);
  } finally {
    await pipeline.release();
  }
});
