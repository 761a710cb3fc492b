/**
 * `tune --speedup X` and plan files: the climb (src/tune/speedup.ts) on a synthetic measure, the
 * search on the reference model writing a plan that `generate --accel @plan.json` runs as the same
 * methods given by hand, and one clear line for every bad plan file.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { AccelSpec } from '../src/accel/index.ts';
import { tune, type TuneFlags } from '../src/cli/tune.ts';
import { climbToSpeedup, composableSets, describePlan, frontier, methodLadders, type Ladder, type Measured } from '../src/tune/speedup.ts';
import type { Precision } from '../src/graph/quantize.ts';
import { tempDir } from './helpers/files.ts';
import { pngText } from './helpers/png.ts';

const CLI = path.join(import.meta.dirname, '..', 'bin', 'diffuse.js');

/** The ladders a U-Net takes, in the search's order. */
const unetLadders = (calls: number, int8 = false) => methodLadders(calls, int8).filter((l) => ['deepcache', 'tgate', 'tome', 'int8'].includes(l.method));

/** The search on the reference DiT, 10 steps, one class to tune on and one to check on: the plan file it wrote. */
async function tuneReferenceDiT(dir: string, target: Pick<TuneFlags, 'speedup' | 'macSpeedup'>) {
  const out = path.join(dir, 'plan.json');
  await tune({ model: 'reference-dit', method: 'attn-reuse', steps: 10, reuse: 1, count: 1, epsilon: 0, seed: 0, out, maxRounds: 100, ...target });
  return { out, plan: JSON.parse(fs.readFileSync(out, 'utf8')) };
}

test('the climb takes the step that loses the least PSNR per speed gained, stops at the target, and keeps every plan it measured', async () => {
  const ladders = unetLadders(20);
  assert.deepEqual(ladders.map((l) => l.settings.length), [4, 4, 3]);
  assert.deepEqual(ladders[1].settings.map((s) => s.gate_step), [16, 12, 8, 5]);
  // Synthetic: DeepCache gains 1.5× a rung for 3 dB, TGATE 1.2× for 1 dB, ToMe 1.1× for 2 dB.
  const effect: Record<string, [number, number]> = { deepcache: [1.5, 3], tgate: [1.2, 1], tome: [1.1, 2] };
  const rungOf = (plan: AccelSpec[], method: string) => {
    const spec = plan.find((s) => s.method === method);
    const ladder = ladders.find((l) => l.method === method)!;
    return spec ? ladder.settings.findIndex((s) => JSON.stringify(s) === JSON.stringify(spec.params)) + 1 : 0;
  };
  let calls = 0;
  const measure = async (plan: AccelSpec[], precision: Precision): Promise<Measured> => {
    calls++;
    let speedup = 1;
    let loss = 0;
    for (const [method, [gain, cost]] of Object.entries(effect)) {
      speedup *= gain ** rungOf(plan, method);
      loss += cost * rungOf(plan, method);
    }
    return { plan, precision, speedup, macSpeedup: speedup, psnr: 60 - loss };
  };
  const rounds: string[] = [];
  const { measured, path: climb } = await climbToSpeedup(ladders, 3, measure, (_round, pick) => rounds.push(describePlan(pick.plan)));
  // Cost per log-speed: DeepCache 3/ln 1.5 = 7.4, TGATE 1/ln 1.2 = 5.5, ToMe 2/ln 1.1 = 21: TGATE first, all four rungs, then DeepCache.
  assert.deepEqual(rounds.slice(0, 4), ['tgate:gate_step=16', 'tgate:gate_step=12', 'tgate:gate_step=8', 'tgate:gate_step=5']);
  assert.equal(rounds[4], 'deepcache:cache_interval=2 + tgate:gate_step=5');
  assert.ok(climb[climb.length - 1].speedup >= 3 && climb[climb.length - 2].speedup < 3);
  assert.equal(calls, measured.length, 'each plan measured once');
  const front = frontier(measured);
  for (const a of front) assert.ok(!measured.some((b) => b.speedup > a.speedup && b.psnr > a.psnr), `${describePlan(a.plan)} is beaten`);
  assert.ok(front.every((m, i) => i === 0 || m.speedup >= front[i - 1].speedup));
});

