/**
 * Seeded fuzzing of what users type and what files hold: `--accel` specs and `--sweep` settings,
 * service request bodies, config.json texts, scene captions, model configs (parsed,
 * then run on shapes as `bench --dry-run` and the memory estimate do), scheduler configs and init
 * images (PNG and JPEG bytes). Each
 * case must succeed or end in one InputError, quickly. FUZZ_CASES scales it (`npm run fuzz` runs
 * many more cases than CI).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { METHODS, parseAccelSpec, parseSweepSetting } from '../src/accel/index.ts';
import { InputError } from '../src/errors.ts';
import { AutoencoderKL, parseAutoencoderKLConfig } from '../src/models/autoencoder-kl.ts';
import { ClipTextModel, parseClipTextConfig } from '../src/models/clip-text.ts';
import { DiTTransformer2DModel, parseDiTConfig } from '../src/models/dit-transformer-2d.ts';
import { OfficialDiT, parseOfficialDiTConfig } from '../src/models/official-dit.ts';
import { PixArtTransformer2DModel, parsePixArtConfig } from '../src/models/pixart-transformer-2d.ts';
import { T5EncoderModel, parseT5EncoderConfig } from '../src/models/t5-encoder.ts';
import { PRESETS, TRANSFORMER_PRESETS } from '../src/models/presets.ts';
import { UNet2DConditionModel, parseUNetConfig } from '../src/models/unet2d-condition.ts';
import { DryExecutor } from '../src/runtime/dry-executor.ts';
import { shaped } from '../src/runtime/executor.ts';
import { createScheduler, SCHEDULER_NAMES } from '../src/schedulers/index.ts';
import { readJsonObject, type Config } from '../src/weights/config.ts';
import { HELD_OUT_PROMPTS, parseCaption, readPromptFile } from '../src/scenes/captions.ts';
import { checkJobRequest, RequestError } from '../src/serve/job.ts';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { encode as encodePng } from 'fast-png';
import jpeg from 'jpeg-js';
import { decodeImage } from '../src/image/read.ts';
import { readPickle, torchStorage } from '../src/weights/pickle.ts';
import { TorchCheckpoint } from '../src/weights/torch-checkpoint.ts';
import { ZipFile } from '../src/weights/zip.ts';
import * as os from 'node:os';
import { fuzzDraws } from './helpers/prng.ts';

const CASES = Number(process.env.FUZZ_CASES ?? 150);

const { rand, int, pick, mutateFields } = fuzzDraws(0xf022ed);

const PROTOTYPE_NAMES = ['toString', 'constructor', '__proto__', 'valueOf', 'hasOwnProperty', 'prototype'];
const WEIRD_NUMBERS = [-1, 0, 0.5, 1, 2, 3, 7, 64, 1000, 65536, 2 ** 31, 2 ** 53 + 2, 1e20, 1e300, -1e300, NaN, Infinity, -Infinity, -0.0001];
const WEIRD_VALUES: unknown[] = [...WEIRD_NUMBERS, '3', '', 'toString', null, true, false, [], {}, [1, 2], [0], [-1, 4], { a: 1 }];
const NUMBER_TEXT = ['0', '1', '-1', '2.5', '1e20', '1e300', '99999999999999999999', 'NaN', 'Infinity', '0x10', '', ' 3', '3 ', 'auto', 'true', '1e-320'];

/** Runs `fn` and accepts success or the typed error (an InputError); anything else, or a slow case, fails with the case. */
async function expectTypedOrSuccess(label: string, fn: () => unknown, typed: (err: unknown) => err is Error = (err) => err instanceof InputError): Promise<void> {
  const started = performance.now();
  try {
    await fn();
  } catch (err) {
    if (!typed(err)) throw new Error(`${label}: ${err instanceof Error ? `${err.name}: ${err.message}` : String(err)}`);
    assert.ok(!err.message.includes('\n'), `${label}: one line: ${err.message}`);
  }
  const seconds = (performance.now() - started) / 1000;
  assert.ok(seconds < 10, `${label}: took ${seconds.toFixed(1)} s`);
}

/** `base` with 1–3 fields replaced (or added) by weird values. */
function mutate(base: Config): { config: Config; changes: string } {
  const { mutated, changes } = mutateFields(base, WEIRD_VALUES, PROTOTYPE_NAMES);
  return { config: mutated as Config, changes };
}

