/**
 * The `diffuse` command line. Input errors print one line naming the file, key or flag and exit
 * with status 2; errors from the operating system one line naming the path and the reason, exit
 * status 1; anything else is a bug and prints its stack.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Command, CommanderError, InvalidArgumentError } from 'commander';
import { InputError, Interrupted, oneLine } from '../errors.ts';
import { withFlagNames } from './flag-names.ts';
import { checkOutputFile, isSystemError, systemErrorLine, writeOutput } from '../util/files.ts';
import type { BenchUNetOptions } from '../bench/unet-forward.ts';
import { generate } from './generate.ts';
import { DEFAULT_QUEUE, DEFAULT_STALL_SECONDS } from '../serve/queue.ts';
import { resolveAccelFlags, type AccelFlag } from './plan-file.ts';
import { METHODS, parseAccelSpec, parseSweepSetting, type AccelSpec } from '../accel/index.ts';
import { PRESET_NAMES } from '../models/presets.ts';
import { OFFICIAL_DIT_ARCHS, convertOfficialDiT } from '../models/official-dit-checkpoint.ts';
import { REFERENCE_NAMES } from '../pipelines/reference-model.ts';
import { LIMITS } from '../pipelines/common.ts';
import { DEVICES, MAX_THREADS, parsePrecision } from '../runtime/ort-executor.ts';
import type { Precision } from '../graph/quantize.ts';
import { SCHEDULER_NAMES, isSchedulerName, type SchedulerName } from '../schedulers/index.ts';

/** An integer in [1, max] (max: the library's own bound where it has one, so a flag never promises more). */
function positiveInt(flag: string, max = 1_000_000) {
  return (value: string): number => {
    const n = Number(value);
    if (!/^\+?\d+$/.test(value.trim()) || !Number.isSafeInteger(n) || n <= 0 || n > max) {
      throw new InvalidArgumentError(`${flag} expects an integer from 1 to ${max}, got "${value}"`);
    }
    return n;
  };
}

/** An integer in [0, max]. */
function count(flag: string, max: number) {
  return (value: string): number => {
    const n = Number(value);
    if (!/^\+?\d+$/.test(value.trim()) || n > max) throw new InvalidArgumentError(`${flag} expects an integer from 0 to ${max}, got "${value}"`);
    return n;
  };
}

function queueName(value: string): string {
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(value)) throw new InvalidArgumentError(`--queue expects a name of letters, digits, "_" and "-" (at most 64), got "${value.slice(0, 100)}"`);
  return value;
}

function number(flag: string, min = -Infinity) {
  return (value: string): number => {
    const n = Number(value);
    if (value.trim() === '' || !Number.isFinite(n) || n < min) {
      throw new InvalidArgumentError(`${flag} expects a number${min > -Infinity ? ` ≥ ${min}` : ''}, got "${value}"`);
    }
    return n;
  };
}

function seed(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || n >= 2 ** 32) throw new InvalidArgumentError(`--seed expects an integer in [0, 4294967295], got "${value}"`);
  return n;
}

/** `--seed` of generate: one seed, a list and ranges (`7`, `1,5,9`, `10-13`); at most 1000 seeds. */
export function seedList(value: string): number[] {
  const seeds: number[] = [];
  for (const part of value.split(',')) {
    const m = /^\s*(\d+)(?:\s*-\s*(\d+))?\s*$/.exec(part);
    const [from, to] = m ? [Number(m[1]), Number(m[2] ?? m[1])] : [NaN, NaN];
    if (!m || from >= 2 ** 32 || to >= 2 ** 32 || to < from || seeds.length + (to - from + 1) > 1000) {
      throw new InvalidArgumentError(`--seed expects seeds in [0, 4294967295] as N, N,M,... or A-B (at most 1000), got "${value}"`);
    }
    for (let s = from; s <= to; s++) seeds.push(s);
  }
  return seeds;
}

function oneOf<T extends string>(flag: string, values: readonly T[]) {
  return (value: string): T => {
    if (!(values as readonly string[]).includes(value)) throw new InputError(flag, 'unknown value', values.join(', '), value);
    return value as T;
  };
}

const INT8_HELP = 'int8 (8-bit linear layers and convolutions, activations quantized at run time; CPU only)';
const PRECISION_HELP = `the denoiser's arithmetic: fp32; ${INT8_HELP}; or fp16 (half precision as torch's autocast: --device webgpu, ` +
  'on an adapter with shader-f16). Text encoders and the VAE stay fp32';
