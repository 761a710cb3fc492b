/**
 * DiT and Skip-DiT in their authors' layout (facebookresearch/DiT and OpenSparseLLMs/Skip-DiT
 * `models.py`: `DiT`, `DiT_skip`), with their state-dict names: `x_embedder.proj` (patch conv),
 * `pos_embed` (the fixed sin-cos table, a parameter), `t_embedder.mlp.{0,2}`,
 * `y_embedder.embedding_table` (one row more for the null class), per block `blocks.N.attn.qkv`
 * (fused) / `attn.proj`, `mlp.fc1` / `mlp.fc2`, `adaLN_modulation.1` (six modulations), then
 * `final_layer.{adaLN_modulation.1, linear}`. The timestep embedding divides by half, not
 * half − 1, and puts cos first (diffusers' DiT differs in the first).
 *
 * Skip-DiT's long skips: blocks 0…D/2−1 push their outputs; block j ≥ D/2 first replaces its input
 * by `skip_linears[j−D/2].linear(skip_norms[j−D/2](concat[x, skip]))`, the skip popped last in,
 * first out. They are declared as the model's long skips (runtime/protocol.ts), so a plan can cut
 * a pass there (Skip-Cache, src/accel/skip-cache.ts). Config: the official constructor's arguments
 * (written by `diffuse convert`, or inferred from a checkpoint's tensors: official-dit-checkpoint.ts).
 */
import { InputError } from '../errors.ts';
import type { GraphBuilder, Value } from '../graph/builder.ts';
import { shaped, type Executor, type ShapedTensor, type TensorLike } from '../runtime/executor.ts';
import { LongSkips, type ModelDeclaration, type SegmentRole } from '../runtime/protocol.ts';
import { cfgBool, cfgNumber, cfgOneOf, cfgPositiveInt, type Config } from '../weights/config.ts';
import { sublayer } from './basic-transformer-block.ts';
import { checkPositionTableWidth, timestepEmbedding, toTokens, unpatchify } from './layers.ts';

export const OFFICIAL_DIT_CLASSES = ['DiT', 'DiT_skip'] as const;

export interface OfficialDiTConfig {
  longSkips: boolean;
  /** input_size: the latent side the position table is made for (diffusers' name, which the pipelines read). */
  sampleSize: number;
  patchSize: number;
  inChannels: number;
  hiddenSize: number;
  depth: number;
  numHeads: number;
  mlpRatio: number;
  numClasses: number;
  learnSigma: boolean;
}

/** Reads a config.json of `diffuse convert` (the official constructor's arguments, `_class_name` DiT or DiT_skip). */
export function parseOfficialDiTConfig(cfg: Config, where: string): OfficialDiTConfig {
  const className = cfgOneOf(cfg, '_class_name', where, OFFICIAL_DIT_CLASSES);
  const c: OfficialDiTConfig = {
    longSkips: className === 'DiT_skip',
    sampleSize: cfgPositiveInt(cfg, 'input_size', where, 32),
    patchSize: cfgPositiveInt(cfg, 'patch_size', where, 2),
    inChannels: cfgPositiveInt(cfg, 'in_channels', where, 4),
    hiddenSize: cfgPositiveInt(cfg, 'hidden_size', where, 1152),
    depth: cfgPositiveInt(cfg, 'depth', where, 28),
    numHeads: cfgPositiveInt(cfg, 'num_heads', where, 16),
    mlpRatio: cfgNumber(cfg, 'mlp_ratio', where, 4),
    numClasses: cfgPositiveInt(cfg, 'num_classes', where, 1000),
    learnSigma: cfgBool(cfg, 'learn_sigma', where, true),
  };
  checkOfficialDiTConfig(c, where);
  return c;
}