test(`--accel specs: ${CASES} generated specs are parsed or refused by name`, async () => {
  const methods = [...Object.keys(METHODS), ...PROTOTYPE_NAMES, 'TGATE', ''];
  for (let i = 0; i < CASES; i++) {
    const method = pick(methods);
    const knobs = Object.hasOwn(METHODS, method) ? Object.keys(METHODS[method].knobs) : ['x'];
    const pairs = Array.from({ length: int(4) }, () => `${rand() < 0.85 ? pick(knobs) : pick(PROTOTYPE_NAMES)}=${pick(NUMBER_TEXT)}`);
    const spec = pairs.length ? `${method}:${pairs.join(',')}` : method;
    await expectTypedOrSuccess(spec, () => parseAccelSpec(spec));
  }
});

test(`--sweep settings: ${CASES} generated specs joined by "+" are parsed or refused by name`, async () => {
  const methods = Object.keys(METHODS);
  for (let i = 0; i < CASES; i++) {
    const specs = Array.from({ length: 1 + int(3) }, () => {
      const method = rand() < 0.9 ? pick(methods) : pick(PROTOTYPE_NAMES);
      const knobs = Object.hasOwn(METHODS, method) ? Object.keys(METHODS[method].knobs) : ['x'];
      const pairs = Array.from({ length: int(3) }, () => `${pick(knobs)}=${pick(NUMBER_TEXT)}`);
      return pairs.length ? `${method}:${pairs.join(',')}` : method;
    });
    const setting = specs.join(pick(['+', ' + ', '++', '+ ']));
    await expectTypedOrSuccess(setting, () => parseSweepSetting(setting));
  }
});

test(`service job bodies: ${CASES} mutated request bodies are queued or refused with one RequestError`, async () => {
  const text: Config = {
    model: 'reference', prompt: 'a red circle on the left', negative_prompt: 'blue', steps: 4, width: 64, height: 64, seed: 1, batch: 2,
    guidance: 7.5, scheduler: 'ddim', accel: 'tgate:gate_step=2 + deepcache',
  };
  const classes: Config = { model: 'reference-dit', class: [1, 'red circle top left'], steps: 4, seed: 1, guidance: 4, scheduler: 'ddim', accel: 'fora' };
  const isRequestError = (err: unknown): err is Error => err instanceof RequestError;
  for (const base of [text, classes]) {
    checkJobRequest(base, undefined, () => 7);
    for (let i = 0; i < CASES; i++) {
      const { config, changes } = mutate(base);
      await expectTypedOrSuccess(changes, () => checkJobRequest(config, undefined, () => 7), isRequestError);
    }
  }
  for (const body of WEIRD_VALUES) await expectTypedOrSuccess(JSON.stringify(body) ?? String(body), () => checkJobRequest(body, undefined, () => 7), isRequestError);
});

test(`config files: ${CASES} mutated config.json texts are read or give one InputError`, async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fuzz-config-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const texts = ['unet', 'vae', 'scheduler'].map((c) => fs.readFileSync(path.join(import.meta.dirname, 'fixtures', 'tiny-sd1', c,
    c === 'scheduler' ? 'scheduler_config.json' : 'config.json'), 'utf8'));
  const pieces = ['NaN', '-Infinity', 'Infinity', '"', '\\', '\\u', '{', '}', '[', ']', ',', ':', '\u0000', '1e999', '-', 'nul', '"NaN"', '\ud800', ' '];
  const file = path.join(dir, 'config.json');
  for (let i = 0; i < CASES; i++) {
    let text = pick(texts);
    const changes: string[] = [];
    for (let n = 1 + int(3); n > 0; n--) {
      const at = int(text.length);
      const cut = rand() < 0.3 ? int(8) : 0;
      const piece = rand() < 0.7 ? pick(pieces) : '';
      text = text.slice(0, at) + piece + text.slice(at + cut);
      changes.push(`@${at} -${cut} +${JSON.stringify(piece)}`);
    }
    fs.writeFileSync(file, text);
    await expectTypedOrSuccess(changes.join(' '), () => readJsonObject(file));
  }
});

