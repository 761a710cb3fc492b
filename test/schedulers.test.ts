/**
 * Schedulers against diffusers v0.40.0 (goldens from tools/reference/make_scheduler_goldens.py).
 *
 * Every case is checked twice with the recorded model outputs (and noise): step by step from the
 * golden sample of each step ("teacher-forced", each step's own error) and as a free-running chain
 * from the initial sample (errors accumulate). Both must stay within 1e-5 relative per step.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { InputError } from '../src/errors.ts';
import { createScheduler, SCHEDULER_NAMES, type Scheduler } from '../src/schedulers/index.ts';
import { SafetensorsFile } from '../src/weights/safetensors.ts';
import { relativeError } from './helpers/compare.ts';

const here = path.dirname(fileURLToPath(import.meta.url));
const GOLDENS = path.join(here, 'fixtures', 'goldens', 'schedulers');
const TOL = 1e-5;

/**
 * The one exception: with rescale_betas_zero_snr, Euler's first step starts at sigma_max =
 * sqrt(2^24 - 1), which torch's float32 sqrt rounds to 4096.0 while the correctly rounded value is
 * 4095.99976; that step cancels ~4096-sized terms down to ~18, so this one-ulp difference shows as
 * ~2.3e-5 relative (diffusers' own float32 result is 1.3e-5 from exact arithmetic there). In a
 * free-running chain that first-step difference carries on into the later steps.
 */
function tolerance(c: GoldenCase, i: number, freeRunning = false): number {
  return c.config.rescale_betas_zero_snr === true && c.scales_input && (i === 0 || freeRunning) ? 3e-5 : TOL;
}

interface GoldenCase {
  id: string;
  variant: string;
  class: string;
  name: string | null;
  config: Record<string, unknown>;
  steps: number;
  eta: number;
  timesteps: number[];
  init_noise_sigma: number;
  stochastic: boolean;
  scales_input: boolean;
  add_noise_index: number;
  /** When the model output is wider than the sample: DDPM's learned variance, [B, 2C, ...]. */
  model_output_shape?: number[];
}

const index = JSON.parse(fs.readFileSync(path.join(GOLDENS, 'index.json'), 'utf8')) as { cases: GoldenCase[]; shape: number[] };
const file = SafetensorsFile.open(path.join(GOLDENS, 'schedulers.safetensors'));
const size = index.shape.reduce((a, b) => a * b, 1);

/** Row r of a [T, ...shape] tensor. */
function row(all: Float32Array, r: number): Float32Array {
  return all.subarray(r * size, (r + 1) * size);
}

/**
 * Row r of the recorded model outputs, split into the prediction and (for a learned variance,
 * the second half of each batch row's channels) the predicted variance.
 */
function modelRow(c: GoldenCase, all: Float32Array, r: number): { prediction: Float32Array; variance?: Float32Array } {
  const shape = c.model_output_shape ?? index.shape;
  const width = shape.reduce((a, b) => a * b, 1);
  const out = all.subarray(r * width, (r + 1) * width);
  if (width === size) return { prediction: out };
  const per = width / shape[0];
  const half = (second: number) => {
    const part = new Float32Array(size);
    for (let b = 0; b < shape[0]; b++) part.set(out.subarray(b * per + second * (per / 2), b * per + (second + 1) * (per / 2)), (b * per) / 2);
    return part;
  };
  return { prediction: half(0), variance: half(1) };
}

function build(c: GoldenCase): Scheduler {
  return createScheduler({ name: c.name ?? undefined, config: c.config, configFile: `${c.id}/scheduler_config.json`, steps: c.steps, eta: c.eta });
}

let zeroSnrFirst = 0;
let zeroSnrFree = 0;
const worst = new Map<string, { forced: number; free: number; timestep: number; cases: number }>();

