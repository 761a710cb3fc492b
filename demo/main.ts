/**
 * The demo page: the embedded reference model (served by demo/server.ts with Range requests) or a
 * folder the user picks, generated on wasm or WebGPU, with any accelerations; in compare mode the
 * baseline and the accelerated image side by side with speed-up, MAC ratio and PSNR.
 * Results are also left on `window.demo` for the browser test.
 */
import {
  InputError, METHODS, SCHEDULER_NAMES, fullMacs, loadPipeline, mountHttpFolder, mountPickedFiles, openComponentWeights,
  parseAccelSpec, psnr, readPipelineFolder, type AccelSpec, type GenerateResult, type SchedulerName, type StableDiffusionPipeline,
} from '../src/browser.ts';

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const REFERENCE = new URL('/models/reference-model', location.href).href;
/** float32 weights above this do not fit a page's wasm memory (4 GiB address space, sessions copy). */
const BROWSER_WEIGHT_LIMIT = 1.5 * 2 ** 30;

interface DemoRun { images: { data: number[]; width: number; height: number }[]; seconds: number; macs: number }
interface DemoState { ready: boolean; runs: DemoRun[]; speedup?: number; macRatio?: number; psnr?: number; error?: string }
const state: DemoState = { ready: false, runs: [] };
(window as unknown as { demo: DemoState }).demo = state;

let modelRoot = REFERENCE;
const loaded = new Map<string, Promise<StableDiffusionPipeline>>();

for (const name of SCHEDULER_NAMES) $('schedulers').append(new Option(name));
for (const [name, method] of Object.entries(METHODS)) {
  const row = document.createElement('div');
  row.innerHTML = `<label><input type="checkbox" data-method="${name}"> ${name}</label>` +
    `<input type="text" data-knobs="${name}" placeholder="defaults" title="${method.paper}">`;
  $('methods').append(row);
}

function show(error: unknown): void {
  const message = error instanceof InputError ? error.message : `unexpected error: ${(error as Error)?.message ?? String(error)}`;
  state.error = message;
  $('error').textContent = message;
  $('status').textContent = '';
}

function numberField(id: string, name: string, integer: boolean): number {
  const text = $<HTMLInputElement>(id).value.trim();
  const value = Number(text);
  if (text === '' || !Number.isFinite(value) || (integer && !Number.isInteger(value))) {
    throw new InputError(name, 'is not a number', integer ? 'an integer' : 'a number', text === '' ? 'nothing' : JSON.stringify(text));
  }
  return value;
}

function accelSpecs(): AccelSpec[] {
  const specs: AccelSpec[] = [];
  for (const box of document.querySelectorAll<HTMLInputElement>('[data-method]')) {
    if (!box.checked) continue;
    const knobs = document.querySelector<HTMLInputElement>(`[data-knobs="${box.dataset.method}"]`)!.value.trim();
    specs.push(parseAccelSpec(knobs ? `${box.dataset.method}:${knobs}` : box.dataset.method!));
  }
  return specs;
}

let referenceMount: Promise<unknown> | undefined;

function pipeline(device: 'cpu' | 'webgpu'): Promise<StableDiffusionPipeline> {
  const key = `${modelRoot}|${device}`;
  let p = loaded.get(key);
  if (!p) {
    p = (async () => {
      if (modelRoot === REFERENCE) {
        referenceMount ??= mountHttpFolder(REFERENCE).catch((err) => {
          referenceMount = undefined;
          throw err;
        });
        await referenceMount;
      }
      return loadPipeline(modelRoot, { device });
    })();
    loaded.set(key, p);
    p.catch(() => loaded.delete(key));
  }
  return p;
}

function draw(result: GenerateResult): void {
  for (const image of result.images) {
    const canvas = document.createElement('canvas');
    [canvas.width, canvas.height] = [image.width, image.height];
    const ctx = canvas.getContext('2d')!;
    const pixels = ctx.createImageData(image.width, image.height);
    const plane = image.width * image.height;
    for (let p = 0; p < plane; p++) {
      for (let c = 0; c < 3; c++) pixels.data[4 * p + c] = Math.round(Math.min(1, Math.max(0, image.data[c * plane + p])) * 255);
      pixels.data[4 * p + 3] = 255;
    }
    ctx.putImageData(pixels, 0, 0);
    $('images').append(canvas);
  }
}

