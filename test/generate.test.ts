/**
 * `diffuse generate` as a user runs it: PNG with metadata, latents in and out, seeds, and one
 * clear error (exit 2, no file written) for each kind of bad flag.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { decode } from 'fast-png';
import { loadPipeline } from '../src/pipelines/stable-diffusion.ts';
import { SafetensorsFile } from '../src/weights/safetensors.ts';
import { writeSafetensors } from '../src/weights/safetensors-write.ts';
import { tempDir } from './helpers/files.ts';
import { pngText } from './helpers/png.ts';

const ROOT = path.join(import.meta.dirname, '..');
const TINY = path.join(ROOT, 'test', 'fixtures', 'tiny-sd1');

function diffuse(...args: string[]) {
  const run = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'diffuse.js'), ...args], { cwd: ROOT, encoding: 'utf8' });
  return { status: run.status, stdout: run.stdout, stderr: run.stderr };
}

test('generate writes a PNG with A1111 parameters and a JSON settings chunk, and the final latents', (t) => {
  const dir = tempDir(t);
  const out = path.join(dir, 'cat.png');
  const latents = path.join(dir, 'final.safetensors');
  const run = diffuse('generate', '--model', TINY, '--prompt', 'a cat — café', '--negative-prompt', 'blurry', '--steps', '2', '--seed', '7',
    '--width', '64', '--height', '48', '--scheduler', 'euler', '--out', out, '--save-latents', latents, '--quiet');
  assert.equal(run.status, 0, run.stderr);
  const bytes = new Uint8Array(fs.readFileSync(out));
  const png = decode(bytes);
  assert.deepEqual([png.width, png.height, png.channels], [64, 48, 3]);
  const text = pngText(bytes);
  assert.match(text.parameters, /^a cat — café\nNegative prompt: blurry\nSteps: 2, Sampler: euler, CFG scale: 7.5, Seed: 7, Size: 64x48, Model: tiny-sd1$/);
  const settings = JSON.parse(text['diffusion.ts']);
  assert.equal(settings.seed, 7);
  assert.equal(settings.scheduler, 'euler');
  const saved = SafetensorsFile.open(latents);
  assert.deepEqual(saved.tensors.get('latents')!.shape, [1, 4, 6, 8]);
  saved.close();
  assert.deepEqual(fs.readdirSync(dir).sort(), ['cat.png', 'final.safetensors'], 'no temporary files left');
});

test('the same seed gives the same latents; given latents replace the noise', async (t) => {
  const pipeline = await loadPipeline(TINY);
  try {
    const request = { prompt: 'a red circle', steps: 3, seed: 42, width: 64, height: 64, output: 'latent' as const, scheduler: 'ddim' as const };
    const a = await pipeline.generate(request);
    const b = await pipeline.generate(request);
    assert.deepEqual(a.latents.data, b.latents.data);
    const other = await pipeline.generate({ ...request, seed: 43 });
    assert.notDeepEqual(a.latents.data, other.latents.data);
    // Starting latents from a file mean the seed no longer matters.
    const start = new Float32Array(4 * 8 * 8).map((_, i) => Math.sin(i));
    const dir = tempDir(t);
    writeSafetensors(path.join(dir, 'in.safetensors'), { latents: { dtype: 'F32', shape: [1, 4, 8, 8], data: start } });
    const c = await pipeline.generate({ ...request, latents: { data: start, dims: [1, 4, 8, 8] } });
    const d = await pipeline.generate({ ...request, seed: 1, latents: { data: start, dims: [1, 4, 8, 8] } });
    assert.deepEqual(c.latents.data, d.latents.data);
    // ... and the run says so when no step draws noise; a scheduler that does (DDPM) uses the seed.
    assert.ok(d.warnings.some((w) => w.startsWith('seed has no effect: the starting latents are given and ddim draws no noise')), d.warnings.join('; '));
    const noisy = await pipeline.generate({ ...request, scheduler: 'ddpm', seed: 1, latents: { data: start, dims: [1, 4, 8, 8] } });
    assert.ok(!noisy.warnings.some((w) => w.startsWith('seed has no effect')), noisy.warnings.join('; '));
    // On the command line, several seeds would write the same image several times: refused before any is written.
    const out = path.join(dir, 'same.png');
    const run = diffuse('generate', '--model', TINY, '--prompt', 'a red circle', '--steps', '2', '--width', '64', '--height', '64', '--scheduler', 'ddim',
      '--latents', path.join(dir, 'in.safetensors'), '--seed', '1-3', '--out', out);
    assert.equal(run.status, 2, run.stderr);
    assert.match(run.stderr, /--seed: 3 seeds with --latents would draw one image 3 times/);
    assert.deepEqual(fs.readdirSync(dir), ['in.safetensors']);
    const steps: number[] = [];
    const abort = new AbortController();
    await assert.rejects(pipeline.generate({ ...request, onStep: (s) => { steps.push(s.step); if (s.step === 2) abort.abort(); }, signal: abort.signal }), /abort/i);
    assert.deepEqual(steps, [1, 2], 'callback per step, stopped by the AbortSignal');
  } finally {
    await pipeline.release();
  }
});

test('bad flags: one line naming the flag, exit 2, no output file', (t) => {
  const dir = tempDir(t);
  const out = path.join(dir, 'x.png');
  const wrongLatents = path.join(dir, 'wrong.safetensors');
  writeSafetensors(wrongLatents, { latents: { dtype: 'F32', shape: [1, 4, 4, 4], data: new Float32Array(64) } });
  const cases: [string[], string][] = [
    [['--steps', '0'], '--steps'],
    [['--scheduler', 'heun'], '--scheduler'],
    [['--width', '100'], '--width'],
    [['--latents', wrongLatents], '--latents'],
    [['--out', path.join(dir, 'x.jpg')], '--out'],
  ];
  for (const [flags, named] of cases) {
    const run = diffuse('generate', '--model', TINY, '--prompt', 'x', '--steps', '1', '--out', out, '--quiet', ...flags);
    assert.equal(run.status, 2, `${flags.join(' ')}: ${run.stderr}`);
    const lines = run.stderr.trim().split('\n');
    assert.equal(lines.length, 1, run.stderr);
    assert.ok(lines[0].includes(named), `${flags.join(' ')} → ${lines[0]}`);
    assert.ok(!fs.existsSync(out), 'no output written');
  }
  const missing = diffuse('generate', '--model', path.join(dir, 'nope'), '--prompt', 'x', '--out', out);
  assert.equal(missing.status, 2);
  assert.ok(missing.stderr.includes(path.join(dir, 'nope')), missing.stderr);
});

test('generate runs PixArt (text-to-image) and DiT (class-to-image) folders, with their own flags and settings in the PNG', (t) => {
  const dir = tempDir(t);
  const fixtures = path.join(ROOT, 'test', 'fixtures');
  const pixart = path.join(dir, 'cactus.png');
  let run = diffuse('generate', '--model', path.join(fixtures, 'tiny-pixart-sigma'), '--prompt', 'a cactus', '--steps', '2', '--seed', '3',
    '--width', '192', '--height', '256', '--max-sequence-length', '40', '--out', pixart, '--quiet');
  assert.equal(run.status, 0, run.stderr);
  let bytes = new Uint8Array(fs.readFileSync(pixart));
  assert.deepEqual([decode(bytes).width, decode(bytes).height], [192, 256]);
  let text = pngText(bytes);
  assert.match(text.parameters, /^a cactus\nNegative prompt: \nSteps: 2, Sampler: dpm\+\+2m, CFG scale: 4.5, Seed: 3, Size: 192x256, Model: tiny-pixart-sigma$/);
  assert.deepEqual([JSON.parse(text['diffusion.ts']).maxSequenceLength, JSON.parse(text['diffusion.ts']).resolutionBinning], [40, true]);

  const dit = path.join(dir, 'dog.png');
  run = diffuse('generate', '--model', path.join(fixtures, 'tiny-dit'), '--class', '207,otter', '--steps', '2', '--seed', '4', '--out', dit, '--quiet');
  assert.equal(run.status, 0, run.stderr);
  for (const [i, file] of [path.join(dir, 'dog-0.png'), path.join(dir, 'dog-1.png')].entries()) {
    bytes = new Uint8Array(fs.readFileSync(file));
    assert.deepEqual([decode(bytes).width, decode(bytes).height], [128, 128]);
    text = pngText(bytes);
    // Each image carries its own seed (4 + index): the seed that regenerates it alone.
    assert.match(text.parameters, new RegExp(`^class ${['207', 'otter'][i]}\nSteps: 2, Sampler: ddim, CFG scale: 4, Seed: ${4 + i}, Size: 128x128, Model: tiny-dit$`));
    assert.deepEqual([JSON.parse(text['diffusion.ts']).index, JSON.parse(text['diffusion.ts']).seed, JSON.parse(text['diffusion.ts']).batchSeed], [i, 4 + i, 4]);
  }

  // Flags another family's pipeline cannot use are refused by name, before any work.
  const cases: [string, string[], string][] = [
    ['tiny-sd1', ['--prompt', 'x', '--class', '1'], '--class: does not apply to a StableDiffusionPipeline'],
    ['tiny-sd1', ['--prompt', 'x', '--max-sequence-length', '40'], '--max-sequence-length: does not apply'],
    ['tiny-sd1', ['--prompt', 'x', '--no-resolution-binning'], '--resolution-binning / --no-resolution-binning: does not apply'],
    ['tiny-dit', ['--prompt', 'a dog'], '--prompt: does not apply to a DiTPipeline'],
    ['tiny-dit', [], '--class: no class given'],
    ['tiny-dit', ['--class', 'unicorn'], '--class: unknown class name'],
    ['tiny-dit', ['--class', '1000'], '--class: class id out of range'],
    ['tiny-pixart-alpha', ['--prompt', 'x', '--guidance-rescale', '0.5'], '--guidance-rescale: does not apply to a PixArtAlphaPipeline'],
    ['tiny-pixart-alpha', ['--prompt', 'x', '--width', '100', '--no-resolution-binning'], '--width/--height: must be multiples of 16'],
  ];
  const out = path.join(dir, 'refused.png');
  for (const [fixture, flags, message] of cases) {
    run = diffuse('generate', '--model', path.join(fixtures, fixture), '--steps', '2', '--out', out, '--quiet', ...flags);
    assert.equal(run.status, 2, `${fixture} ${flags.join(' ')}: ${run.stderr}`);
    assert.equal(run.stderr.trim().split('\n').length, 1, run.stderr);
    assert.ok(run.stderr.includes(message), `${fixture} ${flags.join(' ')} → ${run.stderr}`);
    assert.ok(!fs.existsSync(out), 'no output written');
  }
});

test('a folder laid out as the Hugging Face cache keeps it (every file a symlink into blobs/) generates as the folder itself', async (t) => {
  // models--org--name/snapshots/<rev>/<component>/<file> → ../../../blobs/<hash of the file>
  const cache = path.join(tempDir(t), 'models--tiny--sd1');
  const snapshot = path.join(cache, 'snapshots', '0123abc');
  fs.mkdirSync(path.join(cache, 'blobs'), { recursive: true });
  for (const entry of fs.readdirSync(TINY, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile()) continue;
    const source = path.join(entry.parentPath, entry.name);
    const relative = path.relative(TINY, source);
    const blob = path.join(cache, 'blobs', createHash('sha256').update(fs.readFileSync(source)).digest('hex'));
    fs.copyFileSync(source, blob);
    fs.mkdirSync(path.dirname(path.join(snapshot, relative)), { recursive: true });
    fs.symlinkSync(path.relative(path.dirname(path.join(snapshot, relative)), blob), path.join(snapshot, relative));
  }
  const request = { prompt: 'a red circle', steps: 2, seed: 3, width: 64, height: 64, output: 'latent' as const, scheduler: 'ddim' as const };
  const [linked, plain] = [await loadPipeline(snapshot), await loadPipeline(TINY)];
  try {
    assert.deepEqual((await linked.generate(request)).latents.data, (await plain.generate(request)).latents.data);
  } finally {
    await linked.release();
    await plain.release();
  }
});
