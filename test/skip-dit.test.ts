/**
 * DiT and Skip-DiT from their authors' checkpoints against the official Skip-DiT code (goldens from
 * tools/reference/make_skip_dit_fixtures.py): the .pt reader (no code runs; EMA weights taken),
 * `diffuse convert`, the forward pass, DDIM sampling with forward_with_cfg's guidance, and
 * Skip-Cache (the official DiT_cache) at N = 2 and 3.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { parseAccelSpec } from '../src/accel/index.ts';
import { macCounter } from '../src/bench/mac-counter.ts';
import { calflopsMacs } from '../src/graph/builder.ts';
import { skipCacheFullCalls, SKIP_CACHE_DEFAULTS } from '../src/accel/skip-cache.ts';
import { convertOfficialDiT, inferOfficialDiT } from '../src/models/official-dit-checkpoint.ts';
import { loadDiTPipeline, type DiTPipeline } from '../src/pipelines/dit.ts';
import { loadPipeline } from '../src/pipelines/stable-diffusion.ts';
import { readPickle } from '../src/weights/pickle.ts';
import { readPipelineFolder } from '../src/weights/diffusers-folder.ts';
import { SafetensorsFile } from '../src/weights/safetensors.ts';
import { TorchCheckpoint } from '../src/weights/torch-checkpoint.ts';
import { assertClose, relativeError } from './helpers/compare.ts';
import { pngText } from './helpers/png.ts';
import { readImage } from '../src/image/read.ts';
import { rejectsInputError, tempDir, throwsInputError } from './helpers/files.ts';

const ROOT = path.join(import.meta.dirname, '..');
const FIXTURES = path.join(import.meta.dirname, 'fixtures');
const SKIP_DIT = path.join(FIXTURES, 'skip-dit');
const VAE = path.join(FIXTURES, 'tiny-dit', 'vae');

/** The two tiny checkpoints converted into folders of a test's temporary directory. */
function converted(t: Parameters<typeof tempDir>[0]): { skip: string; dit: string } {
  const dir = tempDir(t);
  const out = { skip: path.join(dir, 'skip'), dit: path.join(dir, 'dit') };
  convertOfficialDiT(path.join(SKIP_DIT, 'tiny-skip-dit.pt'), out.skip, { numHeads: 2, vae: VAE });
  convertOfficialDiT(path.join(SKIP_DIT, 'tiny-dit.pt'), out.dit, { numHeads: 2, vae: VAE });
  return out;
}

test('.pt checkpoints: train.py\'s {model, ema, opt, args} gives its EMA weights and its args; a bare state dict itself', () => {
  const skip = TorchCheckpoint.open(path.join(SKIP_DIT, 'tiny-skip-dit.pt'));
  const plain = TorchCheckpoint.open(path.join(SKIP_DIT, 'tiny-dit.pt'));
  try {
    const { source, tensors } = skip.stateDict();
    assert.equal(source, 'ema');
    assert.equal(tensors.size, 132);
    assert.equal(skip.args()?.get('model'), 'DiT-skip');
    assert.equal(skip.args()?.get('image_size'), 64);
    // The optimizer state (tensors under "opt") is read as data too, never executed.
    assert.ok(skip.root instanceof Map && skip.root.get('opt') instanceof Map);
    const config = inferOfficialDiT(tensors, skip.args(), { numHeads: 2 }, 'tiny-skip-dit.pt');
    assert.deepEqual(config, { longSkips: true, sampleSize: 8, patchSize: 2, inChannels: 4, hiddenSize: 32, depth: 10, numHeads: 2, mlpRatio: 4, numClasses: 10, learnSigma: true });
    assert.equal(plain.stateDict().source, 'the checkpoint');
    assert.equal(inferOfficialDiT(plain.stateDict().tensors, undefined, { numHeads: 2 }, 'tiny-dit.pt').longSkips, false);
    // The head count: from --num-heads, or an architecture whose sizes match the tensors.
    throwsInputError(() => inferOfficialDiT(tensors, skip.args(), {}, 'x.pt'), 'args.model', 'DiT-skip has depth 28', '--num-heads');
    throwsInputError(() => inferOfficialDiT(tensors, undefined, { arch: 'DiT-XXL/2' }, 'x.pt'), '--arch', 'unknown architecture', 'DiT-XL/2');
    throwsInputError(() => inferOfficialDiT(tensors, undefined, {}, 'x.pt'), '--num-heads', 'cannot tell the head count');
    throwsInputError(() => inferOfficialDiT(tensors, undefined, { numHeads: 3 }, 'x.pt'), '--num-heads', 'a divisor of hidden_size 32');
  } finally {
    skip.close();
    plain.close();
  }
});

