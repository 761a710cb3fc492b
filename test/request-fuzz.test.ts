/**
 * Seeded fuzzing of the library's generate requests on the tiny seeded folders of each family
 * (Stable Diffusion text- and image-to-image, PixArt, DiT): a valid request with one to three fields replaced by odd values
 * (wrong types, out-of-range numbers, prototype names, empty lists). Each case must generate, or end
 * in one InputError naming the option; a case still running after a few seconds is stopped through
 * its signal, which must end it with an AbortError. FUZZ_CASES scales it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { InputError } from '../src/errors.ts';
import { loadDiTPipeline } from '../src/pipelines/dit.ts';
import { loadPixArtPipeline } from '../src/pipelines/pixart.ts';
import { loadPipeline } from '../src/pipelines/stable-diffusion.ts';
import { readPipelineFolder } from '../src/weights/diffusers-folder.ts';
import { fuzzDraws } from './helpers/prng.ts';

const CASES = Number(process.env.FUZZ_CASES ?? 60);
const FIXTURES = path.join(import.meta.dirname, 'fixtures');
const { mutateFields } = fuzzDraws(0x5eed);

const ODD_VALUES: unknown[] = [
  -1, 0, 0.5, 1, 3, 7, 1000, 65536, 2 ** 31, 1e300, NaN, Infinity, -Infinity, '3', '', 'toString', null, true, [], {}, [1, 2], ['x'],
  { method: 'tgate' }, { dims: [1, 4, 4, 4], data: new Float32Array(3) }, { width: 2, height: 2, data: new Float32Array(12) },
];
const ODD_KEYS = ['toString', 'constructor', '__proto__', 'valueOf'];

type Request = Record<string, unknown>;
const SD_REQUEST: Request = {
  prompt: 'a red circle', negativePrompt: 'blue', steps: 2, guidanceScale: 5, seed: 1, width: 32, height: 32, scheduler: 'ddim',
  imagesPerPrompt: 1, accel: ['tgate:gate_step=1'], memoryLimit: 8 * 2 ** 30, output: 'latent',
};
const IMG2IMG_REQUEST: Request = {
  ...SD_REQUEST, image: { width: 40, height: 24, data: new Float32Array(3 * 40 * 24).fill(0.5) }, strength: 0.6, steps: 4, width: undefined, height: undefined,
};
const PIXART_REQUEST: Request = { ...SD_REQUEST, maxSequenceLength: 8, resolutionBinning: false, scheduler: 'dpm++2m', width: 64, height: 64 };
const DIT_REQUEST: Request = {
  classLabels: [1, 'goldfish'], steps: 2, guidanceScale: 4, seed: 1, scheduler: 'ddim', accel: ['fora:cache_interval=2'],
  memoryLimit: 8 * 2 ** 30, output: 'latent',
};

function mutate(base: Request): { request: Request; changes: string } {
  const { mutated, changes } = mutateFields(base, ODD_VALUES, ODD_KEYS);
  return { request: mutated, changes };
}

/** The base request must generate; then each mutated one generates, or is refused (or stopped) as the header says. */
async function fuzz(family: string, base: Request, generate: (request: Request) => Promise<unknown>): Promise<string> {
  await generate(base);
  const outcomes = { generated: 0, refused: 0, stopped: 0 };
  for (let i = 0; i < CASES; i++) {
    const { request, changes } = mutate(base);
    const signal = AbortSignal.timeout(4000);
    try {
      await generate({ ...request, signal });
      outcomes.generated++;
    } catch (err) {
      const stopped = signal.aborted && err instanceof Error && ['AbortError', 'TimeoutError'].includes(err.name);
      if (!(err instanceof InputError) && !stopped) throw new Error(`${family}: ${changes}: ${err instanceof Error ? `${err.name}: ${err.message}` : String(err)}`);
      if (err instanceof InputError) assert.ok(!err.message.includes('\n'), `${family}: ${changes}: one line: ${err.message}`);
      outcomes[stopped ? 'stopped' : 'refused']++;
    }
  }
  return Object.entries(outcomes).map(([k, n]) => `${k} ${n}`).join(', ');
}

test(`Stable Diffusion requests: ${CASES} mutated requests generate or give one InputError`, async (t) => {
  const pipeline = await loadPipeline(path.join(FIXTURES, 'tiny-sd1'));
  t.after(() => pipeline.release());
  t.diagnostic(`text-to-image: ${await fuzz('tiny-sd1', SD_REQUEST, (r) => pipeline.generate(r as never))}`);
  t.diagnostic(`image-to-image: ${await fuzz('tiny-sd1 img2img', IMG2IMG_REQUEST, (r) => pipeline.generate(r as never))}`);
});

test(`PixArt requests: ${CASES} mutated requests generate or give one InputError`, async (t) => {
  const pipeline = loadPixArtPipeline(readPipelineFolder(path.join(FIXTURES, 'tiny-pixart-alpha')));
  t.after(() => pipeline.release());
  t.diagnostic(await fuzz('tiny-pixart-alpha', PIXART_REQUEST, (r) => pipeline.generate(r as never)));
});

test(`DiT requests: ${CASES} mutated requests generate or give one InputError`, async (t) => {
  const pipeline = loadDiTPipeline(readPipelineFolder(path.join(FIXTURES, 'tiny-dit')));
  t.after(() => pipeline.release());
  t.diagnostic(await fuzz('tiny-dit', DIT_REQUEST, (r) => pipeline.generate(r as never)));
});
