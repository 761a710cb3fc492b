/**
 * What a user of the CLI and the library may expect whatever they type: one clear line naming the
 * flag or option (never a stack trace), checks before any work, bounded numbers, own-key lookups,
 * no setting that silently does nothing, reproducible seeds per image, no leaked files.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createAccelerator, parseAccelSpec, requestAccelSpecs, toAccelSpecs } from '../src/accel/index.ts';
import { plannedMemory } from '../src/runtime/plan.ts';
import type { Executor, ShapedTensor } from '../src/runtime/executor.ts';
import { describe } from '../src/errors.ts';
import { modelName } from '../src/pipelines/model-name.ts';
import { withFlagNames } from '../src/cli/flag-names.ts';
import { withOptionNames } from '../src/util/option-names.ts';
import { FIELD_OF_OPTION } from '../src/serve/job.ts';
import { WORDS_OF_OPTION } from '../src/serve/worker.ts';
import { buildProgram } from '../src/cli/main.ts';
import { loadPipeline } from '../src/pipelines/stable-diffusion.ts';
import { loadDiTPipeline } from '../src/pipelines/dit.ts';
import { loadPixArtPipeline } from '../src/pipelines/pixart.ts';
import { readPipelineFolder } from '../src/weights/diffusers-folder.ts';
import { modelFolder } from '../src/pipelines/reference-model.ts';
import { heldBeside, openRunner } from '../src/bench/runner.ts';
import { totalMemory } from '../src/io/files.ts';
import { OrtExecutor } from '../src/runtime/ort-executor.ts';
import { readJsonObject } from '../src/weights/config.ts';
import { parseUNetConfig } from '../src/models/unet2d-condition.ts';
import { rejectsInputError, tempDir, throwsInputError } from './helpers/files.ts';
import { pngText } from './helpers/png.ts';

const ROOT = path.join(import.meta.dirname, '..');
const TINY = path.join(ROOT, 'test', 'fixtures', 'tiny-sd1');

function diffuse(...args: string[]) {
  const started = performance.now();
  const run = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'diffuse.js'), ...args], { cwd: ROOT, encoding: 'utf8', timeout: 120_000 });
  return { status: run.status, stdout: run.stdout, stderr: run.stderr, seconds: (performance.now() - started) / 1000 };
}

/** Exit 2 (or `status`), one line on stderr starting "diffuse: " with every fragment, no stack (after `progress` lines). */
function refused(run: ReturnType<typeof diffuse>, fragments: string[], status = 2, progress = 0): void {
  assert.equal(run.status, status, run.stderr);
  const lines = run.stderr.trimEnd().split('\n').slice(progress);
  assert.equal(lines.length, 1, `one line: ${run.stderr}`);
  assert.match(lines[0], /^diffuse: /);
  for (const f of fragments) assert.ok(lines[0].includes(f), `${JSON.stringify(f)} in ${lines[0]}`);
}

test('outputs are checked before any work: a missing folder, a folder as the file, a place that takes no files', (t) => {
  const dir = tempDir(t);
  fs.mkdirSync(path.join(dir, 'taken.png'));
  const cases: [string, string[]][] = [
    [path.join(dir, 'nope', 'x.png'), ['--out', 'folder does not exist']],
    [path.join(dir, 'taken.png'), ['--out', 'is a folder']],
    ['/proc/x.png', ['--out', 'cannot write into /proc']],
  ];
  for (const [out, fragments] of cases) {
    // 1000 steps would take minutes: a refusal in seconds shows it came first.
    const run = diffuse('generate', '--prompt', 'a red circle', '--steps', '1000', '--out', out, '--quiet');
    refused(run, fragments);
    assert.ok(run.seconds < 30, `refused after ${run.seconds.toFixed(1)} s`);
  }
  refused(diffuse('bench', '--preset', 'sd15', '--dry-run', '--json', path.join(dir, 'no', 'x.json')), ['--json', 'folder does not exist']);
  refused(diffuse('generate', '--model', TINY, '--prompt', 'x', '--save-latents', '/proc/l.safetensors', '--out', path.join(dir, 'a.png')),
    ['--save-latents', 'cannot write']);
  // A session cache it cannot write would leave every run uncached: refused, not silently ignored.
  refused(diffuse('bench-generate', '--session-cache', '/dev/null/cache', '--size', '64', '--steps', '1'), ['--session-cache', 'cannot be created', 'ENOTDIR']);
  refused(diffuse('bench-generate', '--session-cache', '/proc/sessions', '--size', '64', '--steps', '1'), ['--session-cache', 'cannot be created']);
  assert.deepEqual(fs.readdirSync(dir), ['taken.png'], 'no probe or partial files left');
});

test('an error from the operating system is one line naming the path and the reason, exit 1, before the work', (t) => {
  const file = path.join(tempDir(t), 'a-file');
  fs.writeFileSync(file, '');
  const run = diffuse('bench-generate', '--cache', path.join(file, 'cache'), '--size', '64', '--steps', '1', '--runs', '1');
  refused(run, [path.join(file, 'cache'), 'a part of the path is not a folder (ENOTDIR)'], 1, 1);
  assert.ok(run.seconds < 30, `refused after ${run.seconds.toFixed(1)} s`);
});

