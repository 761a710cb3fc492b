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
import { REFERENCE_MODEL } from '../src/pipelines/reference-model.ts';
import { loadPipeline } from '../src/pipelines/stable-diffusion.ts';

const CHROMIUM = '/usr/bin/chromium';
// In CI (.ci/run installs it) a missing Chromium fails the tests; elsewhere they are skipped, saying why.
const skip = fs.existsSync(CHROMIUM) || process.env.CI ? false : `${CHROMIUM} is missing (apt-get install chromium)`;
/** wasm runs the same MLAS-family kernels as Node's CPU provider, compiled to wasm: equal to float rounding. */
const WASM_MAX_DIFFERENCE = 1e-4;
/**
 * WebGPU on SwiftShader: measured 28.1 dB against the CPU image (4 steps, CFG 7.5) — more than
 * float rounding explains, not yet traced to an op (issue 16 keeps it open). The bound catches a
 * broken run (noise, NaN, a wrong layout: under 15 dB), not that gap.
 */
const WEBGPU_MIN_PSNR = 25;

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

interface PageState { runs: { images: { data: number[] }[]; seconds: number; macs: number }[]; speedup?: number; macRatio?: number; psnr?: number; error?: string }

/** Fills the form, clicks Generate and waits for the page to finish. */
async function generate(fields: Record<string, string>, options: { device?: string; tgate?: string; compare?: boolean } = {}): Promise<PageState> {
  await page.selectOption('#device', options.device ?? 'cpu');
  for (const [id, value] of Object.entries(fields)) await page.fill(`#${id}`, value);
  await page.setChecked('[data-method="tgate"]', options.tgate !== undefined);
  await page.fill('[data-knobs="tgate"]', options.tgate ?? '');
  await page.setChecked('#compare', options.compare ?? false);
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
  const plain = await generate(FIELDS);
  assert.equal(plain.error, undefined);
  const reference = await nodeImages();
  assert.ok(maxDifference(plain.runs[0].images[0].data, reference) <= WASM_MAX_DIFFERENCE, 'wasm image = Node CPU image');

  const compared = await generate(FIELDS, { tgate: 'gate_step=2', compare: true });
  assert.equal(compared.error, undefined);
  const [baseline, accelerated] = compared.runs;
  assert.ok(maxDifference(baseline.images[0].data, reference) <= WASM_MAX_DIFFERENCE, 'baseline = Node CPU image');
  assert.ok(maxDifference(accelerated.images[0].data, await nodeImages('tgate:gate_step=2')) <= WASM_MAX_DIFFERENCE, 'TGATE image = Node CPU TGATE image');
  assert.ok(compared.macRatio! > 1.2, `TGATE spends fewer MACs (ratio ${compared.macRatio})`);
  assert.ok(compared.speedup! > 0 && Number.isFinite(compared.psnr!), 'speed-up and PSNR reported');
  const report = await page.textContent('#report');
  for (const word of ['speed-up', 'MAC ratio', 'PSNR']) assert.ok(report!.includes(word), `report shows ${word}`);
});

test('on WebGPU (SwiftShader) the page draws Node\'s CPU image within the stated tolerance', { skip }, async () => {
  const state = await generate(FIELDS, { device: 'webgpu' });
  assert.equal(state.error, undefined);
  const value = psnr(Float32Array.from(state.runs[0].images[0].data), await nodeImages());
  assert.ok(value >= WEBGPU_MIN_PSNR, `WebGPU vs CPU PSNR ${value.toFixed(1)} dB`);
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
