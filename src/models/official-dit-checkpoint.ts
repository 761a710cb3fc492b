/**
 * `diffuse convert`: a DiT or Skip-DiT checkpoint as its authors' train.py saves it (`.pt`: the
 * state dict, or {model, ema, opt, args}) → a folder the DiT pipeline loads, once, without ever
 * reading a pickle again: model_index.json (DiTPipeline), transformer/ (config.json with the
 * official constructor's arguments, the EMA weights as safetensors under their own names),
 * scheduler/ (DDIM, as diffusers' DiT conversion writes it) and, given `vae`, a copy of that VAE.
 *
 * The tensors tell depth, width, patch, input size, classes, learned sigma and the skip branches;
 * the head count comes from `numHeads`, else the checkpoint's args.num_heads, else the architecture name (`arch`, or the checkpoint's
 * args.model) in the official DiT_models table — only where that entry's sizes match the tensors.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { InputError } from '../errors.ts';
import type { PickleValue, TensorRef } from '../weights/pickle.ts';
import { float32ToFloat16 } from '../graph/half.ts';
import { writeSafetensors } from '../weights/safetensors-write.ts';
import { labelTable } from '../weights/diffusers-folder.ts';
import { TorchCheckpoint } from '../weights/torch-checkpoint.ts';
import { checkOfficialDiTConfig, type OfficialDiTConfig } from './official-dit.ts';
import { DIT_SCHEDULER } from './presets.ts';
import { makeFolder, processGone } from '../util/files.ts';

/** The official DiT_models table (Skip-DiT adds "DiT-skip", DiT-XL/2 with long skips). */
export const OFFICIAL_DIT_ARCHS: Record<string, { depth: number; hidden: number; patch: number; heads: number; skips: boolean }> = Object.fromEntries([
  ...['XL', 'L', 'B', 'S'].flatMap((size) => [2, 4, 8].map((patch) => {
    const [depth, hidden, heads] = { XL: [28, 1152, 16], L: [24, 1024, 16], B: [12, 768, 12], S: [12, 384, 6] }[size]!;
    return [`DiT-${size}/${patch}`, { depth, hidden, patch, heads, skips: false }];
  })),
  ['DiT-skip', { depth: 28, hidden: 1152, patch: 2, heads: 16, skips: true }],
]);

export interface ConvertOptions {
  arch?: string;
  numHeads?: number;
  /** A diffusers AutoencoderKL folder to copy in (DiT's sample.py uses stabilityai/sd-vae-ft-ema or -mse). */
  vae?: string;
  /** A JSON file of class id → comma-separated names, written as model_index.json's id2label (as the Hub's DiT folders have it). */
  labels?: string;
}

