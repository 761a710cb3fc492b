/**
 * How long `diffuse generate` on the embedded reference model takes to start (docs/BENCHMARKS.md):
 * fresh processes, each one's wall time minus the text encoding, denoising and decoding it
 * reports — what is left is Node starting (twice: the CLI restarts itself with glibc's malloc
 * tunables), importing the engine, reading the folder and its tokenizer, and writing the PNG.
 * The session cache is the user's, as a second run finds it.
 *
 *   npm run start-time -- [--runs 10] [--steps 25]
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { toolFlags } from './flags.ts';

const args = toolFlags('start-time', { runs: { kind: 'integer', min: 1, max: 1000, default: 10 }, steps: { kind: 'integer', min: 1, max: 1000, default: 25 } });
const CLI = path.join(import.meta.dirname, '..', 'bin', 'diffuse.js');
const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'diffuse-start-')), 'image.png');
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const starts: number[] = [];
const walls: number[] = [];
// One untimed run fills the session cache.
for (let run = -1; run < args.runs; run++) {
  const begun = performance.now();
  const r = spawnSync(process.execPath, [CLI, 'generate', '--prompt', 'a red circle on the left', '--steps', String(args.steps), '--out', out], { encoding: 'utf8' });
  const wall = (performance.now() - begun) / 1000;
  const reported = /text ([\d.]+) s, denoising ([\d.]+) s, decoding ([\d.]+) s/.exec(r.stdout + r.stderr);
  if (r.status !== 0 || !reported) throw new Error(`generate failed (${r.status}): ${r.stderr}`);
  if (run < 0) continue;
  walls.push(wall);
  starts.push(wall - reported.slice(1).reduce((sum, s) => sum + Number(s), 0));
}
console.log(`generate on the reference model, ${args.steps} steps, ${starts.length} fresh processes: wall median ${median(walls).toFixed(3)} s; ` +
  `start (wall − text − denoising − decoding) median ${median(starts).toFixed(3)} s, ${Math.min(...starts).toFixed(3)}–${Math.max(...starts).toFixed(3)} s`);
fs.rmSync(path.dirname(out), { recursive: true, force: true });