test('a plan that cannot run here (refused by its check, e.g. over the memory limit) is never picked nor on the frontier; the climb goes on without it', async () => {
  const ladders = unetLadders(20);
  // Synthetic: DeepCache 1.5× a rung for 3 dB, TGATE 1.2× for 1 dB (the cheaper), but any plan with TGATE's third rung is refused.
  const measure = async (plan: AccelSpec[], precision: Precision): Promise<Measured> => {
    const rung = (method: string, key: string) => {
      const spec = plan.find((s) => s.method === method);
      return spec ? ladders.find((l) => l.method === method)!.settings.findIndex((x) => x[key] === spec.params![key]) + 1 : 0;
    };
    const [dc, tg] = [rung('deepcache', 'cache_interval'), rung('tgate', 'gate_step')];
    if (tg >= 3) return { plan, precision, speedup: 0, macSpeedup: 0, psnr: -Infinity, refused: 'over the limit' };
    return { plan, precision, speedup: 1.5 ** dc * 1.2 ** tg, macSpeedup: 1, psnr: 60 - 3 * dc - tg };
  };
  const { measured, path: climb } = await climbToSpeedup(ladders.filter((l) => l.method !== 'tome'), 3, measure);
  assert.ok(measured.some((m) => m.refused), 'the refused plans were asked');
  assert.ok(climb.every((m) => !m.refused));
  assert.deepEqual(climb.slice(1, 3).map((m) => describePlan(m.plan)), ['tgate:gate_step=16', 'tgate:gate_step=12']);
  assert.ok(climb[climb.length - 1].speedup >= 3, 'DeepCache takes it the rest of the way');
  assert.ok(frontier(measured).every((m) => !m.refused));
  // Every step up refused: the climb ends where it is.
  const none = await climbToSpeedup(ladders.filter((l) => l.method === 'tgate'), 3, async (plan, precision) =>
    plan.length ? { plan, precision, speedup: 0, macSpeedup: 0, psnr: -Infinity, refused: 'over the limit' } : { plan, precision, speedup: 1, macSpeedup: 1, psnr: 100 });
  assert.deepEqual(none.path.map((m) => describePlan(m.plan)), ['none']);
});

test('int8 is one more rung: taken when it loses the least PSNR per speed gained, and named with the plan', async () => {
  const ladders = unetLadders(20, true);
  assert.deepEqual(ladders.map((l) => l.method), ['deepcache', 'tgate', 'tome', 'int8']);
  // Synthetic: int8 1.9× for 0.5 dB (as measured on SD 1.5 at 512²: 1.93×, ~46 dB), DeepCache 1.5× a rung for 3 dB.
  const measure = async (plan: AccelSpec[], precision: Precision): Promise<Measured> => {
    const dc = plan.find((s) => s.method === 'deepcache') ? ladders[0].settings.findIndex((x) => x.cache_interval === plan[0].params!.cache_interval) + 1 : 0;
    const [speedup, loss] = [1.5 ** dc * (precision === 'int8' ? 1.9 : 1), 3 * dc + (precision === 'int8' ? 0.5 : 0) + 2 * plan.filter((s) => s.method !== 'deepcache').length];
    return { plan, precision, speedup, macSpeedup: 1.5 ** dc, psnr: 60 - loss };
  };
  const { path: climb } = await climbToSpeedup(ladders, 2.5, measure);
  assert.deepEqual(climb.map((m) => describePlan(m.plan, m.precision)), ['none', 'int8', 'deepcache:cache_interval=2 at int8']);
});

