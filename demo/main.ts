/**
 * The demo page: an embedded reference model (served by demo/server.ts with Range requests) or a
 * folder the user picks — Stable Diffusion, PixArt or DiT — generated on wasm or WebGPU, with any
 * accelerations; in compare mode the baseline and the accelerated image side by side with
 * speed-up, MAC ratio and PSNR. Results are also left on `window.demo` for the browser test.
 */
import {
  InputError, METHODS, SCHEDULER_NAMES, fullMacs, loadDiTPipeline, loadPipeline, loadPixArtPipeline, mountHttpFolder, mountPickedFiles,
  openComponentWeights, parseAccelSpec, pipelineDefaults, psnr, readPipelineFolder, type AccelSpec, type GenerationResult,
  type SchedulerName, type Transfers, describeTransfers,
} from '../src/browser.ts';
const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
/** The embedded models demo/server.ts serves, by the value of the model menu. */
const EMBEDDED = new Map(['reference-model', 'reference-dit', 'reference-skip-dit'].map((name) => [name, new URL(`/models/${name}`, location.href).href]));
/** float32 weights above this do not fit a page's wasm memory (4 GiB address space, sessions copy). */
const BROWSER_WEIGHT_LIMIT = 1.5 * 2 ** 30;

interface DemoRun { images: { data: number[]; width: number; height: number }[]; seconds: number; macs: number; steps: number; transfers: Transfers }
interface DemoState { ready: boolean; runs: DemoRun[]; speedup?: number; macRatio?: number; psnr?: number; error?: string }
const state: DemoState = { ready: false, runs: [] };
(window as unknown as { demo: DemoState }).demo = state;
/** The library's loader, for the browser test's checks of what a page refuses. */
(window as unknown as { diffusion: { loadPipeline: typeof loadPipeline } }).diffusion = { loadPipeline };

/** What the page needs of any pipeline family's request and result. */
interface PageRequest {
  prompt: string; negativePrompt?: string; classLabels: (number | string)[]; seed: number; steps: number; guidanceScale: number;
  width: number; height: number; resolutionBinning: boolean; scheduler?: SchedulerName; accel?: AccelSpec[]; onStep: (info: { step: number; steps: number }) => void;
}
type PageResult = Pick<GenerationResult, 'images' | 'timings' | 'denoiserMacs' | 'denoisingTransfers' | 'steps' | 'warnings'>;
interface PagePipeline { family: 'stable-diffusion' | 'pixart' | 'dit'; generate(request: PageRequest): Promise<PageResult> }

/** The picked folder's root, when the model menu says "picked". */
let pickedRoot: string | undefined;
const loaded = new Map<string, Promise<PagePipeline>>();
const mounts = new Map<string, Promise<unknown>>();

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

function modelRoot(): string {
  const choice = $<HTMLSelectElement>('model').value;
  return choice === 'picked' ? pickedRoot! : EMBEDDED.get(choice)!;
}

/** One pipeline per model and device, loaded on first use; the family follows model_index.json. */
function pipeline(root: string, device: 'cpu' | 'webgpu'): Promise<PagePipeline> {
  const key = `${root}|${device}`;
  let p = loaded.get(key);
  if (!p) {
    p = (async (): Promise<PagePipeline> => {
      if (!root.startsWith('picked:')) {
        let mount = mounts.get(root);
        if (!mount) {
          mount = mountHttpFolder(root);
          mounts.set(root, mount);
          mount.catch(() => mounts.delete(root));
        }
        await mount;
      }
      const folder = readPipelineFolder(root);
      if (folder.className === 'DiTPipeline') {
        const dit = loadDiTPipeline(folder, { device });
        return { family: 'dit', generate: (r) => dit.generate(r) };
      }
      if (folder.className.startsWith('PixArt')) {
        const pixart = loadPixArtPipeline(folder, { device });
        return { family: 'pixart', generate: (r) => pixart.generate(r) };
      }
      const sd = await loadPipeline(root, { device });
      return { family: 'stable-diffusion', generate: (r) => sd.generate(r) };
    })();
    loaded.set(key, p);
    p.catch(() => loaded.delete(key));
  }
  return p;
}

