/**
 * Model folders that are not on a local disk (src/io/): the reference model served over HTTP on
 * loopback, mounted and read with Range requests as the browser build reads it, generates the same
 * image as from the folder on disk — plain and accelerated — and fetches tensors a segment at a
 * time, never a weights file whole. Broken servers and listings are one clear InputError.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { demoRequestHandler } from '../demo/server.ts';
import { parseAccelSpec } from '../src/accel/index.ts';
import { InputError } from '../src/errors.ts';
import { listFilesRecursively, totalMemory } from '../src/io/files.ts';
import * as os from 'node:os';
import { LISTING_FILE, mountHttpFolder, mountPickedFiles } from '../src/io/prefetched-source.ts';
import { REFERENCE_MODEL } from '../src/pipelines/reference-model.ts';
import { loadPipeline } from '../src/pipelines/stable-diffusion.ts';

interface Served { url: string; requests: { file: string; bytes: number; status: number }[]; close(): Promise<void> }

/** The demo server on loopback (Range requests, listings), logging each answer; ignoreRange drops the Range header. */
async function serve(options: { ignoreRange?: boolean } = {}): Promise<Served> {
  const requests: Served['requests'] = [];
  const server = http.createServer((req, res) => {
    if (options.ignoreRange) delete req.headers.range;
    const file = decodeURIComponent(new URL(req.url!, 'http://x').pathname).replace(/^\/models\//, '');
    res.on('finish', () => requests.push({ file, bytes: Number(res.getHeader('content-length') ?? 0), status: res.statusCode }));
    demoRequestHandler(req, res);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  return { url: `http://127.0.0.1:${port}/models/reference-model`, requests, close: () => new Promise((r) => server.close(() => r())) };
}

function maxDifference(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length);
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]));
  return worst;
}

test('the reference model over HTTP with Range requests generates what the folder on disk does, plain and with TGATE', async () => {
  const served = await serve();
  const unmount = await mountHttpFolder(served.url);
  const remote = await loadPipeline(served.url);
  const local = await loadPipeline(REFERENCE_MODEL);
  try {
    const request = { prompt: 'a red circle at the top left', seed: 3, steps: 6 };
    const tgate = [parseAccelSpec('tgate:gate_step=3')];
    for (const options of [request, { ...request, accel: tgate }] as { prompt: string; seed: number; steps: number; accel?: typeof tgate }[]) {
      const [a, b] = await Promise.all([remote.generate(options), local.generate(options)]);
      // Inline weights and external data are the same bytes, so the same sessions compute the same numbers.
      assert.ok(maxDifference(a.images[0].data, b.images[0].data) <= 1e-6, `${options.accel ? 'tgate' : 'plain'} image differs`);
    }
    const weights = listFilesRecursively(REFERENCE_MODEL);
    for (const [file, size] of Object.entries(weights).filter(([f]) => f.endsWith('.safetensors'))) {
      const reads = served.requests.filter((r) => r.file === `reference-model/${file}`);
      assert.ok(reads.length > 1, `${file}: read in parts`);
      assert.ok(reads.every((r) => r.status === 206 && r.bytes < size), `${file}: every read a Range request for part of the file`);
    }
  } finally {
    await Promise.all([remote.release(), local.release()]);
    unmount();
    await served.close();
  }
});