test('tune --speedup on the reference model writes a plan that generate --accel @plan.json runs as the same methods by hand', async (t) => {
  const dir = tempDir(t);
  const out = path.join(dir, 'plan.json');
  await tune({ method: 'attn-reuse', steps: 10, reuse: 1, count: 2, epsilon: 0, guidance: 7.5, seed: 0, out, maxRounds: 100, speedup: 1.4 });
  const plan = JSON.parse(fs.readFileSync(out, 'utf8'));
  // The winner may be methods, int8, or both (int8 alone changes no MACs).
  assert.ok(Array.isArray(plan.accel) && (plan.accel.length >= 1 || plan.precision === 'int8'), JSON.stringify(plan));
  assert.equal(plan.model, 'reference');
  assert.ok(plan.speedup >= 1.4 || plan.frontier.every((m: { speedup: number }) => m.speedup < 1.4), `measured ×${plan.speedup}`);
  assert.ok(plan.accel.length === 0 || plan.macSpeedup > 1.02, `MAC speed-up ${plan.macSpeedup}`);
  assert.ok(plan.psnr > 15 && plan.psnr < 100 && plan.heldOutPsnr > 10, `PSNR ${plan.psnr}, held out ${plan.heldOutPsnr}`);
  assert.equal(plan.prompts.length, 2);
  assert.equal(plan.heldOut.length, 2);
  assert.ok(plan.frontier.length >= 2);

  const generate = (accel: string[], file: string) => spawnSync(process.execPath, [CLI, 'generate', '--prompt', 'a red circle', '--steps', '10', '--seed', '4',
    ...accel.flatMap((a) => ['--accel', a]), '--out', path.join(dir, file)], { encoding: 'utf8' });
  const fromPlan = generate([`@${out}`], 'plan.png');
  assert.equal(fromPlan.status, 0, fromPlan.stderr);
  assert.ok(['fp32', 'int8'].includes(plan.precision), plan.precision);
  const byHand = spawnSync(process.execPath, [CLI, 'generate', '--prompt', 'a red circle', '--steps', '10', '--seed', '4', '--precision', plan.precision,
    ...plan.accel.flatMap((a: string) => ['--accel', a]), '--out', path.join(dir, 'hand.png')], { encoding: 'utf8' });
  assert.equal(byHand.status, 0, byHand.stderr);
  assert.deepEqual(fs.readFileSync(path.join(dir, 'plan.png')), fs.readFileSync(path.join(dir, 'hand.png')));

  await assert.rejects(tune({ method: 'attn-reuse', steps: 10, reuse: 1, count: 40, epsilon: 0, guidance: 7.5, seed: 0, maxRounds: 100, speedup: 2 }),
    /--count: 40 prompts to tune on and 40 others to check the plan on; expected at least 80 prompts, found \d+/);
  await assert.rejects(tune({ method: 'attn-reuse', steps: 10, reuse: 1, epsilon: 0, guidance: 7.5, seed: 0, maxRounds: 100, speedup: 1 }),
    /--speedup: wrong value; expected a number above 1/);
});

test('Skip-Cache\'s ladder cuts nearer the ends before it caches longer, only as deep as the model\'s long skips reach', () => {
  const skipCache = (maxBranch?: number) => methodLadders(25, false, maxBranch === undefined ? undefined
    : { kind: 'Skip-DiT', transformerBlocks: [], longSkips: { maxBranch, describe: '' } }).find((l) => l.method === 'skip-cache')!.settings;
  assert.deepEqual(skipCache(5), [
    { cache_interval: 2, skip_at_branch: 4 }, { cache_interval: 2, skip_at_branch: 2 }, { cache_interval: 2, skip_at_branch: 1 },
    { cache_interval: 3, skip_at_branch: 1 }, { cache_interval: 4, skip_at_branch: 1 }, { cache_interval: 5, skip_at_branch: 1 },
  ]);
  assert.deepEqual(skipCache(2).map((s) => s.skip_at_branch), [2, 1, 1, 1, 1]);
  assert.deepEqual(skipCache(1).map((s) => `${s.cache_interval}/${s.skip_at_branch}`), ['2/1', '3/1', '4/1', '5/1']);
  assert.equal(methodLadders(2).find((l) => l.method === 'skip-cache'), undefined, 'no call left to reuse a cache');
});

