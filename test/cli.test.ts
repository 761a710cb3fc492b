/**
 * The `diffuse` executable end to end: exit status 0 on success, 2 on a user mistake with one
 * line on stderr naming the flag or path and no stack trace. Each spawn costs about a second
 * (tsx start-up), so the cases are few.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';

const ROOT = path.resolve(import.meta.dirname, '..');

function diffuse(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, ['bin/diffuse.js', ...args], { cwd: ROOT, encoding: 'utf8', timeout: 60_000 });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Exit status 2, nothing on stdout, one stderr line containing every fragment, no stack frames. */
function assertUserError(r: ReturnType<typeof diffuse>, ...fragments: string[]): void {
  assert.equal(r.status, 2, `exit status (stderr: ${r.stderr})`);
  assert.equal(r.stdout, '');
  const lines = r.stderr.split('\n').filter((l) => l.trim() !== '');
  assert.equal(lines.length, 1, `one line on stderr, got:\n${r.stderr}`);
  assert.doesNotMatch(r.stderr, /^\s+at /m, 'no stack trace');
  for (const f of fragments) assert.ok(lines[0].includes(f), `stderr lacks ${JSON.stringify(f)}: ${lines[0]}`);
}

test('inspect --preset sd15 exits 0 and prints the totals', () => {
  const r = diffuse('inspect', '--preset', 'sd15');
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stderr, '');
  assert.match(r.stdout, /^preset sd15: /);
  // Default size 512×512, batch 1: 338.6 G MACs like calflops for the U-Net.
  assert.match(r.stdout, /total unet: 338\.\d{3} GMACs counted like calflops, \d+\.\d{3} GMACs full/);
  assert.match(r.stdout, /total vae: [\d.]+ GMACs counted like calflops, [\d.]+ GMACs full/);
  assert.match(r.stdout, /total text_encoder: [\d.]+ GMACs counted like calflops, [\d.]+ GMACs full/);
});

test('inspect /nonexistent exits 2 with one line naming the path', () => {
  assertUserError(diffuse('inspect', '/nonexistent'), '/nonexistent', 'not found');
});

test('inspect --batch 0 exits 2 naming --batch', () => {
  assertUserError(diffuse('inspect', '--preset', 'sd15', '--batch', '0'), '--batch', '"0"');
});

test('inspect --size 12x exits 2 naming --size', () => {
  assertUserError(diffuse('inspect', '--preset', 'sd15', '--size', '12x'), '--size', '12x');
});

test('inspect --preset nope exits 2 naming --preset', () => {
  assertUserError(diffuse('inspect', '--preset', 'nope'), '--preset', 'nope', 'sd15');
});

test('an unknown command exits non-zero without a stack trace', () => {
  const r = diffuse('frobnicate');
  assert.notEqual(r.status, 0);
  assert.notEqual(r.status, null);
  assert.match(r.stderr, /frobnicate/);
  assert.doesNotMatch(r.stderr, /^\s+at /m);
});

test('--precision: bf16 is refused with the reason, int8 on webgpu and fp16 on the CPU are refused (generate and bench), and bench --fidelity stays fp32', () => {
  assertUserError(diffuse('generate', '--prompt', 'x', '--precision', 'bf16'), '--precision', 'no bfloat16 matrix kernels on CPU', 'expected fp32, int8 or fp16', 'bf16');
  assertUserError(diffuse('generate', '--prompt', 'x', '--precision', 'int8', '--device', 'webgpu'), '--precision: int8 runs with device cpu only', 'integer kernels');
  assertUserError(diffuse('generate', '--prompt', 'x', '--precision', 'fp16'), '--precision: fp16 runs with device webgpu only', 'no faster than fp32',
    'expected fp32 or int8 with device cpu');
  assertUserError(diffuse('serve', '--precision', 'fp16'), '--precision: fp16 runs with device webgpu only, and the service runs on the CPU');
  assertUserError(diffuse('bench', '--model', 'reference', '--precision', 'int8', '--fidelity'), '--precision', 'fidelity sweep runs in fp32');
  assertUserError(diffuse('bench-unet', '--precision', 'fp32,int4'), '--precision', 'found "int4"');
  // The PyTorch comparison runs last: what it cannot do is said before the random weights are made and anything is timed.
  for (const command of [['bench-unet'], ['bench-generate']]) {
    const run = diffuse(...command, '--pytorch', 'no-such-env.sh');
    assertUserError(run, '--pytorch: no such file', 'found no-such-env.sh');
    assert.doesNotMatch(run.stderr, /preparing/);
  }
  assertUserError(diffuse('bench-unet', '--pytorch', 'package.json', '--size', '64x32'), '--size: the PyTorch comparison times square sizes only');
  assertUserError(diffuse('bench-unet', '--pytorch', 'package.json', '--preset', 'sd21'), '--pytorch: the PyTorch comparison covers the sd15 and PixArt presets');
  // bench runs both settings on --device: the same pairing rules, before any run.
  assertUserError(diffuse('bench', '--model', 'reference', '--precision', 'int8', '--device', 'webgpu', '--steps', '2'), '--precision: int8 runs with device cpu only');
  assertUserError(diffuse('bench', '--model', 'reference', '--precision', 'fp16', '--steps', '2'), '--precision: fp16 runs with device webgpu only');
  assertUserError(diffuse('bench', '--model', 'reference', '--accel', 'tgate', '--device', 'tpu'), '--device', 'expected cpu, webgpu', 'found tpu');
  assertUserError(diffuse('generate', '--prompt', 'x', '--device', 'cuda'), '--device', 'expected cpu, webgpu', 'found cuda');
  // A dry run counts MACs from the configs, on no device: any precision counts (--device would do nothing there).
  const dry = diffuse('bench', '--preset', 'sd15', '--dry-run', '--precision', 'fp16', '--accel', 'tome');
  assert.equal(dry.status, 0, dry.stderr);
});