test('the pickle reader creates data only: any other Python object is refused by name, never run', () => {
  // GLOBAL os.system, ('echo hi',), REDUCE, STOP: what a malicious checkpoint carries.
  const evil = Buffer.concat([Buffer.from([0x80, 0x02]), Buffer.from('cos\nsystem\n'), Buffer.from([0x58, 7, 0, 0, 0]), Buffer.from('echo hi'),
    Buffer.from([0x85, 0x52, 0x2e])]);
  throwsInputError(() => readPickle(evil, 'evil.pt', () => null), 'evil.pt', 'os.system', 'weights-only');
  const builtins = Buffer.concat([Buffer.from([0x80, 0x02]), Buffer.from('cbuiltins\neval\n'), Buffer.from([0x4e, 0x85, 0x52, 0x2e])]);
  throwsInputError(() => readPickle(builtins, 'b.pt', () => null), 'builtins.eval');
  throwsInputError(() => readPickle(Buffer.from([0x80, 0x02, 0x7d]), 'cut.pt', () => null), 'cut.pt', 'truncated');
  throwsInputError(() => readPickle(Buffer.from([0x80, 0x02, 0xff]), 'odd.pt', () => null), 'unsupported opcode 0xff');
  // A plain dict of numbers and strings reads back.
  const dict = Buffer.from([0x80, 0x02, 0x7d, 0x71, 0x00, 0x58, 1, 0, 0, 0, 0x61, 0x4b, 0x05, 0x73, 0x2e]);
  assert.deepEqual(readPickle(dict, 'd', () => null), new Map([['a', 5]]));
});

test('the forward pass of both layouts equals the official DiT / DiT_skip (ema weights)', async (t) => {
  const folders = converted(t);
  const goldens = SafetensorsFile.open(path.join(SKIP_DIT, 'goldens.safetensors'));
  t.after(() => goldens.close());
  const i64 = (name: string) => {
    const raw = goldens.readRaw(name);
    return new ort.Tensor('int64', new BigInt64Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength)), goldens.tensors.get(name)!.shape);
  };
  const f32 = (name: string) => new ort.Tensor('float32', goldens.readFloat32(name), goldens.tensors.get(name)!.shape);
  for (const name of ['skip', 'dit'] as const) {
    const pipeline = loadDiTPipeline(readPipelineFolder(folders[name]));
    try {
      const exec = (pipeline as unknown as { transformerExec: Parameters<DiTPipeline['transformer']['model']['forward']>[0] }).transformerExec;
      const out = await pipeline.transformer.model.forward(exec, f32('x'), f32('t'), i64('y'));
      const err = assertClose((out as ort.Tensor).data as Float32Array, goldens.readFloat32(`${name}.out`), 2e-6, `${name} forward`);
      t.diagnostic(`${name}: relative error ${err.toExponential(2)}`);
    } finally {
      await pipeline.release();
    }
  }
});