test(`scene captions: ${CASES} mutated captions are read or give one InputError`, async () => {
  const captions = readPromptFile(HELD_OUT_PROMPTS);
  const words = ['a', 'an', 'and', 'on', 'the', 'left', 'red', 'circle', 'small', 'large', 'background', 'at', 'top', ',', '.', '', ...PROTOTYPE_NAMES];
  for (let i = 0; i < CASES; i++) {
    const tokens = pick(captions).split(' ');
    for (let n = 1 + int(3); n > 0; n--) {
      const at = int(tokens.length + 1);
      if (rand() < 0.5) tokens.splice(at, 1);
      else tokens.splice(at, 0, pick(words));
    }
    const caption = tokens.join(' ');
    await expectTypedOrSuccess(caption, () => parseCaption(caption, 'prompts.txt:1'));
  }
});

test(`model configs: ${CASES} mutated U-Net, VAE, PixArt, DiT, Skip-DiT, CLIP and T5 configs are refused by name or run on shapes`, async () => {
  const sd15 = PRESETS.sd15;
  const pixart = TRANSFORMER_PRESETS['pixart-alpha-512'];
  const bases = {
    unet: sd15.unet, vae: sd15.vae, pixart: pixart.transformer, clip: sd15.textEncoder, t5: pixart.textEncoder!,
    'dit-legacy': TRANSFORMER_PRESETS['dit-xl-2-256'].transformer,
    dit: { ...TRANSFORMER_PRESETS['dit-xl-2-256'].transformer, _class_name: 'DiTTransformer2DModel' },
    'skip-dit': TRANSFORMER_PRESETS['skip-dit-xl-2-256'].transformer,
  };
  const kinds = Object.keys(bases) as (keyof typeof bases)[];
  for (let i = 0; i < CASES; i++) {
    const kind = pick(kinds);
    const { config, changes } = mutate(bases[kind]);
    await expectTypedOrSuccess(`${kind}: ${changes}`, async () => {
      const exec = new DryExecutor();
      const where = `${kind}/config.json`;
      if (kind === 'unet') {
        await new UNet2DConditionModel(parseUNetConfig(config, where)).forwardShapes(exec, { batch: 1, latentHeight: 8, latentWidth: 8 });
      } else if (kind === 'vae') {
        const vae = new AutoencoderKL(parseAutoencoderKLConfig(config, where));
        await vae.decode(exec, shaped([1, vae.config.latentChannels, 4, 4]));
      } else if (kind === 'pixart') {
        await new PixArtTransformer2DModel(parsePixArtConfig(config, where)).forwardShapes(exec, { batch: 1, latentHeight: 8, latentWidth: 8, tokens: 8 });
      } else if (kind === 'clip') {
        await new ClipTextModel(parseClipTextConfig(config, where)).forward(exec, shaped([1, 77], 'int64'));
      } else if (kind === 't5') {
        await new T5EncoderModel(parseT5EncoderConfig(config, where)).forward(exec, shaped([1, 8], 'int64'), shaped([1, 8], 'int64'));
      } else {
        const model = kind === 'skip-dit' ? new OfficialDiT(parseOfficialDiTConfig(config, where)) : new DiTTransformer2DModel(parseDiTConfig(config, where, kind === 'dit-legacy'));
        await model.forwardShapes(exec, { batch: 1, latentHeight: model.config.sampleSize, latentWidth: model.config.sampleSize });
      }
    });
  }
});

test(`scheduler configs: ${CASES} mutated configs give timesteps or one InputError`, async () => {
  const base: Config = {
    _class_name: 'DDIMScheduler', num_train_timesteps: 1000, beta_start: 0.00085, beta_end: 0.012, beta_schedule: 'scaled_linear',
    prediction_type: 'epsilon', steps_offset: 1, set_alpha_to_one: false, clip_sample: false, timestep_spacing: 'leading',
  };
  for (let i = 0; i < CASES; i++) {
    const { config, changes } = mutate(base);
    const name = rand() < 0.5 ? undefined : pick([...SCHEDULER_NAMES, 'toString'] as string[]);
    const steps = pick([1, 2, 10, 50, 1000]);
    await expectTypedOrSuccess(`${name ?? 'folder'} ${steps} steps: ${changes}`, () => {
      const scheduler = createScheduler({ name: name as never, config, configFile: 'scheduler/scheduler_config.json', steps });
      assert.ok(scheduler.timesteps.length > 0);
    });
  }
});

