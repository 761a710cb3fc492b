/** `diffuse bench` as a user runs it: MAC tables without weights, a real comparison, bad flags. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { decode } from 'fast-png';
import { tempDir } from './helpers/files.ts';

const ROOT = path.join(import.meta.dirname, '..');
const TINY = path.join(ROOT, 'test', 'fixtures', 'tiny-sd1');

function diffuse(...args: string[]) {
  const run = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'diffuse.js'), ...args], { cwd: ROOT, encoding: 'utf8' });
  return { status: run.status, stdout: run.stdout, stderr: run.stderr };
}

/** Each [args, text]: `diffuse COMMAND ...args` exits 2 with one line of stderr containing text. */
function expectOneLineErrors(command: string, cases: [string[], string][]): void {
  for (const [args, named] of cases) {
    const run = diffuse(command, ...args);
    assert.equal(run.status, 2, `${args.join(' ')}: ${run.stderr}`);
    const lines = run.stderr.trim().split('\n');
    assert.equal(lines.length, 1, run.stderr);
    assert.ok(lines[0].includes(named), `${args.join(' ')} → ${lines[0]}`);
  }
}

test('bench --dry-run reproduces the TGATE v1 row for SD 1.5 from the preset alone', () => {
  const run = diffuse('bench', '--preset', 'sd15', '--dry-run', '--steps', '25', '--accel', 'tgate:gate_step=5,cache_self_attn=false');
  assert.equal(run.status, 0, run.stderr);
  assert.match(run.stdout, /baseline\s+16\.931 T/);
  assert.match(run.stdout, /tgate:gate_step=5,.*cache_self_attn=false\s+9\.873 T\s+×1\.71/);
  // With the JSON on stdout (--json -) the table goes to stderr, so that stdout parses.
  const piped = diffuse('bench', '--preset', 'sd15', '--dry-run', '--steps', '25', '--accel', 'tgate:gate_step=5,cache_self_attn=false', '--json', '-');
  assert.equal(piped.status, 0, piped.stderr);
  assert.ok(Array.isArray((JSON.parse(piped.stdout) as { settings: unknown[] }).settings));
  assert.match(piped.stderr, /9\.873 T\s+×1\.71/);
});

test('bench on a folder: table with speed-up, MAC ratio, PSNR/SSIM, and a labelled comparison PNG', (t) => {
  const dir = tempDir(t);
  const out = path.join(dir, 'cmp.png');
  const json = path.join(dir, 'bench.json');
  const run = diffuse('bench', '--model', TINY, '--accel', 'tgate:gate_step=3,sp_interval=2,warm_up=0', '--steps', '6', '--scheduler', 'ddim',
    '--warmup', '0', '--size', '64x64', '--out', out, '--json', json);
  assert.equal(run.status, 0, run.stderr);
  assert.match(run.stdout, /PSNR dB/);
  const result = JSON.parse(fs.readFileSync(json, 'utf8'));
  assert.equal(result.model, path.basename(TINY), 'the folder\'s name, not this machine\'s path');
  const [base, fast] = result.rows;
  assert.equal(base.setting, 'baseline');
  assert.ok(fast.macs < base.macs, 'TGATE saves MACs');
  assert.ok(fast.psnr > 10 && fast.psnr < Infinity && fast.ssim < 1, `psnr ${fast.psnr}, ssim ${fast.ssim}`);
  const png = decode(new Uint8Array(fs.readFileSync(out)));
  assert.equal(png.width, 64 * 2 + 8);
  assert.ok(png.height > 64, 'label band above the images');
});

test('bench on PixArt and DiT folders: adaptive methods show the MACs their runs really spent', (t) => {
  const dir = tempDir(t);
  const json = path.join(dir, 'bench.json');
  const run = diffuse('bench', '--model', path.join(ROOT, 'test', 'fixtures', 'tiny-pixart-alpha'), '--accel', 'fbcache:residual_diff_threshold=10', '--steps', '6',
    '--guidance', '4.5', '--warmup', '0', '--size', '128', '--out', path.join(dir, 'cmp.png'), '--json', json);
  assert.equal(run.status, 0, run.stderr);
  assert.match(run.stdout, /text-to-image 128x128/);
  const [base, fast] = JSON.parse(fs.readFileSync(json, 'utf8')).rows;
  assert.equal(fast.macs, base.macs, 'counted from configs, an adaptive method saves nothing');
  assert.ok(fast.spentMacs < base.spentMacs, `the run skipped blocks: ${fast.spentMacs} of ${base.spentMacs}`);
  const dit = diffuse('bench', '--model', path.join(ROOT, 'test', 'fixtures', 'tiny-dit'), '--accel', 'fora', '--steps', '6', '--warmup', '0',
    '--out', path.join(dir, 'dit.png'));
  assert.equal(dit.status, 0, dit.stderr);
  assert.match(dit.stdout, /class-to-image/);
  assert.match(dit.stdout, /CFG 4,/, 'without --guidance, the DiT pipeline\'s own default, as generate uses');
});