/** What the official constructors assume; one error naming the field otherwise. */
export function checkOfficialDiTConfig(c: OfficialDiTConfig, where: string): void {
  const bad = (key: string, expected: string, found: unknown) => new InputError(`${where}: ${key}`, 'wrong value', expected, String(found));
  if (c.sampleSize % c.patchSize) throw bad('input_size', `a multiple of patch_size ${c.patchSize}`, c.sampleSize);
  if (c.hiddenSize % c.numHeads) throw bad('num_heads', `a divisor of hidden_size ${c.hiddenSize}`, c.numHeads);
  checkPositionTableWidth(c.hiddenSize, where, 'hidden_size');
  if (!(c.mlpRatio > 0 && Number.isInteger(c.hiddenSize * c.mlpRatio))) throw bad('mlp_ratio', 'a positive ratio giving a whole MLP width', c.mlpRatio);
  if (c.longSkips && c.depth % 2) throw bad('depth', 'even (DiT_skip pairs block j with block depth−1−j)', c.depth);
}

export class OfficialDiT {
  constructor(readonly config: OfficialDiTConfig) {}

  get outChannels(): number {
    return this.config.learnSigma ? 2 * this.config.inChannels : this.config.inChannels;
  }

  get declaration(): ModelDeclaration {
    const c = this.config;
    const half = c.depth / 2;
    return {
      kind: c.longSkips ? 'Skip-DiT' : 'DiT',
      transformerBlocks: Array.from({ length: c.depth }, (_, i) => ({ block: `blocks.${i}`, downsample: c.patchSize })),
      ...(c.longSkips ? { longSkips: { maxBranch: half - 1, describe: `${c.depth} blocks: ${half} long skips, block j to block ${c.depth - 1}−j` } } : {}),
    };
  }