test(`init images: ${CASES} mutated PNG and JPEG files decode or give one InputError`, async () => {
  const w = 24;
  const h = 16;
  const rgba = Uint8Array.from({ length: w * h * 4 }, (_, i) => (i * 37) % 256);
  const bases = [
    fs.readFileSync(path.join(import.meta.dirname, 'fixtures', 'goldens', 'img2img', 'init-150x100.png')),
    encodePng({ width: w, height: h, data: rgba, channels: 4, depth: 8 }),
    encodePng({ width: w, height: h, data: Uint16Array.from({ length: w * h }, (_, i) => i * 97), channels: 1, depth: 16 }),
    encodePng({ width: w, height: h, data: Uint8Array.from({ length: w * h }, (_, i) => i % 4), channels: 1, depth: 8, palette: [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]] }),
    new Uint8Array(jpeg.encode({ data: rgba, width: w, height: h }, 80).data),
  ];
  for (let i = 0; i < CASES; i++) {
    const bytes = Uint8Array.from(pick(bases));
    const changes: string[] = [];
    for (let n = 1 + int(4); n > 0; n--) {
      const at = int(bytes.length);
      const kind = int(4);
      if (kind === 0) bytes[at] = int(256);
      else if (kind === 1) bytes[at] ^= 1 << int(8);
      else if (kind === 2) bytes.fill(0xff, at, at + 1 + int(8));
      else bytes.set([0, 0, int(256), int(256)], Math.max(0, at - 4));
      changes.push(`${kind}@${at}`);
    }
    const cut = rand() < 0.2 ? int(bytes.length) : bytes.length;
    await expectTypedOrSuccess(`image ${changes.join(',')} cut ${cut}`, () => {
      const image = decodeImage(bytes.subarray(0, cut), 'fuzz');
      assert.equal(image.data.length, 3 * image.width * image.height);
    });
  }
});

test(`PyTorch checkpoints: ${CASES} mutated .pt files and pickles read or give one InputError, nothing runs`, async () => {
  const file = path.join(import.meta.dirname, 'fixtures', 'skip-dit', 'tiny-dit.pt');
  const base = fs.readFileSync(file);
  const zip = ZipFile.open(file);
  const pickleEntry = [...zip.entries.values()].find((e) => e.name.endsWith('data.pkl'))!;
  const pickle = zip.readEntry(pickleEntry, 1 << 20);
  const pickleAt = zip.dataOffset(pickleEntry);
  zip.close();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'diffusion-ts-fuzz-'));
  try {
    for (let i = 0; i < CASES; i++) {
      // Half the cases hit the pickle (inside the file or alone), half anywhere in the zip.
      const inPickle = rand() < 0.5;
      const bytes = Uint8Array.from(inPickle && rand() < 0.5 ? pickle : base);
      const region = inPickle && bytes.length === base.length ? [pickleAt, pickleAt + pickle.length] : [0, bytes.length];
      const changes: string[] = [];
      for (let n = 1 + int(3); n > 0; n--) {
        const at = region[0] + int(region[1] - region[0]);
        bytes[at] = rand() < 0.5 ? int(256) : bytes[at] ^ (1 << int(8));
        changes.push(`@${at}`);
      }
      if (bytes.length !== base.length) {
        await expectTypedOrSuccess(`pickle ${changes.join(',')}`, () => readPickle(bytes, 'fuzz.pkl', (pid) => torchStorage(pid, 'fuzz.pkl')));
        continue;
      }
      const cut = rand() < 0.1 ? int(bytes.length) : bytes.length;
      const target = path.join(dir, `case-${i}.pt`);
      fs.writeFileSync(target, bytes.subarray(0, cut));
      await expectTypedOrSuccess(`.pt ${changes.join(',')} cut ${cut}`, () => {
        const checkpoint = TorchCheckpoint.open(target);
        try {
          for (const [name, t] of checkpoint.stateDict().tensors) checkpoint.readFloat32(name, t);
        } finally {
          checkpoint.close();
        }
      });
      fs.rmSync(target);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