for (const c of index.cases) {
  test(`scheduler ${c.id} (${c.class}${c.name ? ` as ${c.name}` : ' from _class_name'})`, () => {
    const s = build(c);
    assert.equal(s.className, c.class);
    assert.equal(s.stochastic, c.stochastic);

    assert.equal(s.timesteps.length, c.timesteps.length, 'number of timesteps');
    let tsErr = 0;
    s.timesteps.forEach((t, i) => {
      const err = Math.abs(t - c.timesteps[i]) / Math.max(1, Math.abs(c.timesteps[i]));
      tsErr = Math.max(tsErr, err);
      assert.ok(err <= 1e-6, `timestep ${i}: ${t} vs ${c.timesteps[i]}`);
    });
    assert.ok(Math.abs(s.initNoiseSigma - c.init_noise_sigma) <= 1e-6 * Math.max(1, c.init_noise_sigma),
      `init_noise_sigma ${s.initNoiseSigma} vs ${c.init_noise_sigma}`);

    const sample0 = file.readFloat32(`${c.id}.sample0`);
    const mo = file.readFloat32(`${c.id}.model_output`);
    const prev = file.readFloat32(`${c.id}.prev_sample`);
    const scaled = c.scales_input ? file.readFloat32(`${c.id}.scaled_input`) : undefined;
    const noise = c.stochastic ? file.readFloat32(`${c.id}.noise`) : undefined;
    const T = c.timesteps.length;

    // Teacher-forced: each step from the golden sample.
    let forced = 0;
    let state = s.initialState;
    for (let i = 0; i < T; i++) {
      const x = i === 0 ? sample0 : row(prev, i - 1);
      const input = s.scaleModelInput(x, i);
      const expectedInput = scaled ? row(scaled, i) : x;
      const inErr = relativeError(input, expectedInput);
      assert.ok(inErr <= TOL, `${c.id} step ${i}: scaled input relative error ${inErr.toExponential(3)}`);
      const m = modelRow(c, mo, i);
      const out = s.step(state, m.prediction, i, x, noise ? row(noise, i) : undefined, m.variance);
      const err = relativeError(out.prevSample, row(prev, i));
      assert.ok(err <= tolerance(c, i), `${c.id} step ${i} (t=${c.timesteps[i]}): relative error ${err.toExponential(3)}`);
      if (tolerance(c, i) === TOL) forced = Math.max(forced, err, inErr);
      else zeroSnrFirst = Math.max(zeroSnrFirst, err);
      state = out.state;
    }

    // Free-running from the initial sample with the recorded model outputs.
    let free = 0;
    state = s.initialState;
    let x = sample0;
    for (let i = 0; i < T; i++) {
      const m = modelRow(c, mo, i);
      const out = s.step(state, m.prediction, i, x, noise ? row(noise, i) : undefined, m.variance);
      const err = relativeError(out.prevSample, row(prev, i));
      assert.ok(err <= tolerance(c, i, true), `${c.id} free-running step ${i}: relative error ${err.toExponential(3)}`);
      if (tolerance(c, i, true) === TOL) free = Math.max(free, err);
      else zeroSnrFree = Math.max(zeroSnrFree, err);
      ({ prevSample: x, state } = out);
    }

    const noisy = s.addNoise(file.readFloat32(`${c.id}.add_noise.original`), file.readFloat32(`${c.id}.add_noise.noise`), c.add_noise_index);
    const addErr = relativeError(noisy, file.readFloat32(`${c.id}.add_noise.noisy`));
    assert.ok(addErr <= TOL, `${c.id} addNoise: relative error ${addErr.toExponential(3)}`);

    const key = `${c.class} ${c.variant}`;
    const w = worst.get(key) ?? { forced: 0, free: 0, timestep: 0, cases: 0 };
    worst.set(key, { forced: Math.max(w.forced, forced, addErr), free: Math.max(w.free, free), timestep: Math.max(w.timestep, tsErr), cases: w.cases + 1 });
  });
}

test('worst relative errors per scheduler (report)', () => {
  for (const [key, w] of worst) {
    console.log(`${key.padEnd(48)} ${String(w.cases).padStart(3)} cases  per-step ${w.forced.toExponential(2)}  free-running ${w.free.toExponential(2)}  timesteps ${w.timestep.toExponential(2)}`);
  }
  console.log(`zero-SNR Euler / Euler-a (sigma_max 4096, see tolerance()): first step ${zeroSnrFirst.toExponential(2)}, free-running ${zeroSnrFree.toExponential(2)}`);
  assert.ok(worst.size > 0);
});

