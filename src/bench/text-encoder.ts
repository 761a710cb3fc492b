/**
 * `diffuse bench-text-encoder`: T5 text encoding of a PixArt preset at its real size (T5-XXL,
 * 4.76 B parameters, seeded random weights written as the Hub ships them), timed with the peak
 * resident memory of each run: what a PixArt pipeline costs before its first denoising step.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { InputError } from '../errors.ts';
import { loadT5Encoder } from '../models/components.ts';
import { TRANSFORMER_PRESETS } from '../models/presets.ts';
import { OrtExecutor, retainSessionsFor } from '../runtime/ort-executor.ts';
import { textOf, writeOutput } from '../util/files.ts';
import { Rng } from '../util/rng.ts';
import { readPipelineFolder } from '../weights/diffusers-folder.ts';
import { ensureRandomTextEncoderFolder } from './random-folder.ts';
import { own } from '../util/own.ts';

export interface BenchTextEncoderOptions {
  preset: string;
  /** How the random weights are stored: F32 as PixArt's Hub folders, or F16. */
  dtype: 'F32' | 'F16';
  /** Prompts encoded in one call (2: a prompt and its negative, as a CFG run encodes them). */
  batch: number;
  threads: number;
  runs: number;
  /** auto: release each block's session after use when the encoder is over a quarter of memory. */
  sessions: 'auto' | 'keep' | 'release';
  cache: string;
  json?: string;
}

const GIB = 2 ** 30;

/** Linux's peak resident set since the last reset (bytes), and the reset; elsewhere the process-lifetime peak. */
function peakRss(): number {
  try {
    const kb = /VmHWM:\s+(\d+)/.exec(fs.readFileSync('/proc/self/status', 'utf8'))?.[1];
    if (kb) return Number(kb) * 1024;
  } catch { /* not Linux */ }
  return process.resourceUsage().maxRSS * 1024;
}

function resetPeakRss(): void {
  try {
    fs.writeFileSync('/proc/self/clear_refs', '5');
  } catch { /* not Linux: peaks then include everything before */ }
}

export async function benchTextEncoder(o: BenchTextEncoderOptions): Promise<void> {
  const print = textOf(o);
  const preset = own(TRANSFORMER_PRESETS, o.preset);
  if (!preset?.textEncoder) {
    throw new InputError('--preset', 'not a preset with a T5 text encoder', Object.keys(TRANSFORMER_PRESETS).filter((k) => TRANSFORMER_PRESETS[k].textEncoder).join(', '), o.preset);
  }
  const dir = path.resolve(o.cache, `${o.preset}-t5-${o.dtype.toLowerCase()}`);
  process.stderr.write(`preparing ${dir} (seeded random weights, ${o.dtype} in shards)...\n`);
  await ensureRandomTextEncoderFolder(dir, o.preset, o.dtype);
  const { model, params, weights } = loadT5Encoder(readPipelineFolder(dir));
  const fp32 = weights.float32Bytes();
  const retain = o.sessions === 'auto' ? retainSessionsFor(fp32) : o.sessions === 'keep';
  const exec = new OrtExecutor(params, { device: 'cpu', threads: o.threads }, { retainSessions: retain });
  const c = model.config;
  const tokens = preset.maxSequenceLength ?? 120;
  const rng = new Rng(1);
  const ids = BigInt64Array.from({ length: o.batch * tokens }, () => BigInt(Math.floor(rng.uniform() * c.vocabSize)));
  // Half of each row padding, as a short prompt is.
  const mask = BigInt64Array.from({ length: o.batch * tokens }, (_, i) => (i % tokens < tokens / 2 ? 1n : 0n));
  const input = new ort.Tensor('int64', ids, [o.batch, tokens]);
  const attention = new ort.Tensor('int64', mask, [o.batch, tokens]);

  print(`${o.preset} text encoder: T5 ${c.numLayers} layers × d_model ${c.dModel} (${(fp32 / 4 / 1e9).toFixed(2)} B parameters, ` +
    `${(fp32 / GIB).toFixed(1)} GiB as float32, stored ${o.dtype}), ${o.batch} × ${tokens} tokens, ${o.threads} threads, ` +
    `sessions ${retain ? 'kept' : 'released after each block'} (${o.sessions}); machine ${(os.totalmem() / GIB).toFixed(1)} GiB`);
  const runs: { seconds: number; peakRssBytes: number }[] = [];
  for (let r = 0; r < o.runs; r++) {
    resetPeakRss();
    const start = performance.now();
    await model.forward(exec, input, attention);
    runs.push({ seconds: (performance.now() - start) / 1000, peakRssBytes: peakRss() });
    print(`  run ${r + 1}${r === 0 && retain ? ' (creates the sessions)' : ''}: ${runs[r].seconds.toFixed(1)} s, peak RSS ${(runs[r].peakRssBytes / GIB).toFixed(2)} GiB`);
  }
  await exec.release();
  weights.close();
  if (o.json) {
    writeOutput(o.json, JSON.stringify({
      preset: o.preset, dtype: o.dtype, batch: o.batch, tokens, threads: o.threads, sessions: retain ? 'kept' : 'released',
      parameters: fp32 / 4, float32Bytes: fp32, machineBytes: os.totalmem(), date: new Date().toISOString(), runs,
    }, null, 2));
  }
}