test('user text is looked up as own keys only: "toString", "constructor", "__proto__" are no method, knob or preset', () => {
  for (const name of ['toString', 'constructor', '__proto__', 'hasOwnProperty']) {
    throwsInputError(() => parseAccelSpec(`${name}:x=1`), 'accel', 'unknown method');
    throwsInputError(() => parseAccelSpec(`tgate:${name}=1`), `accel tgate:${name}`, 'unknown key');
    throwsInputError(() => toAccelSpecs([{ method: 'tgate', params: { [name]: 1 } }]), 'unknown key');
  }
  refused(diffuse('inspect', '--preset', 'toString'), ['--preset', 'unknown preset']);
  refused(diffuse('bench', '--preset', 'constructor', '--dry-run'), ['--preset', 'unknown preset']);
  refused(diffuse('generate', '--accel', 'valueOf', '--prompt', 'x'), ['--accel', 'unknown method']);
});

test('every number has a range: knobs, flags and config fields refuse values past it at once', async (t) => {
  for (const [spec, where] of [['deepcache:uniform=false,pow=1e20', 'deepcache:pow'], ['tgate:gate_step=99999999999999999999', 'tgate:gate_step'],
    ['tome:sx=1000000', 'tome:sx'], ['attn-reuse:max_map_memory=1e300', 'attn-reuse:max_map_memory']]) {
    throwsInputError(() => parseAccelSpec(spec), `accel ${where}`, 'wrong value', '≤');
  }
  refused(diffuse('generate', '--prompt', 'x', '--threads', '1000'), ['--threads', 'from 1 to 256']);
  refused(diffuse('generate', '--prompt', 'x', '--height', '9007199254740993'), ['--height', 'from 1 to 16384']);
  refused(diffuse('inspect', '--preset', 'sd15', '--size', '100000'), ['--size']);
  assert.throws(() => new OrtExecutor({ param: () => { throw new Error('unused'); } }, { threads: 1e6 }), /threads: wrong value/);

  // Config fields: a layer count that would build graphs for hours, a negative epsilon or padding.
  const unet = readJsonObject(path.join(TINY, 'unet', 'config.json'));
  throwsInputError(() => parseUNetConfig({ ...unet, layers_per_block: 65536 }, 'unet/config.json'), 'layers_per_block', 'from 1 to 64', '65536');
  throwsInputError(() => parseUNetConfig({ ...unet, norm_eps: -1e-5 }, 'unet/config.json'), 'norm_eps', 'in (0, 1)');
  throwsInputError(() => parseUNetConfig({ ...unet, downsample_padding: -1 }, 'unet/config.json'), 'downsample_padding', 'from 0 to 16');
  const dir = tempDir(t);
  fs.cpSync(TINY, dir, { recursive: true });
  const scheduler = path.join(dir, 'scheduler', 'scheduler_config.json');
  fs.writeFileSync(scheduler, JSON.stringify({ ...readJsonObject(scheduler), num_train_timesteps: 2 ** 31 }));
  const pipeline = await loadPipeline(dir);
  try {
    await rejectsInputError(() => pipeline.generate({ prompt: 'x', steps: 2, width: 32, height: 32 }), 'num_train_timesteps', 'from 1 to 100000');
  } finally {
    await pipeline.release();
  }
  const tokenizerConfig = path.join(dir, 'tokenizer', 'tokenizer_config.json');
  fs.writeFileSync(tokenizerConfig, JSON.stringify({ ...readJsonObject(tokenizerConfig), model_max_length: 1e10 }));
  await rejectsInputError(() => loadPipeline(dir), 'model_max_length', 'from 2 to 65536');
});

test('a flag given twice (or with its negation) is refused, not silently overridden', () => {
  refused(diffuse('generate', '--prompt', 'a', '--prompt', 'b'), ['--prompt', 'given twice']);
  refused(diffuse('generate', '--model', TINY, '--prompt', 'a', '--resolution-binning', '--no-resolution-binning'), ['--no-resolution-binning', 'given with --resolution-binning']);
});