test('methods that cannot compose are searched in separate climbs: the largest sets that compose', () => {
  const ladder = (method: string): Ladder => ({ method, settings: [{}] });
  const names = (sets: Ladder[][]) => sets.map((set) => set.map((l) => l.method).join('+'));
  const conflicting = (pairs: string[]) => (a: Ladder, b: Ladder) => !pairs.includes(`${a.method}+${b.method}`) && !pairs.includes(`${b.method}+${a.method}`);
  const [a, b, c, d] = ['a', 'b', 'c', 'd'].map(ladder);
  assert.deepEqual(names(composableSets([a, b, c, d], conflicting([]))), ['a+b+c+d']);
  // b, c and d exclude each other (the transformer block caches), a composes with all.
  assert.deepEqual(names(composableSets([a, b, c, d], conflicting(['b+c', 'b+d', 'c+d']))), ['a+b', 'a+c', 'a+d']);
  assert.deepEqual(names(composableSets([a, b, c, d], conflicting(['a+b', 'c+d']))), ['a+c', 'a+d', 'b+c', 'b+d']);
  assert.deepEqual(names(composableSets([a, b, c], conflicting(['a+c']))), ['a+b', 'b+c']);
  assert.deepEqual(names(composableSets([], conflicting([]))), ['']);
});

test('tune --speedup on the reference DiT searches its block caches one at a time and writes a plan generate runs as the same methods by hand', async (t) => {
  const dir = tempDir(t);
  const { out, plan } = await tuneReferenceDiT(dir, { speedup: 1.5 });
  assert.equal(plan.model, 'reference-dit');
  assert.equal(plan.prompts.length, 1);
  assert.equal(plan.heldOut.length, 1);
  assert.notEqual(plan.prompts[0], plan.heldOut[0], 'tuned and checked on different classes');
  const caches = ['fora', 'fbcache', 'teacache'];
  for (const m of plan.frontier) {
    assert.ok(!/deepcache|skip-cache/.test(m.accel), `a method the plain DiT does not take: ${m.accel}`);
    assert.ok(caches.filter((c) => m.accel.includes(`${c}:`)).length <= 1, `two block caches at once: ${m.accel}`);
  }
  assert.ok(plan.psnr > 10 && plan.psnr <= 100, `PSNR ${plan.psnr}`);
  const run = (file: string, args: string[]) => spawnSync(process.execPath, [CLI, 'generate', '--model', 'reference-dit', '--class', plan.heldOut[0], '--steps', '10',
    '--seed', '2', ...args, '--out', path.join(dir, file)], { encoding: 'utf8' });
  const fromPlan = run('plan.png', ['--accel', `@${out}`]);
  assert.equal(fromPlan.status, 0, fromPlan.stderr);
  const byHand = run('hand.png', ['--precision', plan.precision, ...plan.accel.flatMap((a: string) => ['--accel', a])]);
  assert.equal(byHand.status, 0, byHand.stderr);
  assert.deepEqual(fs.readFileSync(path.join(dir, 'plan.png')), fs.readFileSync(path.join(dir, 'hand.png')));
});

test('a bad plan file is one line naming it, what was expected and what was found', (t) => {
  const dir = tempDir(t);
  const cases: [string | undefined, RegExp][] = [
    [undefined, /--accel @\S+: cannot be read \(ENOENT\); expected a plan file: JSON with an "accel" list/],
    ['{"accel": ', /--accel @\S+: is not valid JSON/],
    ['[1, 2]', /--accel @\S+: accel: missing or not a list; expected a list of methods as --accel takes them, found nothing/],
    ['{"accel": "tgate"}', /--accel @\S+: accel: missing or not a list; expected a list of methods as --accel takes them, found "tgate"/],
    ['{"accel": ["nosuch"]}', /--accel @\S+: accel: unknown method; expected .*tgate.*, found "nosuch"/],
    ['{"accel": [{"method": "deepcache", "params": {"cache_interval": 0}}]}', /--accel @\S+: accel deepcache:cache_interval: wrong value; expected an integer ≥ 1/],
    ['{"accel": [], "precision": "bf16"}', /--accel @\S+: precision: unknown precision \(onnxruntime 1.30 has no bfloat16 matrix kernels on CPU\); expected fp32, int8 or fp16, found "bf16"/],
  ];
  for (const [i, [text, message]] of cases.entries()) {
    const file = path.join(dir, `plan-${i}.json`);
    if (text !== undefined) fs.writeFileSync(file, text);
    const run = spawnSync(process.execPath, [CLI, 'generate', '--prompt', 'x', '--accel', `@${file}`, '--out', path.join(dir, 'x.png')], { encoding: 'utf8' });
    assert.equal(run.status, 2, `${text}: ${run.stderr}`);
    assert.match(run.stderr, message);
    assert.equal(run.stderr.trim().split('\n').length, 1, run.stderr);
    assert.equal(fs.existsSync(path.join(dir, 'x.png')), false);
  }
});

