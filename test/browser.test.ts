/**
 * The demo page in a real browser: Debian's Chromium (never a downloaded one) driven by
 * playwright-core, the page built by Vite and served by demo/server.ts on loopback. It generates
 * with the reference model on wasm and on WebGPU (SwiftShader: a CPU emulating a GPU, so few steps),
 * equal to Node's CPU image for the same request; a TGATE compare run reports speed-up, MAC ratio
 * and PSNR; bad form input is one clear message. Skipped, saying why, where Chromium is absent
 * (.ci/run installs it).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Server } from 'node:http';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { build } from 'vite';
import { createDemoServer } from '../demo/server.ts';
import { parseAccelSpec } from '../src/accel/index.ts';
import { psnr } from '../src/metrics/image.ts';
import type { Transfers } from '../src/runtime/ort-executor.ts';
import { loadDiTPipeline } from '../src/pipelines/dit.ts';
import { loadPixArtPipeline } from '../src/pipelines/pixart.ts';
import { REFERENCE_MODEL, REFERENCE_MODELS } from '../src/pipelines/reference-model.ts';
import { loadPipeline } from '../src/pipelines/stable-diffusion.ts';
import { readPipelineFolder } from '../src/weights/diffusers-folder.ts';

const CHROMIUM = '/usr/bin/chromium';
// In CI (.ci/run installs it) a missing Chromium fails the tests; elsewhere they are skipped, saying why.
const skip = fs.existsSync(CHROMIUM) || process.env.CI ? false : `${CHROMIUM} is missing (apt-get install chromium)`;
/** wasm runs the same MLAS-family kernels as Node's CPU provider, compiled to wasm: equal to float rounding. */
const WASM_MAX_DIFFERENCE = 1e-4;
/**
 * WebGPU on SwiftShader: measured 101 dB against the CPU image (4 steps, CFG 7.5), float rounding,
 * since attention is built from MatMul and Softmax there (onnxruntime-web's WebGPU
 * MultiHeadAttention was wrong for 32+ query tokens: 28 dB; src/runtime/ort-executor.ts).
 */
const WEBGPU_MIN_PSNR = 60;

let server: Server;
let context: BrowserContext;
let page: Page;
let base: string;

before(async () => {
  if (skip) return;
  await build({ configFile: path.join(import.meta.dirname, '..', 'demo', 'vite.config.ts'), logLevel: 'error' });
  server = createDemoServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as { port: number }).port}/`;
  context = await chromium.launchPersistentContext(fs.mkdtempSync(path.join(os.tmpdir(), 'chromium-')), {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--enable-unsafe-webgpu', '--no-sandbox', '--disable-background-networking', '--disable-component-update',
      '--disable-sync', '--no-first-run', '--disable-quic'],
  });
  page = await context.newPage();
  page.on('pageerror', (e) => console.error(`page error: ${e.message}`));
  await page.goto(base);
  await page.waitForFunction(() => (window as unknown as { demo?: { ready: boolean } }).demo?.ready === true);
});

after(async () => {
  await context?.close();
  await new Promise((resolve) => (server ? server.close(resolve) : resolve(undefined)));
});

interface PageState { runs: { images: { data: number[] }[]; seconds: number; macs: number; steps: number; transfers: Transfers }[]; speedup?: number; macRatio?: number; psnr?: number; error?: string }

interface FormOptions {
  /** An embedded model from the page's menu; absent: keep what is chosen (a picked folder stays picked). */
  model?: string;
  device?: string;
  /** One method and its knobs, e.g. ['tgate', 'gate_step=2']; every other method unticked. */
  accel?: [string, string];
  compare?: boolean;
  binning?: boolean;
}

/** Fills the form, clicks Generate and waits for the page to finish. */
async function generate(fields: Record<string, string>, options: FormOptions = {}): Promise<PageState> {
  if (options.model) await page.selectOption('#model', options.model);
  await page.selectOption('#device', options.device ?? 'cpu');
  for (const [id, value] of Object.entries(fields)) await page.fill(`#${id}`, value);
  for (const box of await page.$$('[data-method]')) {
    const name = await box.getAttribute('data-method');
    await box.setChecked(name === options.accel?.[0]);
    await page.fill(`[data-knobs="${name}"]`, name === options.accel?.[0] ? options.accel[1] : '');
  }
  await page.setChecked('#compare', options.compare ?? false);
  if (options.binning !== undefined) await page.setChecked('#binning', options.binning);
  await page.evaluate(() => { (window as unknown as { demo: { ready: boolean } }).demo.ready = false; });
  await page.click('#generate');
  await page.waitForFunction(() => (window as unknown as { demo: { ready: boolean } }).demo.ready, null, { timeout: Number(process.env.BROWSER_TIMEOUT ?? 300_000) });
  return page.evaluate(() => (window as unknown as { demo: PageState }).demo);
}

const REQUEST = { prompt: 'a blue square on the right', seed: 5, steps: 4, guidanceScale: 7.5 };
const FIELDS = { prompt: REQUEST.prompt, negative: '', seed: '5', steps: '4', guidance: '7.5', scheduler: '', width: '64', height: '64' };