test('DDIM sampling with forward_with_cfg\'s guidance, and Skip-Cache N = 2, 3, equal the official Skip-DiT code', async (t) => {
  const folders = converted(t);
  const goldens = SafetensorsFile.open(path.join(SKIP_DIT, 'goldens.safetensors'));
  t.after(() => goldens.close());
  const request = { classLabels: [3, 5], steps: 10, guidanceScale: 4, latents: { data: goldens.readFloat32('sample.z'), dims: [2, 4, 8, 8] }, output: 'latent' as const };
  for (const name of ['skip', 'dit'] as const) {
    const pipeline = loadDiTPipeline(readPipelineFolder(folders[name]));
    try {
      const plain = await pipeline.generate(request);
      assert.equal(plain.guidedChannels, 3, 'the authors\' checkpoints guide channels 0-2');
      const err = assertClose(plain.latents.data, goldens.readFloat32(`sample.${name}`), 1e-5, `${name} sampling`);
      t.diagnostic(`${name}: sampling relative error ${err.toExponential(2)}`);
      if (name !== 'skip') {
        await rejectsInputError(() => pipeline.generate({ ...request, accel: ['skip-cache'] }), 'accel skip-cache', 'no long skip branches');
        continue;
      }
      for (const n of [2, 3]) {
        const cached = await pipeline.generate({ ...request, accel: [parseAccelSpec(`skip-cache:cache_interval=${n}`)] });
        const expected = goldens.readFloat32(`sample.skip_cache${n}`);
        const cacheErr = assertClose(cached.latents.data, expected, 1e-5, `Skip-Cache N=${n}`);
        const change = relativeError(plain.latents.data, expected);
        assert.ok(change > 20 * cacheErr, `Skip-Cache's change ${change} stands clear of our error ${cacheErr}`);
        // Full passes at calls 0, N, 2N, …: the others are shallow.
        assert.equal(cached.accel?.stats.shallowPasses, 10 - Math.ceil(10 / n));
        // The MACs the run really spent are what the count from configs predicts.
        const counted = await macCounter({ model: folders.skip, batch: 2, guidance: 4 }).count(10, [parseAccelSpec(`skip-cache:cache_interval=${n}`)]);
        assert.deepEqual(cached.denoiserMacs, counted.total);
        t.diagnostic(`N=${n}: relative error ${cacheErr.toExponential(2)}, Skip-Cache's change ${change.toExponential(2)}`);
      }
      await rejectsInputError(() => pipeline.generate({ ...request, accel: ['skip-cache:skip_at_branch=5'] }), 'accel skip-cache:skip_at_branch', 'no block', '1 to 4');
      await rejectsInputError(() => pipeline.generate({ ...request, accel: ['skip-cache:close_cache_at=1000'] }), 'accel skip-cache', 'no call of this run');
      await rejectsInputError(() => pipeline.generate({ ...request, accel: ['skip-cache', 'deepcache'] }), 'accel');
    } finally {
      await pipeline.release();
    }
  }
  const unet = await loadPipeline(path.join(FIXTURES, 'tiny-sd1'));
  try {
    await rejectsInputError(() => unet.generate({ prompt: 'x', steps: 4, accel: ['skip-cache'] }), 'accel skip-cache', 'deepcache');
  } finally {
    await unet.release();
  }
});

test('Skip-Cache\'s schedule replays the official counter: full every N calls, full at and after close_cache_at, full from start_cache_at', () => {
  const run = (timesteps: number[], extra: Partial<typeof SKIP_CACHE_DEFAULTS> = {}, fullPassCalls: number[] = []) =>
    skipCacheFullCalls({ ...SKIP_CACHE_DEFAULTS, ...extra }, { calls: timesteps.length, timesteps, fullPassCalls }).map((f) => (f ? 'F' : '.')).join('');
  assert.equal(run([900, 800, 700, 600, 500, 400, 300, 200, 100, 0]), 'F.F.F.F.F.');
  assert.equal(run([900, 800, 700, 600, 500, 400, 300, 200, 100, 0], { cache_interval: 3 }), 'F..F..F..F');
  // A call at t ≤ 20 clears the cache afterwards: every later call is full.
  assert.equal(run([999, 15, 10, 5, 0], { cache_interval: 4 }), 'F.FFF');
  assert.equal(run([1000, 990, 980, 970]), 'F.F.');
  assert.equal(run([1000, 990, 980, 970], { start_cache_at: 985 }), 'FFF.');
  assert.equal(run([900, 800, 700, 600], {}, [1]), 'FFF.');
});

