/**
 * The on-disk cache of ORT's optimised models (src/runtime/session-cache.ts): a second process (here,
 * a second pipeline) builds every session from the cache and draws the same image; changed weights
 * miss; a half-written entry is never read and a damaged one is rebuilt; a cache that cannot be
 * written only costs time; the CLI uses it by default and not with DIFFUSE_CACHE_DIR=off.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { loadPipeline } from '../src/pipelines/stable-diffusion.ts';
import { REFERENCE_MODEL } from '../src/pipelines/reference-model.ts';
import type { SessionCache } from '../src/runtime/ort-executor.ts';
import { openSessionCache } from '../src/runtime/session-cache.ts';
import { tempDir } from './helpers/files.ts';
import type { Precision } from '../src/graph/quantize.ts';

const CLI = path.join(import.meta.dirname, '..', 'bin', 'diffuse.js');

/** The cache, counting what it was asked. */
function counted(dir: string) {
  const cache = openSessionCache(dir);
  const counts = { hits: 0, misses: 0, commits: 0 };
  const committed: string[] = [];
  const wrapped: SessionCache = {
    ...cache,
    find(key) {
      const hit = cache.find(key);
      counts[hit ? 'hits' : 'misses']++;
      return hit;
    },
    begin(key) {
      const entry = cache.begin(key);
      return { ...entry, commit: () => { counts.commits++; committed.push(key); entry.commit(); } };
    },
  };
  return { cache: wrapped, counts, committed };
}

async function draw(model: string, sessionCache?: SessionCache, precision: Precision = 'fp32'): Promise<Float32Array> {
  const pipeline = await loadPipeline(model, { sessionCache, precision });
  try {
    return (await pipeline.generate({ prompt: 'a red circle at the top left', steps: 2, seed: 3 })).images[0].data;
  } finally {
    await pipeline.release();
  }
}

const entries = (dir: string) => fs.readdirSync(dir).filter((n) => !n.startsWith('.'));

test('a second pipeline builds every session from the cache and draws the same image as without one', async (t) => {
  const dir = tempDir(t);
  const plain = await draw(REFERENCE_MODEL);
  const first = counted(dir);
  assert.deepEqual(await draw(REFERENCE_MODEL, first.cache), plain);
  assert.ok(first.counts.misses > 10 && first.counts.hits === 0, JSON.stringify(first.counts));
  assert.equal(first.counts.commits, first.counts.misses);
  assert.equal(entries(dir).length, first.counts.commits);
  for (const entry of entries(dir)) assert.deepEqual(fs.readdirSync(path.join(dir, entry)).sort(), ['model.onnx', 'weights.bin']);

  const second = counted(dir);
  assert.deepEqual(await draw(REFERENCE_MODEL, second.cache), plain);
  assert.deepEqual(second.counts, { hits: first.counts.misses, misses: 0, commits: 0 });
});

test('int8 sessions are cached by their float weights: a hit makes no int8 weights, and changed weights miss', async (t) => {
  const work = tempDir(t);
  const model = path.join(work, 'model');
  fs.cpSync(REFERENCE_MODEL, model, { recursive: true, dereference: true });
  const dir = path.join(work, 'cache');
  const plain = await draw(model, undefined, 'int8');
  // What each key hashes, per precision: the int8 key covers the graph and how its int8 weights are made, not the weights themselves.
  const keyed = async (precision: Precision) => {
    const { cache, counts } = counted(dir);
    let bytes = 0;
    const image = await draw(model, { ...cache, key: (m, files, options) => ((bytes += m.length), cache.key(m, files, options)) }, precision);
    return { image, counts, bytes };
  };
  const fp32 = await keyed('fp32');
  const first = await keyed('int8');
  assert.deepEqual(first.image, plain);
  assert.ok(first.counts.misses > 10, JSON.stringify(first.counts));
  const unetBytes = fs.readdirSync(path.join(model, 'unet')).filter((f) => f.endsWith('.safetensors')).reduce((n, f) => n + fs.statSync(path.join(model, 'unet', f)).size, 0);
  assert.ok(first.bytes < fp32.bytes + unetBytes / 8, `int8 keys hash ${first.bytes} bytes, fp32 ${fp32.bytes}; the U-Net's int8 weights would be ~${unetBytes / 4}`);
  const second = await keyed('int8');
  assert.deepEqual(second.image, plain);
  assert.deepEqual(second.counts, { hits: first.counts.hits + first.counts.misses, misses: 0, commits: 0 });

  const unetWeights = fs.readdirSync(path.join(model, 'unet')).find((f) => f.endsWith('.safetensors'))!;
  const later = new Date(Date.now() + 60_000);
  fs.utimesSync(path.join(model, 'unet', unetWeights), later, later);
  const changed = await keyed('int8');
  assert.deepEqual(changed.image, plain);
  assert.ok(changed.counts.misses > 0, JSON.stringify(changed.counts));
});