async function run(model: StableDiffusionPipeline, request: Parameters<StableDiffusionPipeline['generate']>[0], label: string): Promise<GenerateResult> {
  $('status').textContent = `${label}…`;
  const progress = $<HTMLProgressElement>('progress');
  const result = await model.generate({ ...request, onStep: ({ step, steps }) => { progress.max = steps; progress.value = step + 1; } });
  const seconds = result.timings.textEncoding + result.timings.denoising + result.timings.decoding;
  state.runs.push({ images: result.images.map((i) => ({ data: Array.from(i.data), width: i.width, height: i.height })), seconds, macs: fullMacs(result.denoiserMacs) });
  draw(result);
  return result;
}

async function generate(): Promise<void> {
  state.runs = [];
  state.error = undefined;
  state.speedup = state.macRatio = state.psnr = undefined;
  $('error').textContent = '';
  $('images').replaceChildren();
  $('report').replaceChildren();
  const scheduler = $<HTMLInputElement>('scheduler').value.trim();
  const request = {
    prompt: $<HTMLInputElement>('prompt').value,
    negativePrompt: $<HTMLInputElement>('negative').value || undefined,
    seed: numberField('seed', 'seed', true),
    steps: numberField('steps', 'steps', true),
    guidanceScale: numberField('guidance', 'guidance', false),
    width: numberField('width', 'width', true),
    height: numberField('height', 'height', true),
    scheduler: (scheduler || undefined) as SchedulerName | undefined,
  };
  const accel = accelSpecs();
  const compare = $<HTMLInputElement>('compare').checked;
  if (compare && accel.length === 0) throw new InputError('compare', 'needs an acceleration to compare with', 'at least one method ticked', 'none');
  const model = await pipeline($<HTMLSelectElement>('device').value as 'cpu' | 'webgpu');
  const rows: [string, string][] = [];
  // The accelerated run goes first, so that the sessions both share are created on its clock,
  // not the baseline's: the speed-up shown is not flattered by the warm-up.
  const accelerated = await run(model, { ...request, accel }, accel.length ? 'accelerated' : 'generating');
  if (compare) {
    const baseline = await run(model, request, 'baseline');
    $('images').prepend($('images').lastElementChild!);
    state.runs.reverse();
    const [b, a] = state.runs;
    state.speedup = b.seconds / a.seconds;
    state.macRatio = fullMacs(baseline.denoiserMacs) / fullMacs(accelerated.denoiserMacs);
    state.psnr = psnr(baseline.images[0].data, accelerated.images[0].data);
    rows.push(['baseline', `${b.seconds.toFixed(2)} s`], ['accelerated', `${a.seconds.toFixed(2)} s`],
      ['speed-up', `${state.speedup.toFixed(2)}×`], ['MAC ratio', `${state.macRatio.toFixed(2)}×`], ['PSNR', `${state.psnr.toFixed(1)} dB`]);
  } else {
    rows.push(['time per image', `${state.runs[0].seconds.toFixed(2)} s`]);
  }
  for (const w of accelerated.warnings) rows.push(['note', w]);
  for (const [k, v] of rows) $('report').insertAdjacentHTML('beforeend', `<tr><th>${k}</th><td>${v}</td></tr>`);
  $('status').textContent = 'done';
}

$('form').addEventListener('submit', (event) => {
  event.preventDefault();
  state.ready = false;
  const button = $<HTMLButtonElement>('generate');
  button.disabled = true;
  generate().catch(show).finally(() => {
    button.disabled = false;
    state.ready = true;
  });
});

let pickCount = 0;
$<HTMLInputElement>('folder').addEventListener('change', async (event) => {
  const files = [...((event.target as HTMLInputElement).files ?? [])];
  if (files.length === 0) return;
  try {
    const root = `picked:${++pickCount}`;
    await mountPickedFiles(root, files.map((file) => ({ path: file.webkitRelativePath || file.name, file })));
    // Say so before loading anything heavy: the weights as the float32 sessions would hold them.
    const folder = readPipelineFolder(root);
    let bytes = 0;
    for (const name of ['unet', 'transformer', 'vae', 'text_encoder', 'text_encoder_2']) {
      if (!folder.components[name]) continue;
      const weights = openComponentWeights(folder.components[name]!.dir);
      bytes += weights.float32Bytes();
      weights.close();
    }
    if (bytes > BROWSER_WEIGHT_LIMIT) {
      throw new InputError(files[0].webkitRelativePath.split('/')[0], 'too big for a browser page',
        `at most ${(BROWSER_WEIGHT_LIMIT / 2 ** 30).toFixed(1)} GiB of float32 weights`, `${(bytes / 2 ** 30).toFixed(1)} GiB`);
    }
    modelRoot = root;
    $('model-name').textContent = `Model: ${files[0].webkitRelativePath.split('/')[0]} (${folder.className}).`;
    $('error').textContent = '';
  } catch (err) {
    show(err);
  }
});
state.ready = true;