/** The official constructor's arguments, read off a state dict. */
export function inferOfficialDiT(tensors: Map<string, TensorRef>, args: Map<string, PickleValue> | undefined, o: ConvertOptions, where: string): OfficialDiTConfig {
  const shape = (name: string) => {
    const t = tensors.get(name);
    if (!t) throw new InputError(where, `no tensor "${name}": not a DiT checkpoint in the authors' layout`, 'x_embedder, pos_embed, blocks.N, final_layer tensors');
    return t.shape;
  };
  const [, tokens, hidden] = shape('pos_embed');
  const [, inChannels, patch] = shape('x_embedder.proj.weight');
  const grid = Math.round(Math.sqrt(tokens));
  if (grid * grid !== tokens) throw new InputError(`${where}: pos_embed`, 'not a square grid of positions', 'a square token count', `${tokens}`);
  let depth = 0;
  while (tensors.has(`blocks.${depth}.attn.qkv.weight`)) depth++;
  const skipLinears = [...tensors.keys()].filter((k) => /^skip_linears\.\d+\.linear\.weight$/.test(k)).length;
  const longSkips = skipLinears > 0;
  if (longSkips && skipLinears * 2 !== depth) throw new InputError(where, `${skipLinears} skip branches for ${depth} blocks`, `${depth / 2} (one per pair of blocks)`);
  const outChannels = shape('final_layer.linear.weight')[0] / (patch * patch);
  const mlpWidth = shape('blocks.0.mlp.fc1.weight')[0];
  const fromArgs = args?.get('model');
  const archName = o.arch ?? (typeof fromArgs === 'string' ? fromArgs : undefined);
  const argsHeads = args?.get('num_heads');
  let heads = o.numHeads ?? (typeof argsHeads === 'number' && Number.isInteger(argsHeads) ? argsHeads : undefined);
  if (heads === undefined) {
    const arch = archName === undefined ? undefined : Object.prototype.hasOwnProperty.call(OFFICIAL_DIT_ARCHS, archName) ? OFFICIAL_DIT_ARCHS[archName] : undefined;
    const flag = o.arch !== undefined ? '--arch' : 'the checkpoint\'s args.model';
    if (archName !== undefined && !arch) throw new InputError(o.arch !== undefined ? '--arch' : `${where}: args.model`, 'unknown architecture', Object.keys(OFFICIAL_DIT_ARCHS).join(', '), archName);
    if (arch && (arch.depth !== depth || arch.hidden !== hidden || arch.patch !== patch)) {
      throw new InputError(flag, `${archName} has depth ${arch.depth}, width ${arch.hidden}, patch ${arch.patch}, but the tensors have ${depth}, ${hidden}, ${patch}`,
        'the architecture the weights were trained as, or --num-heads N', archName!);
    }
    const match = arch ?? Object.values(OFFICIAL_DIT_ARCHS).find((a) => a.depth === depth && a.hidden === hidden && a.patch === patch);
    if (!match) throw new InputError('--num-heads', `cannot tell the head count of a ${depth}-block, ${hidden}-wide DiT (not in DiT_models)`, 'the number of attention heads');
    heads = match.heads;
  }
  const config: OfficialDiTConfig = {
    longSkips, sampleSize: grid * patch, patchSize: patch, inChannels, hiddenSize: hidden, depth, numHeads: heads,
    mlpRatio: mlpWidth / hidden, numClasses: shape('y_embedder.embedding_table.weight')[0] - 1, learnSigma: outChannels === 2 * inChannels,
  };
  if (outChannels !== inChannels && outChannels !== 2 * inChannels) throw new InputError(`${where}: final_layer.linear.weight`, 'output channels', `${inChannels} or ${2 * inChannels}`, `${outChannels}`);
  checkOfficialDiTConfig(config, o.numHeads !== undefined ? '--num-heads' : where);
  return config;
}

/** config.json of a converted transformer: the official constructor's arguments. */
export function officialDiTConfigJson(c: OfficialDiTConfig, source: Record<string, string>): Record<string, unknown> {
  return {
    _class_name: c.longSkips ? 'DiT_skip' : 'DiT', _source: source, input_size: c.sampleSize, patch_size: c.patchSize, in_channels: c.inChannels,
    hidden_size: c.hiddenSize, depth: c.depth, num_heads: c.numHeads, mlp_ratio: c.mlpRatio, num_classes: c.numClasses, learn_sigma: c.learnSigma,
  };
}

/** Partial folders of earlier conversions to `target` whose process is gone (killed mid-write: a signal ends a synchronous write at once). */
function removeAbandoned(target: string): void {
  const prefix = `${path.basename(target)}.partial-`;
  for (const name of fs.readdirSync(path.dirname(target))) {
    const pid = Number(name.slice(prefix.length));
    if (!name.startsWith(prefix) || !Number.isSafeInteger(pid) || pid === process.pid) continue;
    if (processGone(pid)) fs.rmSync(path.join(path.dirname(target), name), { recursive: true, force: true });
  }
}