const SERVICE_PRECISION_HELP = `the denoiser's arithmetic (the service runs on the CPU): fp32 or ${INT8_HELP}`;
const precisionFlag = (value: string): Precision => parsePrecision(value, '--precision');
/** serve and worker run on the CPU: fp16 is refused when the flag is read, not by every job. */
const servicePrecisionFlag = (value: string): Precision => {
  const precision = precisionFlag(value);
  if (precision === 'fp16') throw new InputError('--precision', 'fp16 runs with device webgpu only, and the service runs on the CPU', 'fp32 or int8', value);
  return precision;
};
const precisionList = (value: string): Precision[] => [...new Set(value.split(',').map(precisionFlag))];

/** `--scheduler NAME`, for generate and bench alike. */
function schedulerName(value: string): SchedulerName {
  if (!isSchedulerName(value)) throw new InputError('--scheduler', 'unknown scheduler', SCHEDULER_NAMES.join(', '), value);
  return value;
}

/**
 * Repeatable `--accel NAME[:key=value,...]` (parsed here; errors are InputErrors naming the method
 * and key) or `--accel @plan.json` (read by resolveAccelFlags in the action).
 */
function accelList(value: string, previous: AccelFlag[]): AccelFlag[] {
  return [...previous, value.startsWith('@') ? value : parseAccelSpec(value)];
}

/** `--accel` resolved: its methods, and a plan's precision unless --precision was given (default fp32). */
function accelAndPrecision(opts: { accel: AccelFlag[]; precision?: Precision }): { accel: AccelSpec[]; precision: Precision } {
  const plan = resolveAccelFlags(opts.accel);
  return { accel: plan.accel, precision: opts.precision ?? plan.precision ?? 'fp32' };
}

/** Repeatable `--sweep SPEC[+SPEC...]`. */
function sweepList(value: string, previous: AccelSpec[][]): AccelSpec[][] {
  return [...previous, parseSweepSetting(value)];
}

const ACCEL_HELP = `training-free acceleration, repeatable to compose (or @plan.json: a plan file, as tune --speedup writes): ${Object.keys(METHODS).map((m) => `${m}[:${Object.keys(METHODS[m].knobs).map((k) => `${k}=…`).join(',')}]`).join(' | ')}`;

/** "512", "768x512" → [width, height]. */
export function parseSize(value: string): [number, number] {
  const m = /^(\d+)(?:x(\d+))?$/.exec(value);
  if (!m) throw new InvalidArgumentError(`--size expects N or WIDTHxHEIGHT, got "${value}"`);
  const width = Number(m[1]);
  const height = Number(m[2] ?? m[1]);
  if (width <= 0 || height <= 0 || width > LIMITS.size || height > LIMITS.size) {
    throw new InvalidArgumentError(`--size expects sides from 1 to ${LIMITS.size}, got "${value}"`);
  }
  return [width, height];
}

/** A square size for commands that time square images: "256" or "256x256". */
function squareSize(value: string): number {
  const [width, height] = parseSize(value);
  if (width !== height) throw new InvalidArgumentError(`--size expects a square size here, got "${value}"`);
  return width;
}

function portNumber(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || n > 65535) throw new InvalidArgumentError(`--port expects a port number from 0 to 65535, got "${value}"`);
  return n;
}

function sizeList(value: string): [number, number][] {
  return value.split(',').map(parseSize);
}

const PACKAGE_VERSION = (JSON.parse(fs.readFileSync(path.join(import.meta.dirname, '../../package.json'), 'utf8')) as { version: string }).version;

/** Options that name a file a command writes. */
const OUTPUT_FLAGS: [string, string][] = [['out', '--out'], ['json', '--json'], ['saveLatents', '--save-latents']];

