/**
 * The measurement tools in tools/ (fidelity report, adherence, serve load, start time) take their
 * flags as the CLI does: a flag or value that does not fit is refused before any work, on one line
 * naming it, with exit code 2.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';

const ROOT = path.join(import.meta.dirname, '..');

function tool(name: string, ...args: string[]) {
  const started = performance.now();
  const run = spawnSync(process.execPath, ['--import', 'tsx', path.join(ROOT, 'tools', `${name}.ts`), ...args], { cwd: ROOT, encoding: 'utf8', timeout: 60_000 });
  return { status: run.status, stderr: run.stderr, stdout: run.stdout, seconds: (performance.now() - started) / 1000 };
}

const CASES: [string, string[], string[]][] = [
  ['fidelity-report', ['--count', 'many'], ['--count', 'an integer from 1 to 64', '"many"']],
  ['fidelity-report', ['--steps', '2.5'], ['--steps', 'an integer']],
  ['fidelity-report', ['--guidance', 'NaN'], ['--guidance', 'a number from 0 to 100']],
  ['fidelity-report', ['--part', 'vae'], ['--part', 'one of unet, dit, all', '"vae"']],
  ['fidelity-report', ['--cout', '3'], ['--cout', '--count']],
  ['reference-adherence', ['--guidance', '5,,7.5'], ['--guidance', 'comma-separated list', 'found ""']],
  ['reference-adherence', ['--seeds', '0'], ['--seeds', 'from 1 to 1000', '"0"']],
  ['reference-adherence', ['extra'], ['extra']],
  ['reference-adherence', ['--model', 'no/such/folder'], ['no/such/folder']],
  ['serve-load', ['--rate', '0'], ['--rate', 'from 0.001', '"0"']],
  ['serve-load', ['--workers'], ['--workers']],
  ['serve-load', ['--redis', 'redis://127.0.0.1:1'], ['--redis', 'cannot reach redis://127.0.0.1:1']],
  ['start-time', ['--runs', '1e9'], ['--runs', 'to 1000']],
];

test('the measurement tools refuse a bad flag or value on one line naming it, exit 2, before any work', () => {
  for (const [name, args, words] of CASES) {
    const run = tool(name, ...args);
    const what = `${name} ${args.join(' ')}`;
    assert.equal(run.status, 2, `${what}: exit ${run.status}\n${run.stderr}`);
    assert.equal(run.stdout, '', what);
    const lines = run.stderr.trim().split('\n');
    assert.equal(lines.length, 1, `${what}: one line\n${run.stderr}`);
    assert.ok(lines[0].startsWith(`${name}: `), `${what}: ${lines[0]}`);
    for (const word of words) assert.ok(lines[0].includes(word), `${what}: "${word}" in ${lines[0]}`);
    assert.ok(run.seconds < 30, `${what}: refused after ${run.seconds.toFixed(1)} s`);
  }
});
