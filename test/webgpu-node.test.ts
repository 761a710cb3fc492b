/**
 * `--device webgpu` in Node: onnxruntime-node's Dawn finds an adapter here only through a Vulkan
 * driver, Chromium's SwiftShader (VK_ICD_FILENAMES; .ci/run installs chromium and libvulkan1). The
 * reference model on WebGPU draws the CPU image within tolerance, segment outputs staying on the
 * device between segments; without an adapter, one line saying what to install. Skipped, saying
 * why, where the driver is absent outside CI.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { readImage } from '../src/image/read.ts';
import { psnr } from '../src/metrics/image.ts';
import { tempDir } from './helpers/files.ts';

const ICD = '/usr/lib/chromium/vk_swiftshader_icd.json';
const LOADER = ['/usr/lib/x86_64-linux-gnu/libvulkan.so.1', '/usr/lib/aarch64-linux-gnu/libvulkan.so.1'];
const skip = (fs.existsSync(ICD) && LOADER.some((f) => fs.existsSync(f))) || process.env.CI ? false
  : `no Vulkan driver here (apt-get install chromium libvulkan1)`;
const CLI = path.join(import.meta.dirname, '..', 'bin', 'diffuse.js');
/** Measured 52 dB (4 steps, CFG 7.5; 59 dB without CFG): float rounding through SwiftShader's own kernels. */
const MIN_PSNR = 45;

function generate(cwd: string, out: string, device: string, env: Record<string, string> = {}) {
  return spawnSync(process.execPath, [CLI, 'generate', '--prompt', 'a blue square on the right', '--seed', '5', '--steps', '4',
    '--device', device, '--out', out], { cwd, encoding: 'utf8', timeout: 300_000, env: { ...process.env, XDG_RUNTIME_DIR: cwd, ...env } });
}

test('generate --device webgpu on SwiftShader draws the CPU image', { skip }, (t) => {
  const cwd = tempDir(t);
  const gpu = generate(cwd, 'gpu.png', 'webgpu', { VK_ICD_FILENAMES: ICD });
  assert.equal(gpu.status, 0, gpu.stderr);
  const cpu = generate(cwd, 'cpu.png', 'cpu');
  assert.equal(cpu.status, 0, cpu.stderr);
  const value = psnr(readImage(path.join(cwd, 'gpu.png')).data, readImage(path.join(cwd, 'cpu.png')).data);
  assert.ok(value >= MIN_PSNR, `WebGPU vs CPU: ${value.toFixed(1)} dB`);
  // Segment outputs stay on the GPU: a step brings back only the noise prediction, and sends the latents and the timestep.
  assert.match(gpu.stderr, /webgpu: per denoising step 1\.0 copies to the CPU \(8\.0 KiB\), 2\.\d to the GPU/);
});

test('without a WebGPU adapter, --device webgpu is one line saying what to install, exit 2', { skip }, (t) => {
  const cwd = tempDir(t);
  const run = generate(cwd, 'none.png', 'webgpu', { VK_ICD_FILENAMES: path.join(cwd, 'no-such-driver.json') });
  assert.equal(run.status, 2, run.stderr);
  const lines = run.stderr.split('\n').filter((l) => l.startsWith('diffuse:'));
  assert.equal(lines.length, 1, run.stderr);
  assert.match(lines[0], /--device webgpu.*could not start WebGPU.*libvulkan1.*VK_ICD_FILENAMES/);
  // Dawn prints its own Vulkan warnings (with C++ source lines) before ours; no JS stack, no abort.
  assert.doesNotMatch(run.stderr, /terminate called|\.ts:\d+|node:internal/);
  assert.ok(!fs.existsSync(path.join(cwd, 'none.png')));
});