export function buildProgram(): Command {
  const program = new Command('diffuse')
    .description('Run diffusers-format diffusion models on ONNX Runtime, with training-free accelerations.')
    .version(PACKAGE_VERSION, '-V, --version')
    .exitOverride()
    // commander's own error messages (unknown or malformed flags) start like ours and, like ours, are
    // one line (its "Did you mean …?" comes on a line of its own); the help it prints is left as it is.
    .configureOutput({
      writeErr: (s) => process.stderr.write(s.startsWith('error: ') ? `${oneLine(s.trimEnd().replace(/^error: /, 'diffuse: '))}\n` : s),
    })
    // Every file a command will write is checked before it starts work (convert checks its folder itself).
    .hook('preAction', (_program, command) => {
      const opts = command.opts();
      if (command.name() === 'convert') return;
      for (const [key, flag] of OUTPUT_FLAGS) {
        if (typeof opts[key] === 'string' && opts[key] !== '-' && !(key === 'out' && opts.dryRun)) checkOutputFile(opts[key], flag);
      }
    });

  program
    .command('convert')
    .description('convert a DiT or Skip-DiT checkpoint as its authors save it (.pt) into a DiTPipeline folder; the pickle is read without running any code')
    .argument('<file.pt>', 'the checkpoint: a state dict, or {model, ema, opt, args} (ema is taken)')
    .requiredOption('--out <dir>', 'the folder to write (must not exist)')
    .option('--arch <name>', `the architecture, for its head count (default: the checkpoint's args.model): ${Object.keys(OFFICIAL_DIT_ARCHS).join(', ')}`)
    .option('--num-heads <n>', 'attention heads, where the architecture is not one of those', positiveInt('--num-heads', 4096))
    .option('--vae <dir>', 'a diffusers AutoencoderKL folder to copy in (DiT uses sd-vae-ft-ema or -mse); without it the folder cannot decode images')
    .option('--labels <file.json>', 'class names: a JSON object of class id → comma-separated names, kept as model_index.json\'s id2label (for --class NAME)')
    .action((file: string, opts: { out: string; arch?: string; numHeads?: number; vae?: string; labels?: string }) => {
      const { config: c, source, tensors } = convertOfficialDiT(file, opts.out, { arch: opts.arch, numHeads: opts.numHeads, vae: opts.vae, labels: opts.labels });
      process.stderr.write(`wrote ${opts.out}: ${c.longSkips ? 'DiT_skip' : 'DiT'}, depth ${c.depth}, width ${c.hiddenSize}, ${c.numHeads} heads, patch ${c.patchSize}, ` +
        `input ${c.sampleSize}, ${c.numClasses} classes${c.learnSigma ? ', learned sigma' : ''}; ${tensors} tensors from ${source === 'the checkpoint' ? 'the state dict' : `"${source}"`}\n`);
    });

  program
    .command('inspect')
    .description('list components, configs, parameters and per-segment MACs of a pipeline folder or preset')
    .argument('[dir]', `diffusers pipeline folder (model_index.json), ${REFERENCE_NAMES}`)
    .option('--preset <name>', `use a built-in config instead of a folder (${PRESET_NAMES.join(', ')}); needs no weights`)
    .option('--size <WxH>', 'image size in pixels (default: the model\'s native size)', parseSize)
    .option('--batch <n>', 'batch size', positiveInt('--batch', LIMITS.imagesPerPrompt), 1)
    .option('--json [file]', 'write JSON to the file instead of text (to stdout without one, or with -)')
    .action(async (dir: string | undefined, opts: { preset?: string; size?: [number, number]; batch: number; json?: string | true }) => {
      const [width, height] = opts.size ?? [];
      const { inspect } = await import('./inspect.ts');
      const text = await inspect(dir, { preset: opts.preset, width, height, batch: opts.batch, json: opts.json !== undefined });
      writeOutput(typeof opts.json === 'string' ? opts.json : '-', text);
    });

  program
    .command('generate')
    .description('generate PNG images with a diffusers folder: text-to-image or image-to-image (Stable Diffusion 1.x/2.x/XL, PixArt-α/Σ), class-to-image (DiT)')
    .option('--model <dir>', `diffusers pipeline folder (model_index.json), a DiT / Skip-DiT checkpoint FILE.pt, ${REFERENCE_NAMES}; default: "reference"`)
    .option('--prompt <text>', 'what to draw')
    .option('--prompts <file>', 'one prompt per line (blank lines and # comments skipped), instead of --prompt')
    .option('--negative-prompt <text>', 'what to steer away from (classifier-free guidance)')
    .option('--class <ids>', 'DiT: class ids or names from the folder\'s id2label, comma-separated (one image each)')
    .option('--steps <n>', 'denoising steps (default 50; PixArt 20, LCM 4)', positiveInt('--steps', LIMITS.steps))
    .option('--guidance <g>', 'classifier-free guidance scale; ≤ 1 turns CFG off (default 7.5; PixArt 4.5, DiT 4; LCM 8.5, taken as an embedding)', number('--guidance'))
    .option('--guidance-rescale <r>', 'diffusers guidance_rescale in [0, 1] (default 0)', number('--guidance-rescale', 0))
    .option('--scheduler <name>', `one of ${SCHEDULER_NAMES.join(', ')} (default: the folder's own)`, schedulerName)
    .option('--seed <s>', 'seed of our noise generator; a list or range (1,5,9 or 10-13) runs once per seed (default: random, printed)', seedList)
    .option('--size <WxH>', 'image size in pixels, N or WxH (the same as --width and --height)', parseSize)
    .option('--width <w>', 'image width in pixels, a multiple of the model\'s VAE factor (8 for Stable Diffusion; times the patch size for PixArt) (default: the model\'s size)', positiveInt('--width', LIMITS.size))
    .option('--height <h>', 'image height in pixels, the same multiple', positiveInt('--height', LIMITS.size))
    .option('--batch <n>', 'images per prompt', positiveInt('--batch', LIMITS.imagesPerPrompt))
    .option('--max-sequence-length <n>', 'PixArt: T5 tokens per prompt (default 120 for α, 300 for Σ)', positiveInt('--max-sequence-length', LIMITS.maxSequenceLength))
    .option('--resolution-binning', 'PixArt: generate at the nearest trained size, then resize and crop back (default)')
    .option('--no-resolution-binning', 'PixArt: generate at the size asked for')
    .option('--init-image <file>', 'img2img: start from this PNG or JPEG, resized to the output size (default: its own size rounded down to a multiple of 8; PixArt 16)')
    .option('--strength <s>', 'img2img: how much of the schedule runs, in (0, 1]: int(steps × s) steps (default 0.8)', number('--strength'))
    .option('--arch <name>', 'a DiT / Skip-DiT .pt as --model: its architecture (default: the checkpoint\'s args.model), as in diffuse convert')
    .option('--num-heads <n>', 'a DiT / Skip-DiT .pt as --model: its attention heads, as in diffuse convert', positiveInt('--num-heads', 4096))
    .option('--vae <dir>', 'a DiT / Skip-DiT .pt as --model: the VAE to decode with (a diffusers AutoencoderKL folder)')
    .option('--latents <file.safetensors>', 'starting latents: one F32 tensor "latents" [B, C, h, w] (diffusers\' latents=)')
    .option('--save-latents <file.safetensors>', 'also write the final latents (before VAE scaling and decoding)')
    .option('--out <file.png>', 'output PNG; several images get -0, -1, ... suffixes', 'out.png')
    .option('--device <name>', 'cpu or webgpu', oneOf('--device', DEVICES), 'cpu')
    .option('--threads <n>', 'intra-op threads', positiveInt('--threads', MAX_THREADS))
    .option('--memory-limit <GiB>', 'refuse a run estimated to need more memory at its peak (default: this machine\'s memory)', number('--memory-limit', 0))
    .option('--variant <name>', 'weight file variant, e.g. fp16 for *.fp16.safetensors')
    .option('--precision <mode>', `${PRECISION_HELP} (default: a plan file's, else fp32)`, precisionFlag)
    .option('--accel <spec>', ACCEL_HELP, accelList, [] as AccelFlag[])
    .option('--quiet', 'no progress bar', false)
    .action(async (opts) => {
      await generate({ ...opts, ...accelAndPrecision(opts) });
    });

  program
    .command('bench')
    .description('an accelerated setting vs. the baseline: whole-run MACs (--dry-run, no weights needed), or real runs with time, speed-up, PSNR/SSIM')
    .option('--model <dir>', `diffusers pipeline folder, ${REFERENCE_NAMES}`)
    .option('--preset <name>', `built-in config (${PRESET_NAMES.join(', ')}): MACs with --dry-run, else real runs on seeded random weights (SDXL: --dry-run only)`)
    .option('--accel <spec>', ACCEL_HELP, accelList, [] as AccelFlag[])
    .option('--steps <n>', 'denoising steps (default 25: the TGATE paper\'s tables)', positiveInt('--steps', LIMITS.steps), 25)
    .option('--size <WxH>', 'image size in pixels, N or WxH (default: the model\'s native size)', parseSize)
    .option('--batch <n>', 'images per run', positiveInt('--batch', LIMITS.imagesPerPrompt), 1)
    .option('--runs <n>', 'timed runs per setting (the best counts)', positiveInt('--runs'), 1)
    .option('--warmup <n>', 'untimed runs per setting first (they create the ORT sessions)', (v: string) => (v === '0' ? 0 : positiveInt('--warmup')(v)), 1)
    .option('--scheduler <name>', `one of ${SCHEDULER_NAMES.join(', ')} (default: the folder's own)`, schedulerName)
    .option('--guidance <g>', 'CFG scale (default: the pipeline\'s own, as generate: 7.5; PixArt 4.5, DiT 4; LCM 8.5)', number('--guidance'))
    .option('--seed <s>', 'seed shared by both settings (default 0: measurements repeat)', seed, 0)
    .option('--prompt <text>', 'prompt', 'a photo of an astronaut riding a horse on mars')
    .option('--dry-run', 'count MACs from the configs only; no weights are read, nothing runs', false)
    .option('--cache <dir>', 'presets without --dry-run: where their seeded random-weight folders are kept (PixArt: 12 GB with T5-XXL)', '.cache/bench')
    .option('--macs <convention>', 'calflops (no attention core, as the papers count) or full', 'calflops')
    .option('--device <name>', 'cpu or webgpu: where both settings run', oneOf('--device', DEVICES), 'cpu')
    .option('--threads <n>', 'intra-op threads', positiveInt('--threads', MAX_THREADS))
    .option('--memory-limit <GiB>', 'refuse a run estimated to need more memory at its peak, each setting checked before it runs (default: this machine\'s memory)', number('--memory-limit', 0))
    .option('--precision <mode>', 'the accelerated setting\'s denoiser arithmetic, fp32, int8 or fp16 (default: a plan file\'s, else fp32; the baseline stays fp32)', precisionFlag)
    .option('--out <file.png>', 'side-by-side comparison image', 'bench-compare.png')
    .option('--json <file>', 'also write results as JSON (- for stdout)')
    .option('--fidelity', 'a sweep of settings over a prompt file: speed-up, PSNR/SSIM against the baseline, adherence, fewer-steps baselines', false)
    .option('--prompts <file>', 'with --fidelity: one prompt per line; for a DiT, class names (default: the reference model\'s held-out captions; for a DiT with id2label, classes spread over it)')
    .option('--count <n>', 'with --fidelity: the first N prompts only', positiveInt('--count'))
    .option('--no-fewer-steps', 'with --fidelity: no equal-MAC fewer-steps baselines')
    .option('--steps-baseline <n>', 'with --fidelity, repeatable: also the plain sampler at N steps (e.g. 13 of 20, the attention-reuse paper\'s equal-latency baseline)', (v: string, prev: number[]) => [...prev, positiveInt('--steps-baseline')(v)], [] as number[])
    .option('--sweep <spec>', 'with --fidelity, repeatable: one setting, methods joined by "+" (default: TGATE gates at 20/40/60% of the steps, DeepCache intervals 2/3/5, ToMe ratios 0.3/0.5/0.6, attn-reuse on the last 20/40/50%)', sweepList, [] as AccelSpec[][])
    .action(async (opts, command: Command) => {
      if (opts.fidelity) {
        refuseUnread(command, [['prompt', '--prompt'], ['batch', '--batch'], ['runs', '--runs'], ['warmup', '--warmup'], ['out', '--out'], ['macs', '--macs']],
          'bench --fidelity (its prompts come from --prompts, its results go to --json)', 'bench without --fidelity');
      } else {
        refuseUnread(command, [['prompts', '--prompts'], ['count', '--count'], ['fewerSteps', '--no-fewer-steps']], 'bench without --fidelity', '--fidelity');
      }
      if (opts.dryRun) {
        refuseUnread(command, [['runs', '--runs'], ['warmup', '--warmup'], ['out', '--out'], ['device', '--device'], ['threads', '--threads'], ['seed', '--seed'],
          ['prompt', '--prompt'], ['cache', '--cache'], ['memoryLimit', '--memory-limit']], 'bench --dry-run (MACs from the configs, nothing runs)', 'bench without --dry-run');
      }
      const { bench } = await import('../bench/accel.ts');
      await bench({ ...opts, ...accelAndPrecision(opts) });
    });

  program
    .command('tune')
    .description('search a method\'s discrete knobs for the images closest to the unaccelerated ones (PHAST for attn-reuse), or calibrate TeaCache\'s polynomial on a PixArt or DiT folder')
    .option('--model <dir>', `diffusers pipeline folder, ${REFERENCE_NAMES}; default: "reference"`)
    .option('--method <name>', 'method to tune (attn-reuse, teacache)', 'attn-reuse')
    .option('--steps <n>', 'denoising steps (default 20: the attention-reuse paper\'s)', positiveInt('--steps', LIMITS.steps), 20)
    .option('--reuse <r>', 'attn-reuse: model calls that reuse maps', positiveInt('--reuse'), 10)
    .option('--prompts <file>', 'one prompt per line (default: the reference model\'s held-out captions)')
    .option('--count <n>', 'the first N prompts only (--speedup: N to tune on, the next N to check on)', positiveInt('--count'), 4)
    .option('--epsilon <dB>', 'a move must raise the mean PSNR by more than this', number('--epsilon', 0), 0.01)
    .option('--guidance <g>', 'CFG scale (default: the pipeline\'s own, as generate: 7.5; PixArt 4.5, DiT 4; LCM 8.5)', number('--guidance'))
    .option('--seed <s>', 'seed of the first prompt, the next get +1, +2, ... (default 0: searches repeat)', seed, 0)
    .option('--scheduler <name>', `one of ${SCHEDULER_NAMES.join(', ')} (default: the folder's own)`, schedulerName)
    .option('--threads <n>', 'intra-op threads', positiveInt('--threads', MAX_THREADS))
    .option('--memory-limit <GiB>', 'refuse a run estimated to need more memory at its peak, each setting checked before it runs (default: this machine\'s memory)', number('--memory-limit', 0))
    .option('--out <file.json>', 'where the schedule goes (rewritten after every round; default schedule.json, with --speedup plan.json)')
    .option('--max-rounds <n>', 'stop after this many rounds even if the last one improved', positiveInt('--max-rounds'), 100)
    .option('--speedup <x>', 'instead: search the settings of the methods the model takes (DeepCache, Skip-Cache, FORA, First-Block-Cache, TeaCache, TGATE, ToMe, attention-map reuse) and int8 for the best PSNR at this measured speed-up; writes a plan for --accel @FILE', number('--speedup'))
    .option('--mac-speedup <x>', 'instead of --speedup, a MAC budget: the best PSNR at this MAC speed-up (the plain run\'s MACs over the plan\'s; no timing noise; fp32 plans)', number('--mac-speedup'))
    .option('--no-int8', 'with --speedup: leave --precision int8 out of the search (fp32 plans only)')
    .action(async (opts, command: Command) => {
      if (opts.speedup !== undefined || opts.macSpeedup !== undefined) {
        refuseUnread(command, [['method', '--method'], ['reuse', '--reuse'], ['epsilon', '--epsilon'], ['maxRounds', '--max-rounds']],
          'tune --speedup/--mac-speedup (it searches every method the model takes)', 'tune without --speedup/--mac-speedup');
        if (opts.macSpeedup !== undefined) refuseUnread(command, [['int8', '--no-int8']], 'tune --mac-speedup (fp32 plans only)', '--speedup');
      } else {
        refuseUnread(command, [['int8', '--no-int8']], 'tune without --speedup', '--speedup');
        if (opts.method === 'teacache') {
          refuseUnread(command, [['reuse', '--reuse'], ['epsilon', '--epsilon'], ['maxRounds', '--max-rounds']], 'tune --method teacache (a calibration, not a search)', '--method attn-reuse');
        }
      }
      const { tune } = await import('./tune.ts');
      await tune(opts);
    });

  forwardBench(program, 'bench-unet', 'time one U-Net forward of a preset architecture with seeded random weights, against ORT\'s own conv/MatMul rate',
    ['sd15', 'sd21'], [[256, 256], [512, 512]], async (o) => (await import('../bench/unet-forward.ts')).benchUNet(o));
  forwardBench(program, 'bench-transformer',
    'time one PixArt transformer forward of a preset (seeded random weights, 120 or 300 T5 tokens), against ORT\'s own MatMul rate',
    ['pixart-alpha-1024', 'pixart-alpha-512', 'pixart-sigma-1024'], [[512, 512], [1024, 1024]], async (o) => (await import('../bench/unet-forward.ts')).benchTransformer(o));

  program
    .command('bench-text-encoder')
    .description('time T5 text encoding of a PixArt preset at full size (seeded random weights in shards) with its peak memory')
    .option('--preset <name>', 'architecture (pixart-alpha-1024, pixart-alpha-512, pixart-sigma-1024)', 'pixart-alpha-1024')
    .option('--dtype <type>', 'how the random weights are stored: F32 (as PixArt\'s Hub folders) or F16', oneOf('--dtype', ['F32', 'F16'] as const), 'F32')
    .option('--batch <n>', 'prompts per call (2 = a prompt and its negative)', positiveInt('--batch', LIMITS.imagesPerPrompt), 2)
    .option('--threads <n>', 'intra-op threads', positiveInt('--threads', MAX_THREADS), 2)
    .option('--runs <n>', 'encodings timed', positiveInt('--runs'), 2)
    .option('--sessions <policy>', 'keep the sessions, release each after use, or auto (release when the encoder is over a quarter of memory)',
      oneOf('--sessions', ['auto', 'keep', 'release'] as const), 'auto')
    .option('--cache <dir>', 'where the random-weight folder is kept', '.cache/bench')
    .option('--json <file>', 'also write results as JSON (- for stdout)')
    .action(async (opts) => {
      const { benchTextEncoder } = await import('../bench/text-encoder.ts');
      await benchTextEncoder(opts);
    });

  program
    .command('bench-generate')
    .description('time a whole text-to-image run of a preset architecture with seeded random weights (text, denoising, decoding)')
    .option('--preset <name>', 'architecture (sd15, sd21)', 'sd15')
    .option('--size <WxH>', 'image size in pixels, N or NxN (square)', squareSize, 256)
    .option('--steps <n>', 'denoising steps (default 10: a timing, not an image)', positiveInt('--steps', LIMITS.steps), 10)
    .option('--guidance <g>', 'CFG scale', number('--guidance'), 7.5)
    .option('--threads <n>', 'intra-op threads', positiveInt('--threads', MAX_THREADS), 2)
    .option('--runs <n>', 'timed runs after one warm-up run', positiveInt('--runs'), 2)
    .option('--cache <dir>', 'where the random-weight folder is kept', '.cache/bench')
    .option('--json <file>', 'also write results as JSON (- for stdout)')
    .option('--pytorch <env.sh>', 'also time diffusers on PyTorch on the same folder, in this run')
    .option('--session-cache <dir>', 'keep ORT\'s optimised models here: run twice, and the second process\'s first run is a cold start from the cache')
    .action(async (opts) => {
      const { benchGenerate } = await import('../bench/generate.ts');
      await benchGenerate(opts);
    });

  program
    .command('serve')
    .description('an HTTP image service on this machine: POST /v1/images queues a job, worker threads generate it (API at /openapi.json)')
    .option('--host <address>', 'address to listen on (beyond loopback a --token is required)', '127.0.0.1')
    .option('--port <n>', 'port (0: any free one)', portNumber, 8174)
    .option('--model-dir <dir>', 'folder of diffusers model folders requests may name (the embedded reference models are always there)')
    .option('--results <dir>', 'where finished images are written', 'diffuse-results')
    .option('--workers <n>', 'worker threads here, one job at a time each, each holding the last model it ran (default: 1; 0 with --redis)', count('--workers', 64))
    .option('--threads <n>', 'intra-op threads of each ORT session a worker creates (requests cannot set it)', positiveInt('--threads', MAX_THREADS), 1)
    .option('--precision <mode>', `${SERVICE_PRECISION_HELP} (for every job of this process's workers; requests cannot set it)`, servicePrecisionFlag, 'fp32')
    .option('--token <token>', 'bearer token required on /v1 and /metrics (default: $DIFFUSE_TOKEN); at least 16 characters')
    .option('--rate <n>', 'jobs per minute one client address may submit (with --token: all token holders together)', positiveInt('--rate', 1_000_000), 120)
    .option('--redis <url>', 'queue jobs in Redis (redis://host:port) for `diffuse worker` processes on any machine, instead of in this process')
    .option('--queue <name>', 'with --redis: the queue\'s key prefix (one Redis can hold several services)', queueName, DEFAULT_QUEUE)
    .option('--stall-seconds <n>', 'with --redis and --workers: seconds without a lock renewal before a job goes to another worker', positiveInt('--stall-seconds', 3600), DEFAULT_STALL_SECONDS)
    .action(async (opts) => {
      // Loaded when used: the service's modules (BullMQ) take longer to import than generate needs to start.
      const { serve } = await import('../serve/serve.ts');
      await serve(opts);
    });

  program
    .command('worker')
    .description('take jobs from a `diffuse serve --redis` queue and generate them here (any number of machines)')
    .requiredOption('--redis <url>', 'the Redis the server queues jobs in (redis://host:port)')
    .option('--queue <name>', 'the queue\'s key prefix, as given to serve', queueName, DEFAULT_QUEUE)
    .option('--model-dir <dir>', 'this machine\'s folder of diffusers model folders (the names requests give; the embedded reference models are always there)')
    .option('--results <dir>', 'where finished images are written: the folder the server reads (shared between machines)', 'diffuse-results')
    .option('--workers <n>', 'worker threads, one job at a time each', positiveInt('--workers', 64), 1)
    .option('--threads <n>', 'intra-op threads of each ORT session a worker creates', positiveInt('--threads', MAX_THREADS), 1)
    .option('--precision <mode>', `${SERVICE_PRECISION_HELP} (for every job this worker runs)`, servicePrecisionFlag, 'fp32')
    .option('--stall-seconds <n>', 'seconds without a lock renewal before another worker takes a job over (a worker that died)', positiveInt('--stall-seconds', 3600), DEFAULT_STALL_SECONDS)
    .action(async (opts) => {
      const { work } = await import('../serve/redis-worker.ts');
      await work(opts);
    });

  return program;
}