test('a plan\'s precision applies unless --precision is given; two plans naming different ones are refused', (t) => {
  const dir = tempDir(t);
  const write = (name: string, plan: unknown) => {
    fs.writeFileSync(path.join(dir, name), JSON.stringify(plan));
    return `@${path.join(dir, name)}`;
  };
  const int8 = write('int8.json', { accel: ['deepcache:cache_interval=2'], precision: 'int8' });
  const fp32 = write('fp32.json', { accel: [], precision: 'fp32' });
  const generate = (out: string, ...args: string[]) => spawnSync(process.execPath, [CLI, 'generate', '--prompt', 'a red circle', '--steps', '6', '--seed', '1',
    ...args, '--out', path.join(dir, out)], { encoding: 'utf8' });
  const settingsOf = (file: string) => JSON.parse(pngText(new Uint8Array(fs.readFileSync(path.join(dir, file))))['diffusion.ts']);
  for (const [out, args, precision] of [['a.png', ['--accel', int8], 'int8'], ['b.png', ['--accel', int8, '--precision', 'fp32'], 'fp32']] as const) {
    const run = generate(out, ...args);
    assert.equal(run.status, 0, run.stderr);
    assert.equal(settingsOf(out).precision, precision, `${args.join(' ')}`);
  }
  const both = generate('c.png', '--accel', int8, '--accel', fp32);
  assert.equal(both.status, 2);
  assert.match(both.stderr, /--accel @\S+fp32\.json: precision: differs from @\S+int8\.json's; expected int8, found fp32/);
  assert.equal(fs.existsSync(path.join(dir, 'c.png')), false);
});

test('tune --mac-speedup: a MAC budget instead of a measured speed-up, fp32 plans only; one target at a time', async (t) => {
  const { plan } = await tuneReferenceDiT(tempDir(t), { macSpeedup: 1.8 });
  assert.equal(plan.targetKind, 'MACs');
  assert.equal(plan.precision, 'fp32');
  assert.ok(plan.macSpeedup >= 1.8 || plan.frontier.every((m: { macSpeedup: number }) => m.macSpeedup < 1.8), `MAC speed-up ${plan.macSpeedup}`);
  assert.ok(plan.frontier.every((m: { accel: string }) => !m.accel.includes('int8')), 'no int8 plan: it changes no MACs');
  // The frontier is by MACs: sorted by them, and none beaten on both MACs and PSNR.
  const front = plan.frontier as { macSpeedup: number; psnr: number }[];
  assert.ok(front.every((m, i) => i === 0 || m.macSpeedup >= front[i - 1].macSpeedup));
  await assert.rejects(tune({ method: 'attn-reuse', steps: 10, reuse: 1, epsilon: 0, seed: 0, maxRounds: 100, macSpeedup: 0.5 }), /--mac-speedup: wrong value; expected a number above 1/);
  await assert.rejects(tune({ method: 'attn-reuse', steps: 10, reuse: 1, epsilon: 0, seed: 0, maxRounds: 100, macSpeedup: 2, speedup: 2 }),
    /--mac-speedup: is another target; expected --speedup or --mac-speedup, not both/);
});