test('the goldens cover every scheduler name', () => {
  const classes = new Set(index.cases.map((c) => c.class));
  for (const cls of ['DDIMScheduler', 'PNDMScheduler', 'EulerDiscreteScheduler', 'EulerAncestralDiscreteScheduler', 'DPMSolverMultistepScheduler', 'LCMScheduler', 'DDPMScheduler']) {
    assert.ok(classes.has(cls), cls);
  }
  const names = new Set(index.cases.map((c) => c.name ?? ''));
  for (const n of SCHEDULER_NAMES) assert.ok(names.has(n) || n === 'pndm' || n === 'ddim', n);
});

// ---------------------------------------------------------------------------------------------
// Input errors

const SD15 = {
  _class_name: 'PNDMScheduler', beta_end: 0.012, beta_schedule: 'scaled_linear', beta_start: 0.00085,
  clip_sample: false, num_train_timesteps: 1000, set_alpha_to_one: false, skip_prk_steps: true, steps_offset: 1,
  trained_betas: null,
};
const FILE = 'sd/scheduler/scheduler_config.json';

function expectInputError(fn: () => unknown, ...parts: string[]): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof InputError, `expected an InputError, got ${String(err)}`);
    for (const part of parts) assert.ok(err.message.includes(part), `"${err.message}" should mention ${part}`);
    return true;
  });
}

test('unknown scheduler name lists the names', () => {
  expectInputError(() => createScheduler({ name: 'heun', config: SD15, configFile: FILE, steps: 10 }),
    'scheduler', '"heun"', 'ddim', 'euler-a', 'dpm++2m-karras', 'lcm');
});

test('unknown beta_schedule names the key', () => {
  for (const name of SCHEDULER_NAMES) {
    expectInputError(() => createScheduler({ name, config: { ...SD15, beta_schedule: 'sigmoid' }, configFile: FILE, steps: 10 }),
      `${FILE}: beta_schedule`, 'sigmoid', 'scaled_linear');
  }
});

test('thresholding true is refused by the classes that have it', () => {
  for (const name of ['ddim', 'dpm++2m', 'dpm++2m-karras', 'lcm']) {
    expectInputError(() => createScheduler({ name, config: { ...SD15, thresholding: true }, configFile: FILE, steps: 10 }),
      `${FILE}: thresholding`, 'not supported');
  }
  // PNDM and Euler have no such option: diffusers ignores the key there, and so do we.
  assert.doesNotThrow(() => createScheduler({ name: 'euler', config: { ...SD15, thresholding: true }, configFile: FILE, steps: 10 }));
});

test('bad prediction_type names the key', () => {
  for (const name of SCHEDULER_NAMES) {
    expectInputError(() => createScheduler({ name, config: { ...SD15, prediction_type: 'foo' }, configFile: FILE, steps: 10 }),
      `${FILE}: prediction_type`, '"foo"', 'epsilon');
  }
  // Methods diffusers cannot run with sample prediction refuse it up front.
  expectInputError(() => createScheduler({ name: 'pndm', config: { ...SD15, prediction_type: 'sample' }, configFile: FILE, steps: 10 }),
    `${FILE}: prediction_type`, '"sample"');
  expectInputError(() => createScheduler({ name: 'euler-a', config: { ...SD15, prediction_type: 'sample' }, configFile: FILE, steps: 10 }),
    `${FILE}: prediction_type`, '"sample"');
});

test('bad step counts name steps', () => {
  for (const name of SCHEDULER_NAMES) {
    for (const steps of [0, -3, 2.5, Number.NaN]) {
      expectInputError(() => createScheduler({ name, config: SD15, configFile: FILE, steps }), 'steps', 'positive integer');
    }
    expectInputError(() => createScheduler({ name, config: SD15, configFile: FILE, steps: 1001 }), 'steps', 'at most');
  }
  expectInputError(() => createScheduler({ name: 'lcm', config: SD15, configFile: FILE, steps: 51 }), 'steps', 'original_inference_steps', 'at most 50');
  expectInputError(() => createScheduler({ name: 'pndm', config: { ...SD15, skip_prk_steps: false }, configFile: FILE, steps: 3 }), 'steps', 'at least 4');
});

