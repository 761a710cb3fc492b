/**
 * Seeded fuzzing of `diffuse` command lines, run in-process through the CLI's own entry point:
 * working commands (generate on the tiny SD and DiT folders, bench --dry-run, inspect) with a value
 * replaced by odd text, a flag swapped for another (or an unknown one), a token dropped or a flag
 * repeated. Each case must exit 0, or 2 with what it printed ending in one `diffuse:` line — never
 * throw. FUZZ_CASES scales it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { buildProgram, main } from '../src/cli/main.ts';
import { fuzzDraws } from './helpers/prng.ts';
import { tempDir } from './helpers/files.ts';

const CASES = Number(process.env.FUZZ_CASES ?? 40);
const FIXTURES = path.join(import.meta.dirname, 'fixtures');
const { rand, int, pick } = fuzzDraws(0xc11);

const ODD_TEXT = ['', '-1', '0', '1e300', 'NaN', 'Infinity', '2.5', '0x10', 'toString', '__proto__', ' 3', '64x', 'x64', '99999999999999999999',
  '-', '--', '/nonexistent/file', 'a,b', 'tgate:gate_step=NaN', 'ddim', 'fp16', 'webgpu', '1-3', '7..9'];
const FLAGS = [...new Set(buildProgram().commands.flatMap((c) => c.options.map((o) => o.long!))), '--toString', '--constructor', '--no-such-flag'];

/** Runs one command line with its output captured; returns the exit code and what it printed. */
async function run(argv: string[]): Promise<{ code: number; printed: string }> {
  let printed = '';
  const writes = [process.stdout.write, process.stderr.write];
  const capture = (chunk: string | Uint8Array) => {
    printed += String(chunk);
    return true;
  };
  process.stdout.write = capture as typeof process.stdout.write;
  process.stderr.write = capture as typeof process.stderr.write;
  try {
    return { code: await main(argv), printed };
  } finally {
    [process.stdout.write, process.stderr.write] = writes;
  }
}

/** `argv` with one or two tokens changed; never the subcommand, nor --dry-run (a real bench builds a random SD 1.5 first: minutes). */
function mutate(argv: string[]): string[] {
  const out = [...argv];
  for (let n = 1 + int(2); n > 0; n--) {
    const at = 1 + int(out.length - 1);
    if (out[at] === '--dry-run') continue;
    const r = rand();
    if (r < 0.45 && !out[at].startsWith('--')) out[at] = pick(ODD_TEXT);
    else if (r < 0.7 && out[at].startsWith('--')) out[at] = pick(FLAGS);
    else if (r < 0.85) out.splice(at, 1);
    else out.splice(at, 0, ...out.slice(at, at + 2));
  }
  return out;
}

test(`diffuse command lines: ${CASES} mutated commands per kind exit 0, or 2 with one diffuse: line`, async (t) => {
  const dir = tempDir(t);
  // Mutated values become relative output paths ("--json ddim"): they land in the temp folder, not the checkout.
  const cwd = process.cwd();
  process.chdir(dir);
  t.after(() => process.chdir(cwd));
  const out = (name: string) => path.join(dir, name);
  const bases = [
    ['generate', '--model', path.join(FIXTURES, 'tiny-sd1'), '--prompt', 'a red circle', '--steps', '2', '--size', '32', '--seed', '3', '--scheduler', 'ddim',
      '--guidance', '5', '--accel', 'tgate:gate_step=1', '--out', out('sd.png'), '--quiet'],
    ['generate', '--model', path.join(FIXTURES, 'tiny-dit'), '--class', '1', '--steps', '2', '--seed', '1', '--out', out('dit.png'), '--quiet'],
    ['bench', '--preset', 'sd15', '--dry-run', '--size', '256', '--steps', '10', '--accel', 'deepcache:cache_interval=3', '--json', out('bench.json')],
    ['inspect', '--preset', 'pixart-alpha-512', '--json', out('inspect.json')],
  ];
  const before = new Set(fs.readdirSync(cwd));
  const outcomes = { ran: 0, refused: 0 };
  for (const base of bases) {
    const started = performance.now();
    assert.equal((await run(base)).code, 0, `base command fails: ${base.join(' ')}`);
    for (let i = 0; i < CASES; i++) {
      const argv = mutate(base);
      const label = argv.join(' ');
      let result: { code: number; printed: string };
      try {
        result = await run(argv);
      } catch (err) {
        throw new Error(`${label}: threw ${err instanceof Error ? `${err.name}: ${err.message}` : String(err)}`);
      }
      assert.ok(result.code === 0 || result.code === 2, `${label}: exit ${result.code}: ${result.printed}`);
      if (result.code === 2) {
        const lines = result.printed.trimEnd().split('\n');
        assert.match(lines.at(-1)!, /^diffuse: /, `${label}: ${result.printed}`);
        assert.ok(!/\n\s+at /.test(result.printed), `${label}: a stack trace: ${result.printed}`);
      }
      outcomes[result.code === 0 ? 'ran' : 'refused']++;
    }
    t.diagnostic(`${base[0]} ${base[1]} ${base[2]}: ${((performance.now() - started) / 1000).toFixed(1)} s`);
  }
  for (const file of fs.readdirSync(dir)) assert.ok(!file.includes('.tmp'), `a half-written file left: ${file}`);
  assert.deepEqual(fs.readdirSync(cwd).filter((f) => !before.has(f)), [], 'nothing written into the checkout');
  // The help commander prints on its own keeps its lines.
  assert.ok((await run([])).printed.split('\n').length > 10, 'diffuse without a command prints its help, line by line');
  t.diagnostic(`ran ${outcomes.ran}, refused ${outcomes.refused}`);
});