  /**
   * One denoiser evaluation: sample [B, C, input_size, input_size], timestep [B] (float32), class
   * labels int64 [B] (`num_classes` is the null class) → [B, C or 2C, input_size, input_size].
   */
  async forward<T extends TensorLike>(exec: Executor<T>, sample: T, timestep: T, classLabels: T): Promise<T> {
    const c = this.config;
    const [batch, channels, height, width] = sample.dims;
    if (channels !== c.inChannels || height !== c.sampleSize || width !== c.sampleSize) {
      throw new InputError(`${c.longSkips ? 'Skip-DiT' : 'DiT'}: sample`, `this checkpoint's position table fixes the latent size at input_size ${c.sampleSize} (${c.sampleSize * 8}² pixels)`,
        `[B, ${c.inChannels}, ${c.sampleSize}, ${c.sampleSize}]`, `[${sample.dims.join(', ')}]`);
    }
    if (classLabels.dims.length !== 1 || classLabels.dims[0] !== batch || classLabels.type !== 'int64') {
      throw new InputError('DiT: classLabels', 'wrong tensor', `int64 [${batch}]`, `${classLabels.type} [${classLabels.dims.join(', ')}]`);
    }
    const dim = c.hiddenSize;
    const grid = c.sampleSize / c.patchSize;
    let tokens = (await exec.run('x_embedder', (g, i) => ({
      tokens: g.add(toTokens(g, g.conv2d(i.sample, 'x_embedder.proj', dim, c.patchSize, { stride: c.patchSize })), g.param('pos_embed', [1, grid * grid, dim])),
    }), { sample })).tokens;
    const { cond } = await exec.run('c_embedder', (g, i) => ({ cond: this.conditioning(g, i.timestep, i.class_labels) }), { timestep, class_labels: classLabels });

    const block = async (j: number, x: T) => {
      const name = `blocks.${j}`;
      const m = await exec.run(`${name}.adaLN_modulation`, (g, i) => g.scope(name, () => {
        const emb = g.linear(g.silu(i.cond), 'adaLN_modulation.1', 6 * dim);
        return Object.fromEntries(['shiftMsa', 'scaleMsa', 'gateMsa', 'shiftMlp', 'scaleMlp', 'gateMlp']
          .map((key, k) => [key, g.reshape(g.slice(emb, 1, k * dim, (k + 1) * dim), [emb.shape[0], 1, dim])]));
      }), { cond });
      const role = (layer: SegmentRole['layer']): SegmentRole => ({ block: name, layer, latentSize: [height, width] });
      const modulated = (g: GraphBuilder, h: Value, i: Record<string, Value>) => g.add(g.mul(g.layerNormPlain(h, 1e-6), g.add(i.scale, g.scalar(1))), i.shift);
      x = await sublayer(exec, name, 'attn', x, { shift: m.shiftMsa, scale: m.scaleMsa, gate: m.gateMsa }, { ...role('self-attention'), blockInput: 'tokens' },
        modulated, (g, h, _i, hooks) => {
          const part = (k: number) => () => g.linearRows(h, 'qkv', 3 * dim, k * dim, (k + 1) * dim);
          return g.linear(hooks.attend(g, { heads: c.numHeads, query: part(0), keys: part(1), values: part(2) }), 'proj', dim);
        });
      const inner = Math.round(dim * c.mlpRatio);
      return sublayer(exec, name, 'mlp', x, { shift: m.shiftMlp, scale: m.scaleMlp, gate: m.gateMlp }, role('feed-forward'),
        modulated, (g, h) => g.linear(g.geluTanh(g.linear(h, 'fc1', inner, false), g.param('fc1.bias', [inner])), 'fc2', dim));
    };

    if (c.longSkips) {
      const half = c.depth / 2;
      const skips = new LongSkips(exec, this.declaration.longSkips!, sample.dims.join(','));
      for (let j = 0; j < half; j++) tokens = await skips.down(tokens, (x) => block(j, x));
      for (let j = half; j < c.depth; j++) {
        tokens = await skips.up(tokens, async (x, skip) => {
          const fused = (await exec.run(`skip_linears.${j - half}`, (g, i) => ({
            x: g.linear(g.layerNorm(g.concat([i.x, i.skip], -1), `skip_norms.${j - half}`, 1e-6), `skip_linears.${j - half}.linear`, dim),
          }), { x, skip }, { role: { block: `blocks.${j}`, layer: 'skip-fusion', latentSize: [height, width], passThrough: { input: 'x', output: 'x' } } })).x;
          return block(j, fused);
        });
      }
    } else {
      for (let j = 0; j < c.depth; j++) tokens = await block(j, tokens);
    }

    return (await exec.run('final_layer', (g, i) => g.scope('final_layer', () => {
      const both = g.linear(g.silu(i.cond), 'adaLN_modulation.1', 2 * dim);
      const [shift, scale] = [0, 1].map((k) => g.reshape(g.slice(both, 1, k * dim, (k + 1) * dim), [both.shape[0], 1, dim]));
      const normed = g.add(g.mul(g.layerNormPlain(i.tokens, 1e-6), g.add(scale, g.scalar(1))), shift);
      const out = g.linear(normed, 'linear', c.patchSize * c.patchSize * this.outChannels);
      return { sample: unpatchify(g, out, grid, grid, c.patchSize, this.outChannels) };
    }), { tokens, cond })).sample;
  }

  /** TimestepEmbedder (256 frequencies, cos first, /half) through its MLP, plus the class embedding. */
  private conditioning(g: GraphBuilder, timestep: Value, labels: Value): Value {
    const c = this.config;
    const t = g.scope('t_embedder', () => g.linear(g.silu(g.linear(timestepEmbedding(g, timestep, 256, true, 0), 'mlp.0', c.hiddenSize)), 'mlp.2', c.hiddenSize));
    const y = g.gather(g.param('y_embedder.embedding_table.weight', [c.numClasses + 1, c.hiddenSize]), labels);
    return g.add(t, y);
  }

  forwardShapes(exec: Executor<ShapedTensor>, o: { batch: number; latentHeight: number; latentWidth: number }): Promise<ShapedTensor> {
    const c = this.config;
    return this.forward(exec, shaped([o.batch, c.inChannels, o.latentHeight, o.latentWidth]), shaped([o.batch]), shaped([o.batch], 'int64'));
  }
}