/** Options that may be given several times; any other given twice is a mistake (commander would keep the last silently). */
const REPEATABLE = new Set(['accel', 'sweep', 'stepsBaseline']);

/** bench-unet and bench-transformer: one forward pass of a preset, timed with the same flags. */
function forwardBench(program: Command, name: string, description: string, presets: string[], sizes: [number, number][],
  bench: (opts: BenchUNetOptions) => Promise<void>): void {
  program
    .command(name)
    .description(description)
    .option('--preset <name>', `architecture (${presets.join(', ')})`, presets[0])
    .option('--size <WxH,...>', 'image sizes, N or WxH, comma-separated', sizeList, sizes)
    .option('--batch <n>', 'batch size (2 = a CFG batch)', positiveInt('--batch', LIMITS.imagesPerPrompt), 2)
    .option('--threads <n>', 'intra-op threads', positiveInt('--threads', MAX_THREADS), 2)
    .option('--runs <n>', 'timed runs per size (after one warm-up)', positiveInt('--runs'), 3)
    .option('--cache <dir>', 'where the random-weight folder is kept', '.cache/bench')
    .option('--profile', 'print time per segment kind', false)
    .option('--precision <mode>', 'fp32 and/or int8, comma-separated: each timed in turn in this process (peak RSS is the process\'s so far)', precisionList, ['fp32'] as Precision[])
    .option('--json <file>', 'also write results as JSON (- for stdout)')
    .option('--pytorch <env.sh>', 'also time diffusers on PyTorch in this run (a ../shared/reference environment)')
    .action(async (opts: BenchUNetOptions) => {
      await bench(opts);
    });
}