test('tune without --guidance: the pipeline\'s own default (DiT 4), written to its report', (t) => {
  const out = path.join(tempDir(t), 'teacache.json');
  const run = diffuse('tune', '--model', path.join(ROOT, 'test', 'fixtures', 'tiny-dit'), '--method', 'teacache', '--steps', '10', '--count', '1', '--out', out);
  assert.equal(run.status, 0, run.stderr);
  assert.equal(JSON.parse(fs.readFileSync(out, 'utf8')).guidance, 4);
});

test('bench --fidelity on a PixArt folder: span caches in the sweep, their savings in the MACs the runs spent', (t) => {
  const dir = tempDir(t);
  const json = path.join(dir, 'fidelity.json');
  const prompts = path.join(dir, 'prompts.txt');
  fs.writeFileSync(prompts, 'a cat\n');
  const run = diffuse('bench', '--model', path.join(ROOT, 'test', 'fixtures', 'tiny-pixart-alpha'), '--fidelity', '--steps', '6', '--size', '128', '--guidance', '4.5',
    '--prompts', prompts, '--sweep', 'teacache:rel_l1_thresh=10', '--sweep', 'fbcache:residual_diff_threshold=10', '--no-fewer-steps', '--json', json);
  assert.equal(run.status, 0, run.stderr);
  assert.match(run.stdout, /ran ×/);
  const report = JSON.parse(fs.readFileSync(json, 'utf8'));
  assert.equal(report.model, 'tiny-pixart-alpha', 'the folder\'s name, not this machine\'s path');
  const rows = report.rows as { label: string; macRatio: number; spentRatio: number }[];
  for (const row of rows.slice(1)) {
    assert.equal(row.macRatio, 1, `${row.label}: counted from configs, nothing saved`);
    assert.ok(row.spentRatio > 1.2, `${row.label}: the runs skipped blocks (×${row.spentRatio})`);
  }
});

test('bench: bad input gives one line naming the flag and exit 2', () => {
  const cases: [string[], string][] = [
    [['--preset', 'sd15'], '--accel: nothing to compare with the baseline'],
    [['--preset', 'sdxl', '--accel', 'tome'], '--preset: SDXL presets have no random-weight pipeline yet'],
    [['--preset', 'nope', '--accel', 'tome'], '--preset: unknown preset'],
    [['--preset', 'pixart-alpha-512', '--fidelity', '--prompts', '/nonexistent/p.txt'], '/nonexistent/p.txt: cannot read the prompt file'],
    [['--preset', 'sd15', '--dry-run', '--macs', 'flops'], '--macs'],
    [['--preset', 'sd15', '--dry-run', '--accel', 'tgate:gate_step=x'], '--accel tgate:gate_step'],
    [['--model', TINY, '--preset', 'sd15', '--dry-run'], '--model/--preset'],
    [['--model', TINY], '--accel'],
    [['--model', TINY, '--sweep', 'tome'], '--sweep: only with --fidelity'],
    [['--model', TINY, '--fidelity', '--accel', 'tome'], '--accel: the fidelity sweep takes its settings from --sweep'],
    [['--model', TINY, '--fidelity', '--dry-run'], '--dry-run: not with --fidelity'],
    [['--model', TINY, '--steps-baseline', '3'], '--steps-baseline: only with --fidelity'],
    [['--model', TINY, '--fidelity', '--steps', '6', '--steps-baseline', '6'], '--steps-baseline: 6 is not fewer than --steps 6'],
    [['--model', TINY, '--fidelity', '--sweep', 'tome+tome'], '--accel: tome given twice'],
    [['--model', TINY, '--fidelity', '--prompts', '/nonexistent/p.txt'], '/nonexistent/p.txt: cannot read the prompt file'],
    [['--preset', 'sdxl', '--dry-run', '--accel', 'tome'], '--accel tome:max_downsample: no transformer block'],
    // A flag the chosen mode does not read would do nothing.
    [['--model', TINY, '--accel', 'tome', '--prompts', 'p.txt'], '--prompts: not read by bench without --fidelity'],
    [['--model', TINY, '--accel', 'tome', '--no-fewer-steps'], '--no-fewer-steps: not read by bench without --fidelity'],
    [['--model', TINY, '--fidelity', '--runs', '3'], '--runs: not read by bench --fidelity'],
    [['--model', TINY, '--fidelity', '--out', 'x.png'], '--out: not read by bench --fidelity'],
    [['--preset', 'sd15', '--dry-run', '--accel', 'tome', '--seed', '3'], '--seed: not read by bench --dry-run'],
    [['--preset', 'sd15', '--dry-run', '--accel', 'tome', '--device', 'webgpu'], '--device: not read by bench --dry-run'],
  ];
  expectOneLineErrors('bench', cases);
});