test('pre-packed weights are kept only where another process ran them: ORT\'s crashing entries are written without, and every entry then loads', async (t) => {
  const dir = tempDir(t);
  const plain = await draw(REFERENCE_MODEL);
  // Every session pre-packed (by default only large ones are): two of the reference model's
  // segments crash ORT 1.30 when loaded that way, and their check in another process says so.
  let checks = 0;
  let refused = 0;
  const cache = openSessionCache(dir, { prepackFromBytes: 0 });
  const checked: SessionCache = { ...cache, verify: (file, options) => {
    checks++;
    const ok = cache.verify(file, options);
    if (!ok) refused++;
    return ok;
  } };
  assert.deepEqual(await draw(REFERENCE_MODEL, checked), plain);
  assert.equal(checks, entries(dir).length);
  assert.ok(refused >= 1 && refused < checks, `${refused} of ${checks} refused`);
  const second = counted(dir);
  assert.deepEqual(await draw(REFERENCE_MODEL, second.cache), plain);
  assert.equal(second.counts.misses, 0);
});

test('changed weights miss; a half-written entry is never read; a damaged entry is rebuilt; an unwritable cache only costs time', async (t) => {
  const work = tempDir(t);
  const model = path.join(work, 'model');
  fs.cpSync(REFERENCE_MODEL, model, { recursive: true, dereference: true });
  const dir = path.join(work, 'cache');
  const plain = await draw(model);
  const first = counted(dir);
  await draw(model, first.cache);

  // New modification time on the U-Net's weights: its sessions miss, the others hit.
  const unetWeights = fs.readdirSync(path.join(model, 'unet')).find((f) => f.endsWith('.safetensors'))!;
  const later = new Date(Date.now() + 60_000);
  fs.utimesSync(path.join(model, 'unet', unetWeights), later, later);
  const changed = counted(dir);
  assert.deepEqual(await draw(model, changed.cache), plain);
  assert.ok(changed.counts.misses > 0 && changed.counts.hits > 0, JSON.stringify(changed.counts));
  assert.equal(entries(dir).length, first.counts.commits + changed.counts.misses);

  // A crash mid-write leaves a temporary folder beside the entries: never read, and an entry in
  // use truncated on disk fails to load and is written again.
  const [victim] = changed.committed;
  fs.mkdirSync(path.join(dir, `.${victim}.999.dead`));
  fs.writeFileSync(path.join(dir, `.${victim}.999.dead`, 'model.onnx'), 'half');
  fs.truncateSync(path.join(dir, victim, 'model.onnx'), 10);
  const damaged = counted(dir);
  assert.deepEqual(await draw(model, damaged.cache), plain);
  assert.equal(damaged.counts.commits, 1, 'the damaged entry was written again');
  assert.ok(fs.statSync(path.join(dir, victim, 'model.onnx')).size > 10);

  // A cache folder under a file cannot be created: the run goes on without it.
  const blocked = path.join(work, 'a-file');
  fs.writeFileSync(blocked, '');
  assert.deepEqual(await draw(model, openSessionCache(path.join(blocked, 'cache'))), plain);
  // Nor can one under /proc (where Node's recursive mkdir would never return).
  assert.deepEqual(await draw(model, openSessionCache('/proc/diffusion-ts-cache/sessions')), plain);
});