function draw(result: PageResult): void {
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

async function run(model: PagePipeline, request: PageRequest, label: string): Promise<PageResult> {
  $('status').textContent = `${label}…`;
  const progress = $<HTMLProgressElement>('progress');
  const onStep = ({ step, steps }: { step: number; steps: number }) => { progress.max = steps; progress.value = step + 1; };
  const { prompt, negativePrompt, classLabels, width, height, resolutionBinning, ...common } = request;
  const asked = model.family === 'dit' ? { ...common, classLabels } : model.family === 'pixart'
    ? { ...common, prompt, negativePrompt, width, height, resolutionBinning } : { ...common, prompt, negativePrompt, width, height };
  const result = await model.generate({ ...asked, onStep } as PageRequest);
  const seconds = Object.values(result.timings).reduce<number>((sum, t) => sum + (t ?? 0), 0);
  state.runs.push({ images: result.images.map((i) => ({ data: Array.from(i.data), width: i.width, height: i.height })), seconds, macs: fullMacs(result.denoiserMacs), steps: result.steps, transfers: result.denoisingTransfers });
  draw(result);
  return result;
}

/** `red circle top left, 3`: ids stay numbers, anything else is a name from the folder's id2label. */
function classLabels(): (number | string)[] {
  const text = $<HTMLInputElement>('class').value;
  const labels = text.split(';').map((l) => l.trim()).filter((l) => l !== '');
  if (labels.length === 0) throw new InputError('class', 'no class given', 'class ids or names separated by ";"', JSON.stringify(text));
  return labels.map((l) => (/^\d+$/.test(l) ? Number(l) : l));
}

async function generate(): Promise<void> {
  state.runs = [];
  state.error = undefined;
  state.speedup = state.macRatio = state.psnr = undefined;
  $('error').textContent = '';
  $('images').replaceChildren();
  $('report').replaceChildren();
  const scheduler = $<HTMLInputElement>('scheduler').value.trim();
  const model = await pipeline(modelRoot(), $<HTMLSelectElement>('device').value as 'cpu' | 'webgpu');
  const dit = model.family === 'dit';
  const request: PageRequest = {
    prompt: $<HTMLInputElement>('prompt').value,
    negativePrompt: $<HTMLInputElement>('negative').value || undefined,
    classLabels: dit ? classLabels() : [],
    seed: numberField('seed', 'seed', true),
    steps: numberField('steps', 'steps', true),
    guidanceScale: numberField('guidance', 'guidance', false),
    width: dit ? 0 : numberField('width', 'width', true),
    height: dit ? 0 : numberField('height', 'height', true),
    resolutionBinning: $<HTMLInputElement>('binning').checked,
    scheduler: (scheduler || undefined) as SchedulerName | undefined,
    onStep: () => {},
  };
  const accel = accelSpecs();
  const compare = $<HTMLInputElement>('compare').checked;
  if (compare && accel.length === 0) throw new InputError('compare', 'needs an acceleration to compare with', 'at least one method ticked', 'none');
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
  if ($<HTMLSelectElement>('device').value === 'webgpu') rows.push(['GPU↔CPU copies', describeTransfers(accelerated.denoisingTransfers, accelerated.steps)]);
  for (const w of accelerated.warnings) rows.push(['note', w]);
  for (const [k, v] of rows) $('report').insertAdjacentHTML('beforeend', `<tr><th>${k}</th><td>${v}</td></tr>`);
  $('status').textContent = 'done';
}

/** The fields a model family reads are enabled, the others greyed; steps and guidance take its defaults. */
function fitFormTo(className: string): void {
  const dit = className === 'DiTPipeline';
  for (const id of ['prompt', 'negative', 'width', 'height']) $<HTMLInputElement>(id).disabled = dit;
  $<HTMLInputElement>('class').disabled = !dit;
  $<HTMLInputElement>('binning').disabled = !className.startsWith('PixArt');
  const defaults = pipelineDefaults(className);
  $<HTMLInputElement>('steps').value = String(defaults.steps);
  $<HTMLInputElement>('guidance').value = String(defaults.guidanceScale);
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
    pickedRoot = root;
    const picked = $<HTMLSelectElement>('model').querySelector<HTMLOptionElement>('option[value="picked"]') ?? $<HTMLSelectElement>('model').appendChild(new Option('', 'picked'));
    picked.text = `${files[0].webkitRelativePath.split('/')[0]} (${folder.className})`;
    picked.dataset.class = folder.className;
    $<HTMLSelectElement>('model').value = 'picked';
    fitFormTo(folder.className);
    $('model-name').textContent = `Model: ${picked.text}.`;
    $('error').textContent = '';
  } catch (err) {
    show(err);
  }
});
$<HTMLSelectElement>('model').addEventListener('change', () => {
  const option = $<HTMLSelectElement>('model').selectedOptions[0];
  fitFormTo(option.dataset.class!);
  $('model-name').textContent = `Model: ${option.text}.`;
});
fitFormTo($<HTMLSelectElement>('model').selectedOptions[0].dataset.class!);
state.ready = true;