test('tune: bad input gives one line naming the flag and exit 2, before any image', () => {
  const cases: [string[], string][] = [
    [['--method', 'tgate'], '--method: no search for this method yet'],
    [['--method', 'teacache', '--speedup', '2'], '--method: not read by tune --speedup/--mac-speedup'],
    [['--reuse', '5', '--mac-speedup', '2'], '--reuse: not read by tune --speedup/--mac-speedup'],
    [['--no-int8', '--mac-speedup', '2'], '--no-int8: not read by tune --mac-speedup'],
    [['--no-int8'], '--no-int8: not read by tune without --speedup'],
    [['--method', 'teacache', '--max-rounds', '3'], '--max-rounds: not read by tune --method teacache'],
    [['--model', TINY, '--out', 'schedule.txt'], '--out: must be a JSON file'],
    [['--model', TINY, '--steps', '6', '--reuse', '6', '--scheduler', 'ddim'], '--reuse: must leave computing calls in a run of 6 model calls'],
    [['--model', TINY, '--out', '/nonexistent/s.json'], '--out: folder does not exist'],
    [['--epsilon', '-1'], '--epsilon expects a number ≥ 0'],
    [['--max-rounds', '0'], '--max-rounds expects an integer from 1 to 1000000, got "0"'],
    [['--method', 'teacache', '--model', TINY, '--out', 'teacache.json'], '--model: TeaCache calibrates a transformer pipeline'],
  ];
  expectOneLineErrors('tune', cases);
});

test('tune without --out checks its default file (schedule.json, plan.json) before the search', (t) => {
  const cwd = tempDir(t);
  for (const [args, name] of [[[], 'schedule.json'], [['--mac-speedup', '2'], 'plan.json']] as [string[], string][]) {
    fs.mkdirSync(path.join(cwd, name));
    const run = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'diffuse.js'), 'tune', '--model', TINY, '--steps', '4', ...args], { cwd, encoding: 'utf8', timeout: 60_000 });
    assert.equal(run.status, 2, run.stderr);
    assert.match(run.stderr, new RegExp(`^diffuse: --out: is a folder; expected a file name, found .*${name}\n$`));
  }
});

test('tune --method teacache with too few model calls for the polynomial: one line naming --steps, no report', (t) => {
  const out = path.join(tempDir(t), 'teacache.json');
  expectOneLineErrors('tune', [[['--method', 'teacache', '--model', path.join(ROOT, 'test', 'fixtures', 'tiny-dit'), '--steps', '4', '--count', '1', '--out', out],
    '--steps: 3 (input change, output change) pairs cannot fit TeaCache\'s degree-4 polynomial']]);
  assert.ok(!fs.existsSync(out));
});

test('bench --precision int8: the baseline stays fp32, the accelerated setting runs int8 with its methods', (t) => {
  const dir = tempDir(t);
  const json = path.join(dir, 'bench.json');
  // DeepCache 2: at 10 steps an interval of 3 alone costs the 2026-12-02 reference model 24 dB (int8 alone: 52 dB).
  const run = diffuse('bench', '--model', 'reference', '--precision', 'int8', '--accel', 'deepcache:cache_interval=2', '--steps', '10', '--warmup', '0',
    '--out', path.join(dir, 'cmp.png'), '--json', json);
  assert.equal(run.status, 0, run.stderr);
  const result = JSON.parse(fs.readFileSync(json, 'utf8'));
  assert.equal(result.precision, 'int8');
  const [base, fast] = result.rows;
  assert.equal(base.setting, 'baseline');
  assert.match(fast.setting, /^deepcache:cache_interval=2.* \(int8\)$/);
  assert.ok(base.macs / fast.macs > 1.5, `MAC ratio ${base.macs / fast.macs}`);
  assert.ok(fast.psnr > 25 && Number.isFinite(fast.psnr), `PSNR ${fast.psnr}`);
});