test('the CLI caches by default (DIFFUSE_CACHE_DIR) and not with DIFFUSE_CACHE_DIR=off', (t) => {
  const work = tempDir(t);
  const dir = path.join(work, 'cache');
  const run = (cacheDir: string, out: string) => spawnSync(process.execPath, [CLI, 'generate', '--prompt', 'a blue square', '--steps', '2', '--seed', '1', '--out', path.join(work, out)],
    { encoding: 'utf8', env: { ...process.env, DIFFUSE_CACHE_DIR: cacheDir } });
  assert.equal(run(dir, 'a.png').status, 0);
  const written = entries(dir).length;
  assert.ok(written > 10);
  const again = run(dir, 'b.png');
  assert.equal(again.status, 0, again.stderr);
  assert.equal(entries(dir).length, written, 'the second process wrote nothing new');
  assert.deepEqual(fs.readFileSync(path.join(work, 'a.png')), fs.readFileSync(path.join(work, 'b.png')));
  const off = run('off', 'c.png');
  assert.equal(off.status, 0, off.stderr);
  assert.equal(fs.existsSync(path.join(work, 'off')), false);
  assert.deepEqual(fs.readFileSync(path.join(work, 'a.png')), fs.readFileSync(path.join(work, 'c.png')));
});

test('a writer that died leaves a temporary folder the next writing process clears after a day; reading processes leave it', (t) => {
  const dir = tempDir(t);
  const [old, fresh] = [path.join(dir, '.dead.1.aaaa'), path.join(dir, '.busy.2.bbbb')];
  for (const folder of [old, fresh]) fs.mkdirSync(folder);
  const twoDaysAgo = new Date(Date.now() - 2 * 24 * 3600 * 1000);
  fs.utimesSync(old, twoDaysAgo, twoDaysAgo);
  const cache = openSessionCache(dir);
  assert.equal(cache.find('nothing'), undefined);
  assert.ok(fs.existsSync(old), 'a lookup does not sweep');
  const entry = cache.begin('k');
  assert.equal(fs.existsSync(old), false);
  assert.ok(fs.existsSync(fresh), 'a folder being written now is kept');
  entry.discard();
});

test('past its size limit the cache removes the entries used least recently, a hit counting as a use; a bad DIFFUSE_CACHE_MAX_GB is refused', (t) => {
  const dir = tempDir(t);
  const cache = openSessionCache(dir, { maxBytes: 11_000 });
  const write = (key: string) => {
    const entry = cache.begin(key);
    fs.writeFileSync(entry.modelPath, Buffer.alloc(4000));
    entry.commit();
  };
  write('a');
  write('b');
  const hourAgo = new Date(Date.now() - 3600 * 1000);
  for (const key of ['a', 'b']) fs.utimesSync(path.join(dir, key), hourAgo, hourAgo);
  assert.ok(cache.find('a'), 'a is used now: b is the least recently used');
  write('c'); // 12,000 bytes: over the limit, trimmed to at most 3/4 of it
  assert.deepEqual(entries(dir).sort(), ['a', 'c']);
  const run = spawnSync(process.execPath, [CLI, 'generate', '--prompt', 'x', '--steps', '1', '--out', path.join(dir, 'x.png')],
    { encoding: 'utf8', env: { ...process.env, DIFFUSE_CACHE_DIR: path.join(dir, 'cli'), DIFFUSE_CACHE_MAX_GB: 'lots' } });
  assert.equal(run.status, 2, run.stderr);
  assert.match(run.stderr, /^diffuse: DIFFUSE_CACHE_MAX_GB: wrong value; expected a positive number of GiB, found "lots"$/m);
});