test('diffuse convert: one line on success, a refused folder left behind on failure', (t) => {
  const dir = tempDir(t);
  const diffuse = (...args: string[]) => spawnSync(process.execPath, [path.join(ROOT, 'bin', 'diffuse.js'), ...args], { cwd: dir, encoding: 'utf8' });
  const ok = diffuse('convert', path.join(SKIP_DIT, 'tiny-skip-dit.pt'), '--out', 'skip', '--num-heads', '2', '--vae', VAE);
  assert.equal(ok.status, 0, ok.stderr);
  assert.match(ok.stderr, /^wrote skip: DiT_skip, depth 10, width 32, 2 heads, patch 2, input 8, 10 classes, learned sigma; 132 tensors from "ema"\n$/);
  assert.deepEqual(fs.readdirSync(path.join(dir, 'skip')).sort(), ['model_index.json', 'scheduler', 'transformer', 'vae']);
  for (const [args, fragment] of [
    [['convert', path.join(SKIP_DIT, 'tiny-skip-dit.pt'), '--out', 'skip', '--num-heads', '2'], 'already exists'],
    [['convert', path.join(SKIP_DIT, 'tiny-skip-dit.pt'), '--out', 'again'], '--num-heads N'],
    [['convert', path.join(ROOT, 'package.json'), '--out', 'x'], 'not a readable zip file'],
    [['convert', path.join(dir, 'none.pt'), '--out', 'x'], 'checkpoint not found'],
  ] as [string[], string][]) {
    const run = diffuse(...args);
    assert.equal(run.status, 2, run.stderr);
    assert.match(run.stderr, /^diffuse: .*\n$/);
    assert.ok(run.stderr.includes(fragment), run.stderr);
  }
  assert.deepEqual(fs.readdirSync(dir), ['skip'], 'no partial folder left');
  // "--out dir/" (a trailing slash) converts as "--out dir"; a partial folder left by a killed conversion is cleared.
  const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' }).stdout;
  fs.mkdirSync(path.join(dir, `slash.partial-${dead}`));
  const slash = diffuse('convert', path.join(SKIP_DIT, 'tiny-skip-dit.pt'), '--out', 'slash/', '--num-heads', '2');
  assert.equal(slash.status, 0, slash.stderr);
  assert.deepEqual(fs.readdirSync(dir).sort(), ['skip', 'slash']);
  fs.rmSync(path.join(dir, 'slash'), { recursive: true });
  // "--out file/" where a file is: refused before the conversion, the file kept.
  fs.writeFileSync(path.join(dir, 'file'), 'mine');
  const overFile = diffuse('convert', path.join(SKIP_DIT, 'tiny-skip-dit.pt'), '--out', 'file/', '--num-heads', '2');
  assert.equal(overFile.status, 2, overFile.stderr);
  assert.match(overFile.stderr, /^diffuse: --out: already exists/);
  assert.equal(fs.readFileSync(path.join(dir, 'file'), 'utf8'), 'mine');
  fs.rmSync(path.join(dir, 'file'));
  const gen = diffuse('generate', '--model', 'skip', '--class', '1', '--steps', '4', '--accel', 'skip-cache', '--out', 'x.png');
  assert.equal(gen.status, 0, gen.stderr);
  // The .pt itself as --model, with convert's flags; the PNG names the checkpoint and the guidance convention.
  const direct = diffuse('generate', '--model', path.join(SKIP_DIT, 'tiny-skip-dit.pt'), '--num-heads', '2', '--vae', VAE, '--class', '1', '--steps', '4', '--seed', '5', '--out', 'y.png');
  assert.equal(direct.status, 0, direct.stderr);
  assert.match(pngText(fs.readFileSync(path.join(dir, 'y.png'))).parameters, /Model: tiny-skip-dit\.pt, CFG channels: 0-2 \(forward_with_cfg\)$/);
  const again = diffuse('generate', '--model', 'skip', '--class', '1', '--steps', '4', '--seed', '5', '--out', 'z.png');
  assert.equal(again.status, 0, again.stderr);
  // The converted folder and the .pt give the same image.
  assert.deepEqual(readImage(path.join(dir, 'z.png')).data, readImage(path.join(dir, 'y.png')).data);
  const refused = diffuse('generate', '--prompt', 'x', '--num-heads', '2', '--out', 'w.png');
  assert.equal(refused.status, 2);
  assert.match(refused.stderr, /^diffuse: --num-heads: is for a DiT \/ Skip-DiT checkpoint given as --model FILE\.pt/);
});