async function nodeImages(accel?: string): Promise<Float32Array> {
  const pipeline = await loadPipeline(REFERENCE_MODEL);
  try {
    return (await pipeline.generate({ ...REQUEST, accel: accel ? [parseAccelSpec(accel)] : undefined })).images[0].data;
  } finally {
    await pipeline.release();
  }
}

function maxDifference(a: number[], b: Float32Array): number {
  assert.equal(a.length, b.length);
  return a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i])), 0);
}

test('on wasm the page draws what Node draws on its CPU, plain and in a TGATE compare run', { skip }, async () => {
  const plain = await generate(FIELDS, { model: 'reference-model' });
  assert.equal(plain.error, undefined);
  const reference = await nodeImages();
  assert.ok(maxDifference(plain.runs[0].images[0].data, reference) <= WASM_MAX_DIFFERENCE, 'wasm image = Node CPU image');

  const compared = await generate(FIELDS, { accel: ['tgate', 'gate_step=2'], compare: true });
  assert.equal(compared.error, undefined);
  const [baseline, accelerated] = compared.runs;
  assert.ok(maxDifference(baseline.images[0].data, reference) <= WASM_MAX_DIFFERENCE, 'baseline = Node CPU image');
  assert.ok(maxDifference(accelerated.images[0].data, await nodeImages('tgate:gate_step=2')) <= WASM_MAX_DIFFERENCE, 'TGATE image = Node CPU TGATE image');
  assert.ok(compared.macRatio! > 1.2, `TGATE spends fewer MACs (ratio ${compared.macRatio})`);
  assert.ok(compared.speedup! > 0 && Number.isFinite(compared.psnr!), 'speed-up and PSNR reported');
  const report = await page.textContent('#report');
  for (const word of ['speed-up', 'MAC ratio', 'PSNR']) assert.ok(report!.includes(word), `report shows ${word}`);
});

test('on WebGPU (SwiftShader) the page draws Node\'s CPU image within the stated tolerance', { skip }, async (t) => {
  const state = await generate(FIELDS, { device: 'webgpu' });
  assert.equal(state.error, undefined);
  const value = psnr(Float32Array.from(state.runs[0].images[0].data), await nodeImages());
  t.diagnostic(`WebGPU vs CPU: ${value.toFixed(1)} dB; ${JSON.stringify(state.runs[0].transfers)} over ${state.runs[0].steps} steps`);
  assert.ok(value >= WEBGPU_MIN_PSNR, `WebGPU vs CPU PSNR ${value.toFixed(1)} dB`);
  // Segment outputs stay on the GPU: each step brings back only the noise prediction the scheduler needs.
  assert.equal(state.runs[0].transfers.toHost, state.runs[0].steps, 'one copy to the CPU per step');
  assert.match((await page.textContent('#report'))!, /GPU↔CPU copies.*per denoising step 1\.0 copies to the CPU/);
});

test('a folder opened with the directory picker loads and generates like the embedded model', { skip }, async () => {
  await page.setInputFiles('#folder', REFERENCE_MODEL);
  await page.waitForFunction(() => /Model: reference-model/.test(document.getElementById('model-name')!.textContent ?? ''));
  const state = await generate(FIELDS);
  assert.equal(state.error, undefined);
  assert.ok(maxDifference(state.runs[0].images[0].data, await nodeImages()) <= WASM_MAX_DIFFERENCE);
});

test('bad form input is one clear message naming the field', { skip }, async () => {
  const cases: [Record<string, string>, RegExp][] = [
    // The reference model's VAE scales by 4, so sizes must be multiples of 4.
    [{ width: '62' }, /width.*multiples of 4.*62/i],
    [{ scheduler: 'nonsense' }, /scheduler.*nonsense/i],
    [{ steps: '2.5' }, /steps.*an integer.*2\.5/i],
  ];
  for (const [fields, message] of cases) {
    const state = await generate({ ...FIELDS, ...fields });
    assert.match(state.error ?? '', message);
    assert.doesNotMatch(state.error ?? '', /unexpected error|    at /);
    assert.equal(await page.textContent('#error'), state.error);
  }
  const unaccelerated = await generate(FIELDS, { compare: true });
  assert.match(unaccelerated.error ?? '', /compare.*needs an acceleration/);
  assert.equal(unaccelerated.runs.length, 0, 'nothing generated');
});

test('a page refuses, by name, load options only Node reads and unknown ones', { skip }, async () => {
  const messages = await page.evaluate(async () => {
    const { loadPipeline } = (window as unknown as { diffusion: { loadPipeline: (dir: string, options: object) => Promise<unknown> } }).diffusion;
    const said: string[] = [];
    for (const options of [{ threads: 2 }, { sessionCache: {} }, { devise: 'webgpu' }]) {
      said.push(await loadPipeline('/models/reference-model', options).then(() => 'loaded', (e: Error) => `${e.name}: ${e.message}`));
    }
    return said;
  });
  assert.match(messages[0], /^InputError: threads: read only in Node \(in a page ort\.env\.wasm\.numThreads sets them\)/);
  assert.match(messages[1], /^InputError: sessionCache: read only in Node/);
  assert.match(messages[2], /^InputError: devise: unknown load option; expected device, threads, sessionCache, precision, variant/);
});

