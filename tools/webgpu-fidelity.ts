/**
 * The WebGPU tables of docs/FIDELITY.md: the same `diffuse generate` request on the CPU and on
 * WebGPU in Node, each WebGPU image against this project's CPU fp32 image with the same settings.
 * fp32 on SwiftShader (Chromium's Vulkan driver) at CFG 7.5 and 1; fp32 and fp16 on Mesa's
 * lavapipe (`bash tools/lavapipe.sh` first: SwiftShader has no shader-f16) for the reference U-Net
 * plain and with each method, and for the reference DiT and Skip-DiT.
 *
 *   node --import tsx tools/webgpu-fidelity.ts
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { readImage } from '../src/image/read.ts';
import { psnr } from '../src/metrics/image.ts';
import { installed, LAVAPIPE, SWIFTSHADER } from './vulkan-drivers.ts';

const ROOT = path.join(import.meta.dirname, '..');
const CLI = path.join(ROOT, 'bin', 'diffuse.js');
for (const [name, driver] of [['SwiftShader (apt-get install chromium libvulkan1)', SWIFTSHADER], ['lavapipe (bash tools/lavapipe.sh)', LAVAPIPE]] as const) {
  if (!installed(driver)) {
    console.error(`webgpu-fidelity: ${driver.VK_ICD_FILENAMES} or the Vulkan loader not found: needs ${name}`);
    process.exit(2);
  }
}
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'webgpu-fidelity-'));
let made = 0;

/** Runs one generate request and returns its image (planar RGB). */
function generate(flags: string[], env: Record<string, string> = {}): Float32Array {
  const out = path.join(work, `${made++}.png`);
  const run = spawnSync(process.execPath, [CLI, 'generate', ...flags, '--out', out], {
    encoding: 'utf8', env: { ...process.env, XDG_RUNTIME_DIR: work, ...env },
  });
  if (run.status !== 0) throw new Error(`generate ${flags.join(' ')}: ${run.stderr}`);
  return readImage(out).data;
}

const U_NET = ['--prompt', 'a blue square on the right', '--seed', '5'];
const dB = (a: Float32Array, b: Float32Array) => psnr(a, b).toFixed(1);

console.log(`## fp32 on SwiftShader (${new Date().toISOString().slice(0, 10)}), the reference U-Net, 4 steps\n`);
console.log('| CFG | PSNR dB against CPU |\n|---|---|');
for (const guidance of ['7.5', '1']) {
  const flags = [...U_NET, '--steps', '4', '--guidance', guidance];
  console.log(`| ${guidance} | ${dB(generate([...flags, '--device', 'webgpu'], SWIFTSHADER), generate(flags))} |`);
}

console.log('\n## fp32 and fp16 on lavapipe, each against the CPU fp32 image\n');
console.log('| model, setting | steps | WebGPU fp32 | WebGPU fp16 |\n|---|---|---|---|');
const rows: [string, string[]][] = [
  ['reference U-Net, plain (CFG 7.5)', [...U_NET, '--steps', '4']],
  ['same, `tgate:gate_step=2`', [...U_NET, '--steps', '6', '--accel', 'tgate:gate_step=2']],
  ['same, `deepcache:cache_interval=2`', [...U_NET, '--steps', '6', '--accel', 'deepcache:cache_interval=2']],
  ['same, `attn-reuse` (float16 maps)', [...U_NET, '--steps', '6', '--accel', 'attn-reuse']],
  ['same, `tome`', [...U_NET, '--steps', '6', '--accel', 'tome']],
  ['reference DiT, "red circle top left", seed 3', ['--model', 'reference-dit', '--class', 'red circle top left', '--seed', '3', '--steps', '6']],
  ['reference Skip-DiT, same', ['--model', 'reference-skip-dit', '--class', 'red circle top left', '--seed', '3', '--steps', '6']],
];
for (const [name, flags] of rows) {
  const cpu = generate(flags);
  const [full, half] = ['fp32', 'fp16'].map((precision) => generate([...flags, '--device', 'webgpu', '--precision', precision], LAVAPIPE));
  console.log(`| ${name} | ${flags[flags.indexOf('--steps') + 1]} | ${dB(full, cpu)} | ${dB(half, cpu)} |`);
}
fs.rmSync(work, { recursive: true, force: true });