/** Converts `file` into the folder `out` (written beside it under a temporary name, then renamed). */
export function convertOfficialDiT(file: string, out: string, o: ConvertOptions): { config: OfficialDiTConfig; source: string; tensors: number } {
  // Resolved: "newdir/" would put the partial folder inside the one it becomes, and "file/" is not found where "file" is.
  const target = path.resolve(out);
  if (fs.existsSync(target)) throw new InputError('--out', 'already exists (convert writes a new folder)', 'a path that does not exist', out);
  if (!fs.existsSync(path.dirname(target))) throw new InputError('--out', 'its parent folder does not exist', 'a new folder in an existing one', out);
  if (o.vae !== undefined && !fs.existsSync(path.join(o.vae, 'config.json'))) throw new InputError('--vae', 'not a diffusers VAE folder (no config.json)', 'an AutoencoderKL folder', o.vae);
  const id2label = o.labels === undefined ? undefined : readLabels(o.labels);
  const checkpoint = TorchCheckpoint.open(file);
  removeAbandoned(target);
  const partial = `${target}.partial-${process.pid}`;
  try {
    const { source, tensors } = checkpoint.stateDict();
    const config = inferOfficialDiT(tensors, checkpoint.args(), o, file);
    if (id2label) {
      const ids = Object.keys(id2label).map(Number);
      const bad = ids.find((id) => id >= config.numClasses);
      if (bad !== undefined) throw new InputError(`--labels ${o.labels}`, `class ${bad} is beyond the checkpoint's ${config.numClasses} classes`, `ids 0…${config.numClasses - 1}`, `${bad}`);
    }
    makeFolder(path.join(partial, 'transformer'));
    fs.mkdirSync(path.join(partial, 'scheduler'));
    const json = (p: string, v: unknown) => fs.writeFileSync(path.join(partial, p), `${JSON.stringify(v, null, 2)}\n`);
    json('model_index.json', {
      _class_name: 'DiTPipeline', _diffusers_version: '0.40.0',
      transformer: ['diffusion.ts', config.longSkips ? 'DiT_skip' : 'DiT'], scheduler: ['diffusers', 'DDIMScheduler'],
      ...(o.vae !== undefined ? { vae: ['diffusers', 'AutoencoderKL'] } : {}),
      ...(id2label ? { id2label } : {}),
    });
    json('transformer/config.json', officialDiTConfigJson(config, { checkpoint: path.basename(file), state_dict: source }));
    json('scheduler/scheduler_config.json', DIT_SCHEDULER);
    // Half-precision checkpoints stay half precision (exactly: F16 → F32 → F16 round-trips); the rest become F32.
    const half = [...tensors.values()].every((t) => t.storage.dtype === 'F16');
    writeSafetensors(path.join(partial, 'transformer', 'diffusion_pytorch_model.safetensors'), Object.fromEntries([...tensors].map(([name, t]) => [name, half
      ? { dtype: 'F16' as const, shape: t.shape, data: () => float32ToFloat16(checkpoint.readFloat32(name, t)) }
      : { dtype: 'F32' as const, shape: t.shape, data: () => checkpoint.readFloat32(name, t) }])));
    if (o.vae !== undefined) {
      fs.mkdirSync(path.join(partial, 'vae'));
      for (const f of fs.readdirSync(o.vae)) if (f === 'config.json' || f.endsWith('.safetensors')) fs.copyFileSync(path.join(o.vae, f), path.join(partial, 'vae', f));
    }
    fs.renameSync(partial, target);
    return { config, source, tensors: tensors.size };
  } catch (e) {
    fs.rmSync(partial, { recursive: true, force: true });
    throw e;
  } finally {
    checkpoint.close();
  }
}

/** `--labels FILE`: a JSON object of class id → comma-separated names (DiTPipeline's id2label). */
function readLabels(file: string): Record<string, string> {
  let value: unknown;
  try {
    value = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new InputError(`--labels ${file}`, (e as NodeJS.ErrnoException).code === 'ENOENT' ? 'file not found' : `not JSON (${(e as Error).message})`);
  }
  labelTable(value, `--labels ${file}`); // the same checks the pipeline makes when it loads the folder
  return value as Record<string, string>;
}

/**
 * A checkpoint given where a folder is expected (`generate --model FILE.pt`): converted once into a
 * cache folder keyed by the file (path, size, modification time) and the options, then reused.
 */
export function convertedFolder(file: string, o: ConvertOptions): string {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(file);
  } catch {
    throw new InputError(file, 'checkpoint not found');
  }
  const key = JSON.stringify([fs.realpathSync(file), stat.size, stat.mtimeMs, o.arch ?? null, o.numHeads ?? null, o.vae === undefined ? null : path.resolve(o.vae), o.labels === undefined ? null : path.resolve(o.labels)]);
  const root = path.join(os.tmpdir(), 'diffusion-ts-converted');
  const dir = path.join(root, createHash('sha256').update(key).digest('hex').slice(0, 24));
  if (!fs.existsSync(path.join(dir, 'model_index.json'))) {
    makeFolder(root);
    convertOfficialDiT(file, dir, o);
  }
  return dir;
}