test('folder class: missing or unsupported _class_name', () => {
  const { _class_name: _, ...noClass } = SD15;
  expectInputError(() => createScheduler({ config: noClass, configFile: FILE, steps: 10 }), `${FILE}: _class_name`, 'missing', 'euler-a');
  expectInputError(() => createScheduler({ config: { ...SD15, _class_name: 'UniPCMultistepScheduler' }, configFile: FILE, steps: 10 }),
    `${FILE}: _class_name`, 'UniPCMultistepScheduler', 'EulerDiscreteScheduler', 'dpm++2m');
});

test('unsupported options are refused with the key named', () => {
  const dpm = { ...SD15, _class_name: 'DPMSolverMultistepScheduler' };
  expectInputError(() => createScheduler({ config: { ...dpm, algorithm_type: 'sde-dpmsolver++' }, configFile: FILE, steps: 10 }), `${FILE}: algorithm_type`);
  expectInputError(() => createScheduler({ config: { ...dpm, use_lu_lambdas: true }, configFile: FILE, steps: 10 }), `${FILE}: use_lu_lambdas`);
  expectInputError(() => createScheduler({ config: { ...dpm, solver_order: 4 }, configFile: FILE, steps: 10 }), `${FILE}: solver_order`);
  expectInputError(() => createScheduler({ config: { ...dpm, variance_type: 'learned_range' }, configFile: FILE, steps: 10 }), `${FILE}: variance_type`);
  expectInputError(() => createScheduler({ name: 'euler', config: { ...SD15, interpolation_type: 'log_linear' }, configFile: FILE, steps: 10 }), `${FILE}: interpolation_type`);
  expectInputError(() => createScheduler({ name: 'euler', config: { ...SD15, use_exponential_sigmas: true }, configFile: FILE, steps: 10 }), `${FILE}: use_exponential_sigmas`);
  expectInputError(() => createScheduler({ name: 'ddim', config: { ...SD15, timestep_spacing: 'even' }, configFile: FILE, steps: 10 }), `${FILE}: timestep_spacing`);
  expectInputError(() => createScheduler({ name: 'ddim', config: { ...SD15, steps_offset: 500 }, configFile: FILE, steps: 10 }), `${FILE}: steps_offset`);
  expectInputError(() => createScheduler({ name: 'ddim', config: { ...SD15, beta_start: 'small' }, configFile: FILE, steps: 10 }), `${FILE}: beta_start`);
  expectInputError(() => createScheduler({ name: 'ddim', config: { ...SD15, trained_betas: [0.1, 0.2] }, configFile: FILE, steps: 10 }), `${FILE}: trained_betas`);
  expectInputError(() => createScheduler({ name: 'ddim', config: SD15, configFile: FILE, steps: 10, eta: -1 }), 'eta');
  // A name forces DPM-Solver++ even over a folder's SDE variant, as the name says.
  assert.equal(createScheduler({ name: 'dpm++2m', config: { ...dpm, algorithm_type: 'sde-dpmsolver++' }, configFile: FILE, steps: 10 }).name, 'dpm++2m');
});

test('names keep the folder config keys that apply (from_config)', () => {
  // SD 1.5's published config has no timestep_spacing: Euler uses its own default, linspace...
  const euler = createScheduler({ name: 'euler', config: SD15, configFile: FILE, steps: 10 });
  assert.deepEqual(euler.timesteps, [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]);
  // ...and keeps the folder's spacing and steps_offset when the config has them.
  const leading = createScheduler({ name: 'euler', config: { ...SD15, timestep_spacing: 'leading' }, configFile: FILE, steps: 10 });
  assert.deepEqual(leading.timesteps, [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]);
  // DDIM keeps clip_sample false from SD 1.5; from a config without it, DDIM's default (true) applies.
  const { clip_sample: _c, ...noClip } = SD15;
  const x = new Float32Array(4).fill(3);
  const e = new Float32Array(4);
  const keep = createScheduler({ name: 'ddim', config: SD15, configFile: FILE, steps: 10 });
  const dflt = createScheduler({ name: 'ddim', config: noClip, configFile: FILE, steps: 10 });
  assert.ok(keep.step(keep.initialState, e, 0, x).prevSample[0] > dflt.step(dflt.initialState, e, 0, x).prevSample[0] + 1);
  // dpm++2m-karras forces Karras sigmas; dpm++2m turns them off even if the folder has them on.
  const dpmK = { ...SD15, _class_name: 'DPMSolverMultistepScheduler', use_karras_sigmas: true };
  assert.equal(createScheduler({ config: dpmK, configFile: FILE, steps: 10 }).name, 'dpm++2m-karras');
  const plain = createScheduler({ name: 'dpm++2m', config: dpmK, configFile: FILE, steps: 10 });
  const karras = createScheduler({ name: 'dpm++2m-karras', config: SD15, configFile: FILE, steps: 10 });
  assert.deepEqual(plain.timesteps, createScheduler({ name: 'dpm++2m', config: SD15, configFile: FILE, steps: 10 }).timesteps);
  assert.notDeepEqual(plain.timesteps, karras.timesteps);
  assert.equal(karras.timesteps[0], 999);
});