test('--version prints the package version', () => {
  const run = diffuse('--version');
  assert.equal(run.status, 0);
  assert.equal(run.stdout.trim(), JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')).version);
});

test('the library names its own options in errors (the CLI maps them to its flags) and takes method names, strings and objects', async () => {
  const pipeline = await loadPipeline('reference');
  try {
    const base = { prompt: 'a red circle', steps: 2, output: 'latent' as const };
    await rejectsInputError(() => pipeline.generate({ ...base, steps: '10' as unknown as number }), 'steps: wrong value', '"10" (a string)');
    await rejectsInputError(() => pipeline.generate({ ...base, guidanceScale: NaN }), 'guidanceScale', 'found NaN');
    await rejectsInputError(() => pipeline.generate({ ...base, accel: 'tgate' as unknown as string[] }), 'accel: wrong value');
    await rejectsInputError(() => pipeline.generate({ ...base, accel: ['tomato'] }), 'accel: unknown method');
    // diffusers ignores it silently; we say so.
    const { warnings } = await pipeline.generate({ ...base, guidanceScale: 1, negativePrompt: 'blurry' });
    assert.ok(warnings.some((w) => w.startsWith('negativePrompt has no effect')), warnings.join('; '));
    // The same method three ways gives the same run.
    const request = { ...base, steps: 6, seed: 3, scheduler: 'ddim' as const };
    const byName = await pipeline.generate({ ...request, accel: ['tgate'] });
    const byString = await pipeline.generate({ ...request, accel: ['tgate:gate_step=auto'] });
    const byObject = await pipeline.generate({ ...request, accel: [{ method: 'tgate', params: { gate_step: 2 } }] });
    assert.deepEqual(byName.latents.data, byString.latents.data);
    assert.deepEqual(byName.latents.data, byObject.latents.data, 'auto is 2/5 of 6 calls, rounded: 2');
  } finally {
    await pipeline.release();
  }
  assert.equal(withFlagNames('steps: wrong value; expected an integer in [1, 1000], found "10" (a string)'), '--steps: wrong value; expected an integer in [1, 1000], found "10" (a string)');
  assert.equal(withFlagNames('width/height: must be multiples of 8'), '--width/--height: must be multiples of 8');
  assert.equal(withFlagNames('width/height: must be multiples of 8', 'bench'), '--size: must be multiples of 8', 'bench sets both by --size');
  assert.equal(withFlagNames('accel tgate:gate_step: wrong value'), '--accel tgate:gate_step: wrong value');
  assert.equal(withFlagNames('/some/file.json: steps_offset: wrong value'), '/some/file.json: steps_offset: wrong value');
  // Option names inside the text too, but not in quoted text (the user's own words) nor in names that are not options.
  assert.equal(withFlagNames('negativePrompt has no effect: guidanceScale 1 ≤ 1 turns it off'), '--negative-prompt has no effect: --guidance 1 ≤ 1 turns it off');
  assert.equal(withFlagNames('prompt truncated (maxSequenceLength): dropped from "a guidanceScale…"'), '--prompt truncated (--max-sequence-length): dropped from "a guidanceScale…"');
  assert.equal(withFlagNames('timeCondProjDim: set; guidanceScale used'), 'timeCondProjDim: set; --guidance used');
  assert.equal(withOptionNames('negativePrompt has no effect: guidanceScale 1 ≤ 1', FIELD_OF_OPTION), 'negative_prompt has no effect: guidance 1 ≤ 1');
  assert.equal(withOptionNames('imagesPerPrompt/classLabels: x', FIELD_OF_OPTION), 'batch/class: x');
  // The service's workers plan within their share of memory, which only the server's operator sets.
  assert.equal(withOptionNames('width/height: needs about 9 GiB; expected a smaller size, or a higher memoryLimit', WORDS_OF_OPTION),
    'width/height: needs about 9 GiB; expected a smaller size, or a higher memory per worker (a server with fewer --workers or more memory)');
  // Quoted user text stays as given, escaped quotes and all; a file name is not an option; a sentence's end is.
  assert.equal(withOptionNames('prompt: found "say \\"negativePrompt\\" twice" in negativePrompt.txt, not guidanceScale.', FIELD_OF_OPTION),
    'prompt: found "say \\"negativePrompt\\" twice" in negativePrompt.txt, not guidance.');
  // A service request gives a schedule inline; a file name is the command line's.
  assert.deepEqual(requestAccelSpecs(['attn-reuse:schedule=1101']).map((s) => s.params.schedule), ['1101']);
  throwsInputError(() => requestAccelSpecs(['attn-reuse:schedule=plan.json']), 'accel attn-reuse:schedule', 'names a file', 'found "plan.json"');
  throwsInputError(() => requestAccelSpecs(['fora', 'fora']), 'accel', 'fora given twice');
  assert.equal(describe([1, NaN, { a: -Infinity }]), '[1,NaN,{"a":-Infinity}]');
});

test('settings that would do nothing are refused; defaults fit every scheduler and step count', async () => {
  const pipeline = await loadPipeline('reference');
  try {
    const base = { prompt: 'a red circle', steps: 10, output: 'latent' as const, seed: 1 };
    await rejectsInputError(() => pipeline.generate({ ...base, accel: ['tgate:gate_step=999'] }), 'accel tgate:gate_step', 'no model call after the gate', 'gate_step < 10');
    await rejectsInputError(() => pipeline.generate({ ...base, accel: ['tgate:gate_step=10'] }), 'accel tgate:gate_step');
    for (const scheduler of ['euler', 'pndm', 'ddim', 'dpm++2m'] as const) {
      for (const accel of ['tgate', 'attn-reuse', 'deepcache', 'fora']) await pipeline.generate({ ...base, scheduler, accel: [accel] });
    }
  } finally {
    await pipeline.release();
  }
  assert.ok(createAccelerator(['tgate', 'deepcache'], 4));
});

test('each image of a batch carries the seed that regenerates it alone (seed + index), ancestral noise included', async () => {
  const pipeline = await loadPipeline(TINY);
  try {
    const request = { prompt: 'a red circle', steps: 3, width: 32, height: 32, output: 'latent' as const, scheduler: 'euler-a' as const };
    const batch = await pipeline.generate({ ...request, seed: 5, imagesPerPrompt: 3 });
    assert.deepEqual(batch.seeds, [5, 6, 7]);
    const alone = await pipeline.generate({ ...request, seed: 7 });
    const plane = alone.latents.data.length;
    assert.deepEqual(batch.latents.data.subarray(2 * plane, 3 * plane), alone.latents.data);
  } finally {
    await pipeline.release();
  }
});

test('PNGs record the model by name, not the user\'s folders', () => {
  assert.equal(modelName('/home/me/models/my-sd15', '/home/me/models/my-sd15'), 'my-sd15');
  assert.equal(modelName('/home/me/.cache/huggingface/hub/models--PixArt-alpha--PixArt-XL-2-512x512/snapshots/abc123', 'x'), 'PixArt-alpha/PixArt-XL-2-512x512');
  assert.equal(modelName('/anything', undefined), 'reference');
  assert.equal(modelName('/anything', 'reference'), 'reference');
});

test('img2img from the CLI: the PNG records strength and the input files by name only, never their folders', (t) => {
  const dir = tempDir(t);
  const init = path.join(dir, 'private', 'holiday.png');
  fs.mkdirSync(path.dirname(init));
  fs.copyFileSync(path.join(ROOT, 'test', 'fixtures', 'goldens', 'img2img', 'init-150x100.png'), init);
  const out = path.join(dir, 'out.png');
  const run = diffuse('generate', '--model', TINY, '--prompt', 'a cat', '--init-image', init, '--strength', '0.5', '--steps', '4', '--seed', '3', '--out', out, '--quiet');
  assert.equal(run.status, 0, run.stderr);
  const text = pngText(fs.readFileSync(out));
  assert.match(text.parameters, /Size: 144x96, Model: tiny-sd1, Denoising strength: 0\.5$/);
  const json = JSON.parse(text['diffusion.ts']) as Record<string, unknown>;
  assert.equal(json.initImage, 'holiday.png');
  assert.equal(json.strength, 0.5);
  assert.ok(!text['diffusion.ts'].includes(dir) && !text.parameters.includes(dir), 'no folder of the user in the PNG');
  refused(diffuse('generate', '--model', TINY, '--prompt', 'x', '--strength', '0.5', '--out', out), ['--strength', '--init-image']);
  refused(diffuse('generate', '--model', TINY, '--prompt', 'x', '--init-image', path.join(dir, 'none.png'), '--out', out), ['none.png', 'no such file'], 2);
  refused(diffuse('generate', '--model', TINY, '--prompt', 'x', '--init-image', init, '--strength', '0.1', '--steps', '5', '--out', out), ['--strength', 'runs no step of 5']);
  refused(diffuse('generate', '--model', path.join(ROOT, 'test', 'fixtures', 'tiny-dit'), '--class', '1', '--init-image', init, '--out', out), ['--init-image', 'does not apply']);
});

test('a run that cannot fit in memory is refused with its estimate before it starts; the limit can be set', async (t) => {
  const dir = tempDir(t);
  let run = diffuse('generate', '--model', TINY, '--prompt', 'x', '--width', '16384', '--height', '16384', '--out', path.join(dir, 'x.png'));
  refused(run, ['--width/--height', 'needs about', 'attention scores', 'over the limit of', 'this machine\'s memory', 'or a higher --memory-limit', 'found 16384x16384']);
  assert.ok(run.seconds < 30, `refused after ${run.seconds.toFixed(1)} s`);
  run = diffuse('generate', '--model', TINY, '--prompt', 'x', '--width', '64', '--height', '64', '--memory-limit', '0.001', '--out', path.join(dir, 'x.png'));
  refused(run, ['--width/--height', 'over the limit of 0.0 GiB']);
  assert.deepEqual(fs.readdirSync(dir), []);

  // What methods keep between model calls counts too: attention maps for reuse, cached segment outputs.
  const pipeline = await loadPipeline('reference');
  try {
    const request = { prompt: 'a red circle', steps: 2, output: 'latent' as const, width: 384, height: 384, memoryLimit: 3 * 2 ** 30 };
    await pipeline.generate(request);
    await rejectsInputError(() => pipeline.generate({ ...request, accel: ['attn-reuse:fp16=false'] }), 'width/height',
      'kept by the accelerations between model calls 4.', 'accelerations that keep less (accel)');
    const u = pipeline.unet.model;
    const denoise = (exec: Executor<ShapedTensor>) => u.forwardShapes(exec, { batch: 2, latentHeight: 48, latentWidth: 48 });
    const kept = (accel: string) => plannedMemory(createAccelerator([accel], 10)!, denoise, { steps: 10, calls: 10 });
    assert.equal(await kept('attn-reuse:fp16=false'), 2 * await kept('attn-reuse'), 'maps in float32 take twice the bytes');
    assert.equal(await kept('attn-reuse:reuse=0'), 0, 'no call reuses: nothing is kept');
    assert.ok(await kept('attn-reuse:max_map_memory=100') <= 100 * 2 ** 20);
    assert.ok(await kept('tgate') > 0 && await kept('fora') > await kept('tgate'), 'TGATE caches attention outputs; FORA every sub-layer\'s');
    // TGATE holds a self-attention output at the CFG batch (call warm_up) and its CFG mean (the gate) at once: 1.5 of one,
    // half of one where the gate is the first call; cross-attention only the mean (all that TGATE v1 keeps).
    const v1 = await kept('tgate:cache_self_attn=false');
    assert.equal(await kept('tgate') - v1, 3 * (await kept('tgate:gate_step=1') - v1));
    // FORA caches at whatever batch every call runs: one value per sub-layer, with CFG or without.
    const fora = createAccelerator(['fora'], 10)!;
    assert.equal(await plannedMemory(fora, denoise, { steps: 10, calls: 10 }, true), await plannedMemory(fora, denoise, { steps: 10, calls: 10 }, false));
  } finally {
    await pipeline.release();
  }
});

test('check(): every refusal generate would make before its first model call, memory included, without running a model', async () => {
  const sd = await loadPipeline('reference');
  const dit = loadDiTPipeline(readPipelineFolder(modelFolder('reference-dit')));
  const pixart = loadPixArtPipeline(readPipelineFolder(path.join(ROOT, 'test', 'fixtures', 'tiny-pixart-alpha')));
  try {
    const request = { prompt: 'a red circle', steps: 2, width: 384, height: 384, memoryLimit: 3 * 2 ** 30 };
    const over = { ...request, accel: ['attn-reuse:fp16=false'] };
    // The same refusal as generate's, in no time: no session is built, nothing is denoised.
    const started = performance.now();
    await rejectsInputError(() => sd.check(over), 'width/height', 'kept by the accelerations between model calls 4.');
    await rejectsInputError(() => sd.generate(over), 'width/height', 'kept by the accelerations between model calls 4.');
    assert.deepEqual(await sd.check({ ...request, latents: { data: new Float32Array(4 * 96 * 96), dims: [1, 4, 96, 96] }, seed: 3, scheduler: 'ddim' }),
      ['seed has no effect: the starting latents are given and ddim draws no noise at any step'], 'its warnings');
    await rejectsInputError(() => sd.check({ ...request, stepz: 3 } as object as typeof request), 'stepz');
    // What the methods find rehearsing a call on shapes (attn-reuse's map budget) is a check too, refusal and warning.
    await rejectsInputError(() => sd.check({ ...request, accel: ['attn-reuse:max_map_memory=0.01'] }), 'accel attn-reuse:max_map_memory', 'no layer');
    assert.match((await sd.check({ ...request, accel: ['attn-reuse:max_map_memory=10'] })).join('\n'), /max_map_memory leaves \d+ of \d+ layers computing every call/);
    assert.ok(performance.now() - started < 5000, `checks took ${(performance.now() - started).toFixed(0)} ms`);
    await rejectsInputError(() => dit.check({ classLabels: [1], steps: 2, memoryLimit: 1 }), 'classLabels', 'over the limit of 0.0 GiB');
    assert.deepEqual(await dit.check({ classLabels: [1], steps: 2 }), []);
    await rejectsInputError(() => pixart.check({ prompt: 'x', steps: 2, width: 64, height: 64, memoryLimit: 1 }), 'width/height', 'over the limit of 0.0 GiB');
  } finally {
    await Promise.all([sd.release(), dit.release(), pixart.release()]);
  }
});

test('bench and tune check every setting (memory above all) before the first runs; a climb leaves out the plans that cannot run', async (t) => {
  const dir = tempDir(t);
  const json = path.join(dir, 'sweep.json');
  // The baseline and DeepCache fit in 3 GiB at 384², float32 attention maps do not: refused before any image, naming the setting.
  let run = diffuse('bench', '--model', 'reference', '--fidelity', '--size', '384', '--steps', '4', '--count', '1', '--memory-limit', '3', '--json', json,
    '--sweep', 'deepcache:cache_interval=2', '--sweep', 'attn-reuse:fp16=false');
  refused(run, ['--sweep: the setting "attn-reuse:reuse=auto,fp16=false" cannot run', 'kept by the accelerations', 'over the limit of 3.0 GiB', '--memory-limit']);
  assert.ok(run.seconds < 30, `refused after ${run.seconds.toFixed(1)} s`);
  run = diffuse('bench', '--model', 'reference', '--size', '384', '--steps', '4', '--accel', 'attn-reuse:fp16=false', '--memory-limit', '3', '--out', path.join(dir, 'c.png'));
  refused(run, ['diffuse: --size: needs about', 'over the limit of 3.0 GiB']);
  assert.ok(!run.stderr.includes('timed run') && !run.stderr.includes('warm-up'), 'refused before the baseline ran');
  assert.deepEqual(fs.readdirSync(dir), []);
  refused(diffuse('bench', '--preset', 'sd15', '--dry-run', '--memory-limit', '3'), ['--memory-limit']);
  for (const command of [['bench', '--accel', 'tgate', '--out', path.join(dir, 'x.png')], ['tune', '--steps', '4', '--reuse', '1', '--count', '1', '--out', path.join(dir, 'x.json')]]) {
    for (const bad of ['-1', '0', 'lots']) refused(diffuse(...command, '--model', 'reference', '--memory-limit', bad), ['--memory-limit']);
  }
  // tune: PHAST's schedules are checked before the baseline; a --speedup climb reports a plan over the limit as not taken and goes on.
  run = diffuse('tune', '--steps', '4', '--reuse', '1', '--count', '1', '--memory-limit', '0.001', '--out', path.join(dir, 'schedule.json'));
  refused(run, ['over the limit of 0.0 GiB', '--memory-limit']);
  assert.deepEqual(fs.readdirSync(dir), []);
});

test('a load option nothing reads (a misspelling) is refused by name, before any file is read', async () => {
  await rejectsInputError(() => loadPipeline('reference', { devise: 'webgpu' } as object), 'devise', 'unknown load option', 'device, threads, sessionCache, precision, variant');
  assert.throws(() => loadDiTPipeline(readPipelineFolder(modelFolder('reference-dit')), { thread: 2 } as object), /thread: unknown load option/);
});

test('failed loads leave no file open; release() after a failed segment releases the rest', async (t) => {
  const dir = tempDir(t);
  fs.cpSync(TINY, dir, { recursive: true });
  // The VAE config is broken: the U-Net's weights are open by the time it is read.
  const vaeConfig = path.join(dir, 'vae', 'config.json');
  fs.writeFileSync(vaeConfig, JSON.stringify({ ...readJsonObject(vaeConfig), layers_per_block: 0 }));
  const open = () => fs.readdirSync('/proc/self/fd').length;
  const before = open();
  for (let i = 0; i < 20; i++) await rejectsInputError(() => loadPipeline(dir), 'layers_per_block');
  assert.ok(open() <= before + 2, `file descriptors ${before} → ${open()}`);

  const exec = new OrtExecutor({ param: (name, shape) => ({ name, shape, dtype: 'F32' }) }, { threads: 1 });
  await assert.rejects(exec.run('broken', () => { throw new Error('cannot build'); }, {}), /cannot build/);
  await exec.release();
});

test('Ctrl-C (SIGINT) stops a generation after the current step: exit 130, one line, no output file', async (t) => {
  const dir = tempDir(t);
  const out = path.join(dir, 'x.png');
  const child = spawn(process.execPath, [path.join(ROOT, 'bin', 'diffuse.js'), 'generate', '--prompt', 'a red circle', '--steps', '1000', '--out', out],
    { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  await new Promise((resolve) => setTimeout(resolve, 4000));
  child.kill('SIGINT');
  const status = await new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  assert.equal(status, 130, stderr);
  assert.match(stderr.trim(), /^diffuse: interrupted \(SIGINT\)$/);
  assert.deepEqual(fs.readdirSync(dir), []);
});

test('Ctrl-C in a terminal, during the progress bar: the cursor and line wrapping come back, exit 130', { skip: !fs.existsSync('/usr/bin/script') && 'needs script(1) for a pseudo-terminal' }, async (t) => {
  const dir = tempDir(t);
  const out = path.join(dir, 'x.png');
  const command = [process.execPath, path.join(ROOT, 'bin', 'diffuse.js'), 'generate', '--prompt', 'a red circle', '--steps', '1000', '--out', out]
    .map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ');
  // script(1) runs the command on a pseudo-terminal; a ^C written to it is the terminal's interrupt.
  const child = spawn('/usr/bin/script', ['-qfec', command, '/dev/null'], { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'] });
  let output = '';
  child.stdout.on('data', (d) => (output += d));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no progress bar within 60 s: ${output}`)), 60_000);
    const poll = setInterval(() => {
      if (/denoising .* [1-9]\d*\/1000 steps/.test(output)) {
        clearInterval(poll);
        clearTimeout(timer);
        resolve();
      }
    }, 50);
  });
  child.stdin.write('\x03');
  const status = await new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  assert.equal(status, 130, output);
  const hidden = output.lastIndexOf('\x1b[?25l');
  assert.ok(hidden >= 0, 'the progress bar hid the cursor');
  const rest = output.slice(hidden);
  assert.ok(rest.includes('\x1b[?25h') && rest.includes('\x1b[?7h'), `cursor shown and wrapping on after the bar: ${JSON.stringify(rest.slice(-200))}`);
  assert.match(output.trimEnd().split(/\r?\n/).at(-1)!, /diffuse: interrupted \(SIGINT\)$/);
  assert.deepEqual(fs.readdirSync(dir), []);
});

test('the package ships what users need (no tests, docs or stray images), and npm prints no config warning', () => {
  const run = spawnSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: ROOT, encoding: 'utf8' });
  assert.equal(run.status, 0, run.stderr);
  assert.doesNotMatch(run.stderr, /Unknown (project|user|env) config/);
  const [info] = JSON.parse(run.stdout) as { size: number; files: { path: string }[] }[];
  const files = info.files.map((f) => f.path);
  assert.deepEqual(files.filter((f) => /^(test|docs|\.scratch|\.cache)\//.test(f) || (f.endsWith('.png') && !f.startsWith('assets/'))), []);
  for (const needed of ['bin/diffuse.js', 'src/cli/main.ts', 'assets/reference-model/model_index.json', 'assets/clip-tokenizer/vocab.json']) {
    assert.ok(files.includes(needed), `${needed} is shipped`);
  }
  assert.ok(!files.includes('assets/reference-skip-dit.pt'), 'the Skip-DiT checkpoint is a training artefact; its converted folder ships');
  // Three embedded models: the U-Net reference (~17 MB) and the DiT / Skip-DiT pair (~13 and ~10 MB).
  assert.ok(info.size < 40e6, `packed size ${(info.size / 1e6).toFixed(1)} MB`);
});

test('one vocabulary: a flag shared by subcommands is spelled and shaped the same in each', () => {
  // Allowed differences, each with its reason: a list where a command times several sizes, an
  // optional file where JSON is the whole output, the kind of file an --out writes.
  const variants: Record<string, string[]> = {
    '--size': ['--size <WxH>', '--size <WxH,...>'], '--json': ['--json <file>', '--json [file]'], '--out': ['--out <file.png>', '--out <file.json>', '--out <dir>'],
  };
  const seen = new Map<string, Set<string>>();
  for (const command of buildProgram().commands) {
    for (const option of command.options) {
      if (!seen.has(option.long!)) seen.set(option.long!, new Set());
      seen.get(option.long!)!.add(option.flags);
    }
  }
  for (const [long, flags] of seen) {
    const allowed = variants[long] ?? [...flags].slice(0, 1);
    for (const f of flags) assert.ok(allowed.includes(f), `${long}: ${[...flags].join(' | ')}`);
  }
  for (const command of ['inspect', 'bench', 'generate', 'bench-generate']) assert.ok(seen.get('--size')!.size > 0 && buildProgram().commands.find((c) => c.name() === command)!.options.some((o) => o.long === '--size'), `${command} takes --size`);
});

test('--size works in generate as in the other commands, and JSON goes to stdout with -', (t) => {
  const dir = tempDir(t);
  let run = diffuse('generate', '--model', TINY, '--prompt', 'x', '--steps', '1', '--size', '48x32', '--out', path.join(dir, 'a.png'), '--quiet');
  assert.equal(run.status, 0, run.stderr);
  refused(diffuse('generate', '--model', TINY, '--prompt', 'x', '--size', '64', '--width', '64'), ['--size', 'given with --width/--height']);
  run = diffuse('bench', '--preset', 'sd15', '--dry-run', '--size', '256', '--json', '-');
  assert.equal(run.status, 0, run.stderr);
  assert.ok(JSON.parse(run.stdout.slice(run.stdout.indexOf('\n{') + 1)));
  run = diffuse('inspect', '--preset', 'sd15', '--json', path.join(dir, 'sd15.json'));
  assert.equal(run.status, 0, run.stderr);
  assert.ok(JSON.parse(fs.readFileSync(path.join(dir, 'sd15.json'), 'utf8')));
});

test('generate takes a seed list or range and a prompts file: one run per seed, each PNG with its own prompt and seed', (t) => {
  const dir = tempDir(t);
  const prompts = path.join(dir, 'prompts.txt');
  fs.writeFileSync(prompts, 'a red circle\n\n# a comment\na blue square\n');
  const run = diffuse('generate', '--model', TINY, '--prompts', prompts, '--seed', '3,10-11', '--steps', '1', '--size', '32', '--out', path.join(dir, 'x.png'), '--quiet');
  assert.equal(run.status, 0, run.stderr);
  const pngs = fs.readdirSync(dir).filter((f) => f.endsWith('.png')).sort((a, b) => Number(/-(\d+)/.exec(a)![1]) - Number(/-(\d+)/.exec(b)![1]));
  assert.equal(pngs.length, 6);
  const settings = pngs.map((f) => JSON.parse(pngText(new Uint8Array(fs.readFileSync(path.join(dir, f))))['diffusion.ts']) as { prompt: string; seed: number });
  // Per run: the prompts in file order, image b with seed + b.
  assert.deepEqual(settings.map((s) => [s.prompt, s.seed]),
    [['a red circle', 3], ['a blue square', 4], ['a red circle', 10], ['a blue square', 11], ['a red circle', 11], ['a blue square', 12]]);
  refused(diffuse('generate', '--prompt', 'x', '--prompts', prompts), ['--prompts', 'given with --prompt']);
  refused(diffuse('generate', '--prompt', 'x', '--seed', '5-2'), ['--seed']);
});

test('one validated config for every reader: inspect and bench --dry-run refuse a broken folder config with the same line', (t) => {
  const dir = tempDir(t);
  fs.cpSync(TINY, dir, { recursive: true });
  const file = path.join(dir, 'unet', 'config.json');
  const config = readJsonObject(file);
  for (const blockOutChannels of [[-4, 8], [4.5, 8], 'x']) {
    fs.writeFileSync(file, JSON.stringify({ ...config, block_out_channels: blockOutChannels }));
    const inspected = diffuse('inspect', dir);
    const counted = diffuse('bench', '--model', dir, '--dry-run');
    refused(inspected, ['block_out_channels']);
    assert.equal(counted.stderr, inspected.stderr);
    assert.equal(counted.status, 2);
  }
});

test('a folder of a pipeline class no pipeline here runs is refused by every command with one line naming _class_name and the classes run', (t) => {
  const dir = tempDir(t);
  fs.cpSync(TINY, dir, { recursive: true });
  const index = path.join(dir, 'model_index.json');
  fs.writeFileSync(index, JSON.stringify({ ...readJsonObject(index), _class_name: 'StableDiffusionInpaintPipeline' }));
  const fragments = [`${index}: _class_name`, 'unsupported pipeline', 'StableDiffusionPipeline', 'PixArtSigmaPipeline', 'DiTPipeline', 'found StableDiffusionInpaintPipeline'];
  refused(diffuse('generate', '--model', dir, '--prompt', 'x', '--steps', '1', '--out', path.join(dir, 'a.png')), fragments);
  // bench --dry-run counts only runs a pipeline here could make: it no longer counts this folder as a U-Net.
  refused(diffuse('bench', '--model', dir, '--dry-run'), fragments);
  refused(diffuse('bench', '--model', dir, '--accel', 'tgate', '--steps', '2'), fragments);
  assert.ok(!fs.existsSync(path.join(dir, 'a.png')));
});

test('bad values for the new inputs: --memory-limit, memoryLimit, --prompts, --json, --seed', async (t) => {
  const dir = tempDir(t);
  refused(diffuse('generate', '--prompt', 'x', '--memory-limit', '-1'), ['--memory-limit']);
  refused(diffuse('generate', '--prompt', 'x', '--memory-limit', 'lots'), ['--memory-limit']);
  refused(diffuse('generate', '--prompts', path.join(dir, 'missing.txt')), [path.join(dir, 'missing.txt'), 'cannot read the prompt file']);
  fs.writeFileSync(path.join(dir, 'empty.txt'), '\n# only a comment\n');
  refused(diffuse('generate', '--prompts', path.join(dir, 'empty.txt')), ['empty.txt', 'no prompts']);
  fs.writeFileSync(path.join(dir, 'many.txt'), Array.from({ length: 65 }, (_, i) => `a red circle ${i}`).join('\n'));
  refused(diffuse('generate', '--prompts', path.join(dir, 'many.txt')), ['--prompts: 65 prompts in', 'at most 64']);
  refused(diffuse('inspect', '--preset', 'sd15', '--json', path.join(dir, 'no', 'x.json')), ['--json', 'folder does not exist']);
  refused(diffuse('generate', '--prompt', 'x', '--seed', '1,,2'), ['--seed']);
  refused(diffuse('generate', '--prompt', 'x', '--seed', '0-5000'), ['--seed', 'at most 1000']);
  const pipeline = await loadPipeline('reference');
  try {
    await rejectsInputError(() => pipeline.generate({ prompt: 'x', steps: 2, output: 'latent', memoryLimit: -5 }), 'memoryLimit', 'a positive number of bytes');
  } finally {
    await pipeline.release();
  }
  assert.deepEqual(fs.readdirSync(dir).sort(), ['empty.txt', 'many.txt']);
});

test('library requests: an option the pipeline does not read is refused by name; latents, output, onStep, signal, micro-conditioning and device are checked', async (t) => {
  const sd = await loadPipeline(TINY);
  t.after(() => sd.release());
  const dit = loadDiTPipeline(readPipelineFolder(path.join(ROOT, 'test', 'fixtures', 'tiny-dit')));
  t.after(() => dit.release());
  const pixart = loadPixArtPipeline(readPipelineFolder(path.join(ROOT, 'test', 'fixtures', 'tiny-pixart-alpha')));
  t.after(() => pixart.release());
  const base = { prompt: 'x', steps: 2, width: 32, height: 32, output: 'latent' as const };
  type Loose = Parameters<typeof sd.generate>[0] & Record<string, unknown>;
  const ask = (request: Record<string, unknown>) => sd.generate(request as Loose);
  // Another family's option, a typo, SDXL's micro-conditioning on an SD 1.x folder: each would do nothing.
  await rejectsInputError(() => ask({ ...base, maxSequenceLength: 8 }), 'maxSequenceLength', 'not an option of StableDiffusionPipeline requests', 'guidanceRescale');
  await rejectsInputError(() => ask({ ...base, guidance: 3 }), 'guidance:', 'guidanceScale');
  await rejectsInputError(() => ask({ ...base, originalSize: [256, 256] }), 'originalSize', 'not an option');
  await rejectsInputError(() => dit.generate({ classLabels: [1], steps: 2, output: 'latent', width: 512, prompt: 'x' } as Parameters<typeof dit.generate>[0]), 'width', 'DiTPipeline');
  await rejectsInputError(() => pixart.generate({ ...base, guidanceRescale: 0.7 } as Parameters<typeof pixart.generate>[0]), 'guidanceRescale', 'PixArtAlphaPipeline');
  await rejectsInputError(() => pixart.generate({ ...base, resolutionBinning: 'false' } as unknown as Parameters<typeof pixart.generate>[0]), 'resolutionBinning', 'true or false');
  // Latents: shape, then exactly that many finite float32 values.
  await rejectsInputError(() => ask({ ...base, latents: { dims: [1, 4, 4, 4], data: new Float32Array(3) } }), 'latents.data', 'a Float32Array of 64 values', 'found 3 values');
  await rejectsInputError(() => ask({ ...base, latents: 'x' }), 'latents', 'dims');
  await rejectsInputError(() => ask({ ...base, latents: { dims: [1, 4, 4, 4], data: new Float32Array(64).fill(NaN) } }), 'latents.data', 'not finite', 'NaN at index 0');
  await rejectsInputError(() => ask({ ...base, output: 'latents' }), 'output', '"image" or "latent"');
  await rejectsInputError(() => ask({ ...base, onStep: 'x' }), 'onStep', 'a function');
  await rejectsInputError(() => ask({ ...base, signal: new AbortController() }), 'signal', 'AbortSignal');
  // Guidance rescale acts on the guided prediction: without CFG it is said to do nothing, as a negative prompt is.
  const { warnings } = await ask({ ...base, guidanceScale: 1, guidanceRescale: 0.5 });
  assert.ok(warnings.some((w) => w.startsWith('guidanceRescale has no effect: guidanceScale 1 ≤ 1')), warnings.join('; '));
  const xl = await loadPipeline(path.join(ROOT, 'test', 'fixtures', 'tiny-sdxl'));
  t.after(() => xl.release());
  await rejectsInputError(() => xl.generate({ ...base, originalSize: [1024] as unknown as [number, number] }), 'originalSize', 'a pair of finite numbers', '[1024]');
  await xl.generate({ ...base, originalSize: [64, 64], cropTopLeft: [0, 0] });
  await rejectsInputError(() => loadPipeline(TINY, { device: 'cuda' as 'cpu' }), 'device', 'unknown device', 'cpu or webgpu', '"cuda"');
});

test('a bench or tune run counts the weights of a pipeline held beside it (fp32 and int8 at once)', async () => {
  const runner = await openRunner(modelFolder('reference'));
  try {
    assert.ok(runner.residentBytes > 0);
    const request = { prompt: 'x', steps: 1, guidanceScale: 5, seed: 1, width: 64, height: 64, batch: 1, output: 'latent' as const };
    await runner.run({ ...request, memoryLimit: heldBeside([runner]) });
    const big = { ...runner, residentBytes: totalMemory() - 2 ** 20 };
    await rejectsInputError(() => runner.run({ ...request, memoryLimit: heldBeside([big]) }), 'width/height', 'over the limit of 0.0 GiB');
  } finally {
    await runner.release();
  }
});