test('a server that ignores Range requests, a missing listing and a listing escaping the folder are clear InputErrors', async () => {
  const served = await serve({ ignoreRange: true });
  try {
    await assert.rejects(mountHttpFolder(served.url), (e: unknown) => e instanceof InputError && /ignores Range requests/.test(e.message));
    await assert.rejects(mountHttpFolder(`${served.url}/unet`),
      (e: unknown) => e instanceof InputError && e.message.includes(`unet/${LISTING_FILE}`) && /listing/.test(e.message));
    await assert.rejects(mountHttpFolder(served.url, { listing: { '../secret.json': 10 } }),
      (e: unknown) => e instanceof InputError && /plain path inside the folder/.test(e.message));
    await assert.rejects(mountHttpFolder(served.url, { listing: { 'model_index.json': -1 } }),
      (e: unknown) => e instanceof InputError && /wrong size/.test(e.message));
  } finally {
    await served.close();
  }
  // A listing that gives a file a size it does not have; a server that answers every path with its web page.
  const honest = await serve();
  try {
    const size = fs.statSync(path.join(REFERENCE_MODEL, 'model_index.json')).size;
    await assert.rejects(mountHttpFolder(honest.url, { listing: { 'model_index.json': size + 10 } }),
      (e: unknown) => e instanceof InputError && e.message.includes(`the server sent ${size} bytes for bytes 0–${size + 9}`) && e.message.includes(`expected ${size + 10} bytes`));
  } finally {
    await honest.close();
  }
  const page = http.createServer((_req, res) => res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end('<!doctype html><title>app</title>'));
  await new Promise<void>((resolve) => page.listen(0, '127.0.0.1', resolve));
  try {
    const url = `http://127.0.0.1:${(page.address() as { port: number }).port}/models/x`;
    await assert.rejects(mountHttpFolder(url, { listing: { 'model_index.json': 100 } }),
      (e: unknown) => e instanceof InputError && /answered with a web page, not the file.*found text\/html/.test(e.message));
  } finally {
    await new Promise((resolve) => page.close(resolve));
  }
});

test('a folder picked as File objects (a directory picker) loads as the folder on disk does', async () => {
  const dir = REFERENCE_MODEL;
  const picked = Object.keys(listFilesRecursively(dir)).map((p) => ({ path: `reference-model/${p}`, file: new Blob([fs.readFileSync(path.join(dir, p))]) }));
  const unmount = await mountPickedFiles('picked:reference-model', picked);
  const remote = await loadPipeline('picked:reference-model');
  const local = await loadPipeline(dir);
  try {
    const request = { prompt: 'a blue square on the right', seed: 1, steps: 4 };
    const [a, b] = await Promise.all([remote.generate(request), local.generate(request)]);
    assert.ok(maxDifference(a.images[0].data, b.images[0].data) <= 1e-6);
    await assert.rejects(loadPipeline('picked:reference-model/unet'), (e: unknown) => e instanceof InputError && /model_index\.json/.test(e.message));
  } finally {
    await Promise.all([remote.release(), local.release()]);
    unmount();
  }
});

test('the demo server refuses a bad PORT with one line naming it, exit 1', () => {
  for (const port of ['abc', '-1', '70000', '80.5']) {
    const run = spawnSync(process.execPath, ['--import', 'tsx', path.join(import.meta.dirname, '..', 'demo', 'server.ts')],
      { encoding: 'utf8', timeout: 60_000, env: { ...process.env, PORT: port } });
    assert.equal(run.status, 1, run.stderr);
    assert.equal(run.stderr.trim(), `error: PORT: expected a port number from 0 to 65535, found ${JSON.stringify(port)}`);
  }
});

test('in a page, the memory a run may plan for is at most what WebAssembly addresses, and a page\'s own `process` global is not Node', () => {
  const saved = process.getBuiltinModule;
  const hadNavigator = Object.getOwnPropertyDescriptor(globalThis, 'navigator');
  try {
    // A page with a `process` polyfill: no getBuiltinModule.
    Object.defineProperty(process, 'getBuiltinModule', { value: undefined, configurable: true, writable: true });
    Object.defineProperty(globalThis, 'navigator', { value: { deviceMemory: 8 }, configurable: true });
    assert.equal(totalMemory(), 4 * 2 ** 30, '8 GiB of device memory, 4 GiB of wasm32');
    Object.defineProperty(globalThis, 'navigator', { value: { deviceMemory: 2 }, configurable: true });
    assert.equal(totalMemory(), 2 * 2 ** 30);
  } finally {
    Object.defineProperty(process, 'getBuiltinModule', { value: saved, configurable: true, writable: true });
    if (hadNavigator) Object.defineProperty(globalThis, 'navigator', hadNavigator);
    else delete (globalThis as { navigator?: unknown }).navigator;
  }
  assert.equal(totalMemory(), os.totalmem());
});