test('model_index.json class takes precedence over _class_name', () => {
  assert.equal(createScheduler({ className: 'EulerDiscreteScheduler', config: SD15, configFile: FILE, steps: 10 }).className, 'EulerDiscreteScheduler');
  expectInputError(() => createScheduler({ className: 'HeunDiscreteScheduler', config: SD15, configFile: FILE, steps: 10 }),
    'model_index.json: scheduler', 'HeunDiscreteScheduler');
});

test('needsNoise tells which steps take noise', () => {
  const steps = 4;
  const at = (name: string, eta?: number) => {
    const s = createScheduler({ name, config: SD15, configFile: FILE, steps, eta });
    return s.timesteps.map((_, i) => s.needsNoise(i));
  };
  assert.deepEqual(at('lcm'), [true, true, true, false]);
  assert.deepEqual(at('euler-a'), [true, true, true, false]);
  assert.deepEqual(at('ddim', 0.3), [true, true, true, true]);
  for (const name of ['ddim', 'pndm', 'euler', 'dpm++2m', 'dpm++2m-karras']) assert.ok(at(name).every((x) => !x), name);
});

test('state is immutable and checked', () => {
  const s = createScheduler({ name: 'dpm++2m', config: SD15, configFile: FILE, steps: 5 });
  const x = new Float32Array(8).fill(0.5);
  const e = new Float32Array(8).fill(0.1);
  const a = s.step(s.initialState, e, 0, x);
  const b1 = s.step(a.state, e, 1, a.prevSample);
  const b2 = s.step(a.state, e, 1, a.prevSample); // replaying from a saved state gives the same result
  assert.deepEqual(b1.prevSample, b2.prevSample);
  assert.equal(x[0], 0.5);
  assert.throws(() => s.step(s.initialState, e, 1, x), /state is for step 0/);
  assert.throws(() => s.step(a.state, new Float32Array(4), 1, x), RangeError);
  const lcm = createScheduler({ name: 'lcm', config: SD15, configFile: FILE, steps: 4 });
  assert.equal(lcm.stochastic, true);
  assert.throws(() => lcm.step(lcm.initialState, e, 0, x), /takes noise/);
  const ddim = createScheduler({ name: 'ddim', config: SD15, configFile: FILE, steps: 4, eta: 0.5 });
  assert.equal(ddim.stochastic, true);
  assert.equal(createScheduler({ name: 'ddim', config: SD15, configFile: FILE, steps: 4 }).stochastic, false);
});

test('every scheduler checks its call arguments: step index, state, array lengths', () => {
  for (const name of SCHEDULER_NAMES) {
    const s = createScheduler({ name, config: SD15, configFile: FILE, steps: 4 });
    const count = s.timesteps.length;
    const x = new Float32Array(8);
    assert.throws(() => s.scaleModelInput(x, count), new RegExp(`${s.className}\\.scaleModelInput: step index ${count} outside 0\\.\\.${count - 1}`));
    assert.throws(() => s.needsNoise(-1), /needsNoise: step index -1 outside/);
    assert.throws(() => s.addNoise(x, new Float32Array(4), 0), /addNoise: arrays differ in length \(8 vs 4\)/);
    assert.throws(() => s.step(s.initialState, x, 1, x), /state is for step 0, not step 1/);
    assert.throws(() => s.step(s.initialState, new Float32Array(4), 0, x), /model output has 4 values, sample has 8/);
    const noise = s.needsNoise(0) ? new Float32Array(8) : undefined;
    assert.equal(s.step(s.initialState, x, 0, x, noise).state.index, 1, name);
  }
});