test('diffuse convert --labels: class names for --class, checked against the checkpoint', (t) => {
  const dir = tempDir(t);
  const diffuse = (...args: string[]) => spawnSync(process.execPath, [path.join(ROOT, 'bin', 'diffuse.js'), ...args], { cwd: dir, encoding: 'utf8' });
  const labels = Object.fromEntries(Array.from({ length: 10 }, (_, i) => [String(i), `class ${i}, c${i}`]));
  fs.writeFileSync(path.join(dir, 'labels.json'), JSON.stringify(labels));
  fs.writeFileSync(path.join(dir, 'eleven.json'), JSON.stringify({ ...labels, 10: 'one too many' }));
  fs.writeFileSync(path.join(dir, 'list.json'), JSON.stringify(['a', 'b']));
  fs.writeFileSync(path.join(dir, 'broken.json'), '{"0": ');
  const pt = path.join(SKIP_DIT, 'tiny-skip-dit.pt');
  for (const [file, fragment] of [
    ['eleven.json', '--labels eleven.json: class 10 is beyond the checkpoint\'s 10 classes'],
    ['list.json', '--labels list.json: id2label: has the wrong type'],
    ['broken.json', '--labels broken.json: not JSON'],
    ['none.json', '--labels none.json: file not found'],
  ]) {
    const run = diffuse('convert', pt, '--out', 'x', '--num-heads', '2', '--labels', file);
    assert.equal(run.status, 2, run.stderr);
    assert.ok(run.stderr.startsWith(`diffuse: ${fragment}`), run.stderr);
  }
  assert.deepEqual(fs.readdirSync(dir).sort(), ['broken.json', 'eleven.json', 'labels.json', 'list.json'], 'no folder left by a refusal');
  assert.equal(diffuse('convert', pt, '--out', 'skip', '--num-heads', '2', '--vae', VAE, '--labels', 'labels.json').status, 0);
  assert.deepEqual(JSON.parse(fs.readFileSync(path.join(dir, 'skip', 'model_index.json'), 'utf8')).id2label, labels);
  const byName = diffuse('generate', '--model', 'skip', '--class', 'c3', '--steps', '2', '--seed', '1', '--out', 'a.png');
  const byId = diffuse('generate', '--model', 'skip', '--class', '3', '--steps', '2', '--seed', '1', '--out', 'b.png');
  assert.equal(byName.status, 0, byName.stderr);
  assert.equal(byId.status, 0, byId.stderr);
  assert.deepEqual(readImage(path.join(dir, 'a.png')).data, readImage(path.join(dir, 'b.png')).data);
});

test('whole-run MACs of Skip-Cache on Skip-DiT-XL/2 256² (50 DDIM steps, CFG) match a count by hand for N = 2…6', async (t) => {
  // calflops convention: linear and conv MACs, per call of batch 2 (CFG), 256 tokens of width 1152.
  const [D, N, B] = [1152, 256, 2];
  const block = B * N * 12 * D * D + B * 6 * D * D;
  const fusion = B * N * 2 * D * D;
  const ends = B * N * 16 * D + B * (256 * D + D * D) + B * 2 * D * D + B * N * D * 32;
  const full = ends + 28 * block + 14 * fusion;
  const cached = ends + 8 * block + 4 * fusion;
  const counter = macCounter({ preset: 'skip-dit-xl-2-256', batch: 1, guidance: 4 });
  const steps = 50;
  const baseline = calflopsMacs((await counter.count(steps, [])).total);
  assert.equal(baseline, steps * full);
  for (let n = 2; n <= 6; n++) {
    const spec = parseAccelSpec(`skip-cache:cache_interval=${n}`);
    const macs = calflopsMacs((await counter.count(steps, [spec])).total);
    const fullCalls = skipCacheFullCalls(spec.params as typeof SKIP_CACHE_DEFAULTS, { calls: steps, timesteps: ddimTimesteps(steps), fullPassCalls: [] }).filter(Boolean).length;
    assert.equal(macs, fullCalls * full + (steps - fullCalls) * cached, `N=${n}`);
    t.diagnostic(`N=${n}: ${(macs / 1e12).toFixed(3)} T, ×${(baseline / macs).toFixed(2)} (${fullCalls} full calls of ${steps})`);
  }
});

/** The DDIM timesteps of DiT's scheduler (leading spacing: 980, 960, …, 0 for 50 steps). */
function ddimTimesteps(steps: number): number[] {
  const stride = 1000 / steps;
  return Array.from({ length: steps }, (_, i) => 1000 - stride - stride * i);
}