test('the embedded DiT draws Node\'s image for a class name; a Skip-Cache compare run on the Skip-DiT draws Node\'s cached image', { skip }, async () => {
  const fields = { class: 'red circle at the top left', seed: '3', steps: '6', guidance: '4', scheduler: '' };
  const request = { classLabels: ['red circle at the top left'], seed: 3, steps: 6, guidanceScale: 4 };
  const node = async (model: string, accel?: string) => {
    const pipeline = loadDiTPipeline(readPipelineFolder(REFERENCE_MODELS[model]));
    try {
      return (await pipeline.generate({ ...request, accel: accel ? [parseAccelSpec(accel)] : undefined })).images[0].data;
    } finally {
      await pipeline.release();
    }
  };
  const dit = await generate(fields, { model: 'reference-dit' });
  assert.equal(dit.error, undefined);
  assert.equal(await page.inputValue('#steps'), '6', 'a run leaves the form as the user filled it');
  assert.ok(maxDifference(dit.runs[0].images[0].data, await node('reference-dit')) <= WASM_MAX_DIFFERENCE, 'DiT image = Node CPU image');

  const cached = await generate(fields, { model: 'reference-skip-dit', accel: ['skip-cache', 'cache_interval=2'], compare: true });
  assert.equal(cached.error, undefined);
  const [baseline, accelerated] = cached.runs;
  assert.ok(maxDifference(baseline.images[0].data, await node('reference-skip-dit')) <= WASM_MAX_DIFFERENCE, 'Skip-DiT baseline = Node');
  assert.ok(maxDifference(accelerated.images[0].data, await node('reference-skip-dit', 'skip-cache:cache_interval=2')) <= WASM_MAX_DIFFERENCE,
    'Skip-Cache image = Node CPU Skip-Cache image');
  assert.ok(cached.macRatio! > 1.1, `Skip-Cache spends fewer MACs (ratio ${cached.macRatio})`);
});

test('a PixArt folder opened with the picker generates Node\'s image (T5 tokenizer and all, in the page)', { skip }, async (t) => {
  const fixture = path.join(import.meta.dirname, 'fixtures', 'tiny-pixart-alpha');
  // The fixture's tokenizer is a symbolic link, which a directory picker does not follow: pick a copy.
  const folder = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'pixart-')), 'tiny-pixart-alpha');
  fs.cpSync(fixture, folder, { recursive: true, dereference: true });
  t.after(() => fs.rmSync(path.dirname(folder), { recursive: true, force: true }));
  await page.setInputFiles('#folder', folder);
  await page.waitForFunction(() => /Model: tiny-pixart-alpha \(PixArtAlphaPipeline\)/.test(document.getElementById('model-name')!.textContent ?? ''));
  const state = await generate({ prompt: 'a cactus', negative: '', seed: '2', steps: '3', guidance: '4.5', scheduler: '', width: '64', height: '64' }, { binning: false });
  assert.equal(state.error, undefined);
  const pixart = loadPixArtPipeline(readPipelineFolder(folder));
  try {
    const expected = (await pixart.generate({ prompt: 'a cactus', seed: 2, steps: 3, guidanceScale: 4.5, width: 64, height: 64, resolutionBinning: false })).images[0].data;
    assert.ok(maxDifference(state.runs[0].images[0].data, expected) <= WASM_MAX_DIFFERENCE, 'PixArt image = Node CPU image');
  } finally {
    await pixart.release();
  }
});

test('a folder too big for the page is refused before anything loads, with its size', { skip }, async () => {
  // The reference model with a U-Net file that declares 420 M float16 weights (1.6 GiB as float32):
  // a sparse file, so nothing is written or read beyond its header.
  const dir = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'too-big-')), 'huge-model');
  fs.cpSync(REFERENCE_MODEL, dir, { recursive: true });
  const header = Buffer.from(JSON.stringify({ weight: { dtype: 'F16', shape: [20000, 21000], data_offsets: [0, 840_000_000] } }).padEnd(96));
  const file = path.join(dir, 'unet', 'diffusion_pytorch_model.safetensors');
  const size = Buffer.alloc(8);
  size.writeBigUInt64LE(BigInt(header.length));
  fs.writeFileSync(file, Buffer.concat([size, header]));
  fs.truncateSync(file, 8 + header.length + 840_000_000);
  try {
    const chosen = await page.inputValue('#model');
    await page.evaluate(() => { (window as unknown as { demo: { error?: string } }).demo.error = undefined; });
    await page.setInputFiles('#folder', dir);
    await page.waitForFunction(() => (window as unknown as { demo: { error?: string } }).demo.error !== undefined);
    const error = await page.textContent('#error');
    assert.match(error ?? '', /huge-model: too big for a browser page; expected at most 1\.5 GiB of float32 weights, found 1\.6 GiB/);
    assert.equal(await page.inputValue('#model'), chosen, 'the model chosen before stays chosen');
  } finally {
    fs.rmSync(path.dirname(dir), { recursive: true, force: true });
  }
});