/**
 * Refuses the flags among `flags` ([option key, flag]) given on the command line, not left at their
 * defaults, that `mode` would not read: each would do nothing. `instead` says what reads it.
 */
function refuseUnread(command: Command, flags: [string, string][], mode: string, instead: string): void {
  for (const [key, flag] of flags) {
    if (command.getOptionValueSource(key) === 'cli') {
      const value: unknown = command.getOptionValue(key);
      throw new InputError(flag, `not read by ${mode}, so it would do nothing`, instead, typeof value === 'boolean' ? undefined : String(value));
    }
  }
}

function refuseRepeatedFlags(program: Command, argv: string[]): void {
  const command = program.commands.find((c) => c.name() === argv[0]);
  if (!command) return;
  const seen = new Map<string, string>();
  for (const arg of argv.slice(1)) {
    if (arg === '--') break;
    if (!arg.startsWith('--')) continue;
    const flag = arg.split('=')[0];
    const option = command.options.find((o) => o.long === flag);
    if (!option || REPEATABLE.has(option.attributeName())) continue;
    const earlier = seen.get(option.attributeName());
    if (earlier !== undefined) throw new InputError(flag, earlier === flag ? 'given twice' : `given with ${earlier}`, 'once');
    seen.set(option.attributeName(), flag);
  }
}

export async function main(argv: string[]): Promise<number> {
  try {
    const program = buildProgram();
    refuseRepeatedFlags(program, argv);
    await program.parseAsync(argv, { from: 'user' });
    return 0;
  } catch (err) {
    if (err instanceof CommanderError) {
      // commander already printed its message (help and version exit 0).
      return err.exitCode === 0 ? 0 : 2;
    }
    if (err instanceof InputError) {
      process.stderr.write(`diffuse: ${withFlagNames(err.message, argv.find((a) => !a.startsWith('-')))}\n`);
      return 2;
    }
    if (err instanceof Interrupted) {
      process.stderr.write(`diffuse: ${err.message}\n`);
      return err.signal === 'SIGINT' ? 130 : 143;
    }
    // The operating system refused something (a full disk, a permission, a vanished file).
    if (isSystemError(err)) {
      process.stderr.write(`diffuse: ${systemErrorLine(err)}\n`);
      return 1;
    }
    throw err;
  }
}
