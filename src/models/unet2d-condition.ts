/**
 * diffusers UNet2DConditionModel (SD 1.x / 2.x / SDXL), driven by its config.json. The forward pass
 * is written as calls to named segments whose names are diffusers module paths:
 * `down_blocks.1.resnets.0`, `down_blocks.1.attentions.0.transformer_blocks.0.attn2`, ...
 * SDXL's micro-conditioning (`addition_embed_type: "text_time"`) is the `add_embedding` segment.
 * An executor that plans a cut (DeepCache, src/accel/deepcache.ts) is asked once per pass.
 */
import { InputError } from '../errors.ts';
import type { GraphBuilder, Value } from '../graph/builder.ts';
import { attentionMapPlanner, branchPlanner, tokenMergePlanner } from '../accel/plan.ts';
import { matchTokens, mergeTokens, unmergeTokens } from '../accel/tome-merge.ts';
import type { Executor, TensorLike } from '../runtime/executor.ts';
import {
  cfgBool, cfgInt, cfgIntOrIntList, cfgNumber, cfgOneOf, cfgOptionalInt, cfgPositiveInt, cfgPositiveIntList, cfgStringList, checkDivisible, type Config,
} from '../weights/config.ts';
import { attentionFromMap, attentionWithKeys, attentionWithKeysAndMap, fromTokens, keysAndValues, valuesOf, gegluFeedForward, resnetBlock2D, timestepEmbedding, toTokens } from './layers.ts';

const DOWN_TYPES = ['CrossAttnDownBlock2D', 'DownBlock2D'] as const;
const UP_TYPES = ['CrossAttnUpBlock2D', 'UpBlock2D'] as const;

export interface UNet2DConditionConfig {
  sampleSize: number;
  inChannels: number;
  outChannels: number;
  blockOutChannels: number[];
  downBlockTypes: (typeof DOWN_TYPES)[number][];
  upBlockTypes: (typeof UP_TYPES)[number][];
  hasMidBlock: boolean;
  layersPerBlock: number[];
  crossAttentionDim: number[];
  /** Heads per down block (diffusers' attention_head_dim, which counts heads for SD). */
  attentionHeads: number[];
  transformerLayersPerBlock: number[];
  normNumGroups: number;
  normEps: number;
  useLinearProjection: boolean;
  upcastAttention: boolean;
  flipSinToCos: boolean;
  freqShift: number;
  downsamplePadding: number;
  midBlockScaleFactor: number;
  convInKernel: number;
  convOutKernel: number;
  /**
   * SDXL's `addition_embed_type: "text_time"`: sinusoidal embeddings (width `timeEmbedDim`) of the
   * time ids, concatenated after the pooled text embeddings, through `add_embedding` (a
   * TimestepEmbedding with `inputDim` inputs) and added to the time embedding. null = none.
   */
  addition: { type: 'text_time'; timeEmbedDim: number; inputDim: number } | null;
}

/** SDXL's extra conditioning for the U-Net: diffusers' `added_cond_kwargs`. */
/** Precomputed cross-attention keys and values by attn2 module path (see crossAttentionKV). */
export type CrossAttentionKV<T> = Map<string, { k: T; v: T }>;

export interface AddedConditioning<T> {
  /** Pooled, projected text embeddings of text_encoder_2: float32 [B, P]. */
  textEmbeds: T;
  /** Micro-conditioning ids, e.g. (original h, w, crop top, left, target h, w): float32 [B, K]. */
  timeIds: T;
}

/** Reads and validates a UNet2DConditionModel config.json; unsupported options are refused by name. */
export function parseUNetConfig(cfg: Config, where: string): UNet2DConditionConfig {
  const blockOutChannels = cfgPositiveIntList(cfg, 'block_out_channels', where, [320, 640, 1280, 1280]);
  const n = blockOutChannels.length;
  const downBlockTypes = cfgStringList(cfg, 'down_block_types', where);
  const upBlockTypes = cfgStringList(cfg, 'up_block_types', where);
  const checkTypes = (key: string, types: string[], allowed: readonly string[]): void => {
    if (types.length !== n) throw new InputError(`${where}: ${key}`, 'wrong number of blocks', `${n} (one per block_out_channels entry)`, `${types.length}`);
    for (const t of types) if (!allowed.includes(t)) throw new InputError(`${where}: ${key}`, 'unsupported block type', allowed.join(' or '), t);
  };
  checkTypes('down_block_types', downBlockTypes, DOWN_TYPES);
  checkTypes('up_block_types', upBlockTypes, UP_TYPES);
  const midBlockType = cfg.mid_block_type ?? 'UNetMidBlock2DCrossAttn';
  if (midBlockType !== null && midBlockType !== 'UNetMidBlock2DCrossAttn') {
    throw new InputError(`${where}: mid_block_type`, 'unsupported mid block', 'UNetMidBlock2DCrossAttn or null', String(midBlockType));
  }
  const refuse = (key: string, allowed: unknown[], expected: string): void => {
    const v = cfg[key];
    if (v !== undefined && !allowed.includes(v)) throw new InputError(`${where}: ${key}`, 'unsupported option', expected, JSON.stringify(v));
  };
  refuse('num_attention_heads', [null], 'null (diffusers counts heads in attention_head_dim for this model)');
  refuse('class_embed_type', [null], 'null');
  refuse('addition_embed_type', [null, 'text_time'], 'null or "text_time"');
  refuse('time_embedding_type', ['positional'], '"positional"');
  refuse('resnet_time_scale_shift', ['default'], '"default"');
  refuse('only_cross_attention', [false], 'false');
  refuse('dual_cross_attention', [false], 'false');
  refuse('center_input_sample', [false], 'false');
  refuse('encoder_hid_dim', [null], 'null');
  refuse('time_cond_proj_dim', [null], 'null');
  refuse('timestep_post_act', [null], 'null');
  refuse('class_embeddings_concat', [false], 'false');
  refuse('attention_type', ['default'], '"default"');
  refuse('time_embedding_dim', [null], 'null');
  refuse('time_embedding_act_fn', [null], 'null');
  refuse('resnet_skip_time_act', [false], 'false');
  refuse('resnet_out_scale_factor', [1], '1.0');
  refuse('cross_attention_norm', [null], 'null');
  refuse('mid_block_only_cross_attention', [null, false], 'null or false');
  refuse('num_class_embeds', [null], 'null');
  refuse('encoder_hid_dim_type', [null], 'null');
  refuse('reverse_transformer_layers_per_block', [null], 'null');
  cfgOneOf(cfg, 'act_fn', where, ['silu'], 'silu');
  const convInKernel = cfgOddKernel(cfg, 'conv_in_kernel', where);
  const convOutKernel = cfgOddKernel(cfg, 'conv_out_kernel', where);
  const normNumGroups = cfgPositiveInt(cfg, 'norm_num_groups', where, 32);
  checkDivisible(where, 'norm_num_groups', normNumGroups, blockOutChannels, 'block_out_channels');
  const attentionHeads = cfgIntOrIntList(cfg, 'attention_head_dim', where, n, 8);
  blockOutChannels.forEach((channels, b) => {
    if (channels % attentionHeads[b]) {
      throw new InputError(`${where}: attention_head_dim`, `block ${b} has ${channels} channels, not divisible into ${attentionHeads[b]} heads`,
        `a head count dividing block_out_channels[${b}]`, `${attentionHeads[b]}`);
    }
  });
  let addition: UNet2DConditionConfig['addition'] = null;
  if (cfg.addition_embed_type === 'text_time') {
    const timeEmbedDim = cfgPositiveInt(cfg, 'addition_time_embed_dim', where);
    if (timeEmbedDim % 2) {
      throw new InputError(`${where}: addition_time_embed_dim`, 'unsupported option', 'an even width', `${timeEmbedDim}`);
    }
    addition = { type: 'text_time', timeEmbedDim, inputDim: cfgPositiveInt(cfg, 'projection_class_embeddings_input_dim', where) };
  }
  return {
    sampleSize: cfgOptionalInt(cfg, 'sample_size', where) ?? 64,
    inChannels: cfgPositiveInt(cfg, 'in_channels', where, 4),
    outChannels: cfgPositiveInt(cfg, 'out_channels', where, 4),
    blockOutChannels,
    downBlockTypes: downBlockTypes as UNet2DConditionConfig['downBlockTypes'],
    upBlockTypes: upBlockTypes as UNet2DConditionConfig['upBlockTypes'],
    hasMidBlock: midBlockType !== null,
    layersPerBlock: cfgIntOrIntList(cfg, 'layers_per_block', where, n, 2),
    crossAttentionDim: cfgIntOrIntList(cfg, 'cross_attention_dim', where, n, 1280),
    attentionHeads,
    transformerLayersPerBlock: cfgIntOrIntList(cfg, 'transformer_layers_per_block', where, n, 1),
    normNumGroups,
    normEps: cfgNumber(cfg, 'norm_eps', where, 1e-5),
    useLinearProjection: cfgBool(cfg, 'use_linear_projection', where, false),
    upcastAttention: cfgBool(cfg, 'upcast_attention', where, false),
    flipSinToCos: cfgBool(cfg, 'flip_sin_to_cos', where, true),
    freqShift: cfgNumber(cfg, 'freq_shift', where, 0),
    downsamplePadding: cfgInt(cfg, 'downsample_padding', where, 1),
    midBlockScaleFactor: cfgNumber(cfg, 'mid_block_scale_factor', where, 1),
    convInKernel,
    convOutKernel,
    addition,
  };
}

/** Kernel sizes must be odd so that "same" padding exists. */
function cfgOddKernel(cfg: Config, key: string, where: string): number {
  const k = cfgPositiveInt(cfg, key, where, 3);
  if (k % 2 === 0) throw new InputError(`${where}: ${key}`, 'wrong value', 'an odd kernel size', `${k}`);
  return k;
}

export class UNet2DConditionModel {
  readonly timeEmbedDim: number;

  constructor(readonly config: UNet2DConditionConfig) {
    this.timeEmbedDim = config.blockOutChannels[0] * 4;
  }

  /**
   * Outputs of the down path after conv_in: one per resnet(+attention) layer and one per
   * downsampler. DeepCache's branches are 0 ... branchOutputs (the last cuts out the mid block alone).
   */
  get branchOutputs(): number {
    const c = this.config;
    return c.layersPerBlock.reduce((a, b) => a + b, 0) + c.blockOutChannels.length - 1;
  }

  /** The deepest DeepCache branch this U-Net has: a cut below it would skip nothing. */
  get maxBranch(): number {
    return this.config.hasMidBlock ? this.branchOutputs : this.branchOutputs - 1;
  }

  private checkBranch(branch: number): void {
    if (!Number.isInteger(branch) || branch < 0 || branch > this.maxBranch) {
      const c = this.config;
      throw new InputError('--accel deepcache:cache_branch_id', `beyond this U-Net's depth (${c.blockOutChannels.length} down blocks of ` +
        `${c.layersPerBlock.join('/')} layers: ${this.branchOutputs} down-path outputs${c.hasMidBlock ? '' : ', no mid block'})`,
        `0 to ${this.maxBranch}`, `${branch}`);
    }
  }

  /** Total spatial downsampling of the down path. */
  get downsampleFactor(): number {
    return 2 ** (this.config.blockOutChannels.length - 1);
  }

  /**
   * Shapes of the `added` conditioning a forward pass takes at batch `batch`, or null when the
   * config has none. SDXL base has 6 time ids; `textEmbedsDim` (text_encoder_2's projection_dim)
   * decides the count where known (the SDXL refiner has 5), else 6 is assumed.
   */
  addedConditioningShapes(batch: number, textEmbedsDim?: number): { textEmbeds: number[]; timeIds: number[] } | null {
    const a = this.config.addition;
    if (!a) return null;
    const timeIds = textEmbedsDim === undefined ? 6 : (a.inputDim - textEmbedsDim) / a.timeEmbedDim;
    const width = textEmbedsDim ?? a.inputDim - 6 * a.timeEmbedDim;
    if (!Number.isInteger(timeIds) || timeIds <= 0 || width <= 0) {
      throw new InputError('unet config: projection_class_embeddings_input_dim',
        `does not split into text embeddings${textEmbedsDim === undefined ? '' : ` of width ${textEmbedsDim}`} plus time ids of width ${a.timeEmbedDim}`,
        textEmbedsDim === undefined ? `more than 6 × ${a.timeEmbedDim}` : `${textEmbedsDim} + K × ${a.timeEmbedDim}`, `${a.inputDim}`);
    }
    return { textEmbeds: [batch, width], timeIds: [batch, timeIds] };
  }

  /** Checks `added` against the config and the batch: present exactly when the config asks for it. */
  private checkAdded<T extends TensorLike>(batch: number, added: AddedConditioning<T> | undefined): void {
    const a = this.config.addition;
    const where = 'UNet2DConditionModel.forward: added';
    if (!a) {
      if (added !== undefined) {
        throw new InputError(where, 'this U-Net takes no added conditioning (config addition_embed_type is null)', 'undefined',
          'textEmbeds/timeIds');
      }
      return;
    }
    if (added === undefined || added.textEmbeds === undefined || added.timeIds === undefined) {
      throw new InputError(where, 'missing conditioning: config addition_embed_type "text_time" (SDXL) needs the pooled text ' +
        'embeddings and the time ids', '{ textEmbeds: [B, P], timeIds: [B, K] }', added === undefined ? 'undefined' : 'an incomplete object');
    }
    const { textEmbeds, timeIds } = added;
    for (const [name, t] of [['textEmbeds', textEmbeds], ['timeIds', timeIds]] as const) {
      if (t.dims.length !== 2 || t.dims[0] !== batch || t.type !== 'float32') {
        throw new InputError(`${where}.${name}`, 'wrong tensor', `float32 [${batch}, N] (batch of the sample)`, `${t.type} [${t.dims.join(', ')}]`);
      }
    }
    const width = textEmbeds.dims[1] + timeIds.dims[1] * a.timeEmbedDim;
    if (width !== a.inputDim) {
      throw new InputError(where, `textEmbeds width ${textEmbeds.dims[1]} + ${timeIds.dims[1]} time ids × addition_time_embed_dim ` +
        `${a.timeEmbedDim} = ${width} does not match projection_class_embeddings_input_dim`, `${a.inputDim}`, `${width}`);
    }
  }

  /**
   * Every cross-attention module (attn2) in forward order, with its width, head count and level
   * (the resolution it runs at is the latent's divided by 2^level).
   */
  crossAttentionLayers(): { path: string; channels: number; heads: number; level: number }[] {
    const c = this.config;
    const n = c.blockOutChannels.length;
    const layers: { path: string; channels: number; heads: number; level: number }[] = [];
    const add = (attention: string, b: number) => {
      for (let k = 0; k < c.transformerLayersPerBlock[b]; k++) {
        layers.push({ path: `${attention}.transformer_blocks.${k}.attn2`, channels: c.blockOutChannels[b], heads: c.attentionHeads[b], level: b });
      }
    };
    for (let b = 0; b < n; b++) {
      if (c.downBlockTypes[b] === 'CrossAttnDownBlock2D') for (let j = 0; j < c.layersPerBlock[b]; j++) add(`down_blocks.${b}.attentions.${j}`, b);
    }
    if (c.hasMidBlock) add('mid_block.attentions.0', n - 1);
    for (let u = 0; u < n; u++) {
      const b = n - 1 - u;
      if (c.upBlockTypes[u] === 'CrossAttnUpBlock2D') for (let j = 0; j <= c.layersPerBlock[b]; j++) add(`up_blocks.${u}.attentions.${j}`, b);
    }
    return layers;
  }

  /**
   * The keys and values of every cross-attention for a prompt batch: they depend on the prompt
   * alone, so a pipeline computes them once (segment `cross_attention_kv`) instead of every call.
   */
  async crossAttentionKV<T extends TensorLike>(exec: Executor<T>, encoderHiddenStates: T): Promise<CrossAttentionKV<T>> {
    const layers = this.crossAttentionLayers();
    const out = await exec.run('cross_attention_kv', (g, i) => {
      const result: Record<string, Value> = {};
      for (const l of layers) {
        const { k, v } = g.scope(l.path, () => keysAndValues(g, i.context, { heads: l.heads, innerDim: l.channels, qkvBias: false }));
        result[`${l.path}.k`] = k;
        result[`${l.path}.v`] = v;
      }
      return result;
    }, { context: encoderHiddenStates });
    return new Map(layers.map((l) => [l.path, { k: out[`${l.path}.k`], v: out[`${l.path}.v`] }]));
  }

  /**
   * One denoiser evaluation: sample [B, C, h, w], timestep [B] (float32), encoder hidden states
   * [B, 77, D] → noise (or v) prediction [B, C, h, w]. `added` (SDXL: pooled text embeddings and
   * time ids) is required when the config's addition_embed_type is "text_time", refused otherwise.
   */
  async forward<T extends TensorLike>(exec: Executor<T>, sample: T, timestep: T, encoderHiddenStates: T,
    added?: AddedConditioning<T>, crossKV?: CrossAttentionKV<T>): Promise<T> {
    const c = this.config;
    this.checkAdded(sample.dims[0], added);
    const n = c.blockOutChannels.length;
    // DeepCache: a planning executor may cut this pass at a branch (see branchOutputs). On a
    // shallow pass the down path stops after `cut` outputs, the mid block and the up layers fed
    // by deeper skips are skipped, and the up path resumes from the cached feature; a full pass
    // stores the feature entering the up layer that consumes skip `cut`.
    const pass = branchPlanner(exec)?.branchPass(sample.dims.join(','));
    if (pass) this.checkBranch(pass.branch);
    const cut = pass?.branch ?? Infinity;
    const shallow = pass?.reuse !== undefined;
    const resnet = (name: string, outChannels: number, eps: number, scale = 1) =>
      (g: GraphBuilder, i: Record<string, Value>) => {
        const x = i.skip ? g.concat([i.x, i.skip], 1) : i.x;
        return { x: g.scope(name, () => resnetBlock2D(g, x, i.temb, outChannels, { groups: c.normNumGroups, eps, tembChannels: this.timeEmbedDim, outputScaleFactor: scale })) };
      };
    const transformer = async (path: string, x: T, heads: number, layers: number): Promise<T> => {
      let tokens = (await exec.run(`${path}.proj_in`, (g, i) => ({ tokens: g.scope(path, () => this.projIn(g, i.x)) }), { x })).tokens;
      for (let k = 0; k < layers; k++) {
        const block = `${path}.transformer_blocks.${k}`;
        // ToMe: a planner may merge this block's tokens around attn1 / attn2 / ff. The matching is
        // computed once from the block's input (segment tome_match) and fed to the merged variants.
        const merge = tokenMergePlanner(exec)?.tokenMerge({
          block, tokens: tokens.dims[1], batch: tokens.dims[0], latentHeight: sample.dims[2], latentWidth: sample.dims[3],
        });
        let matching: Record<string, T> = {};
        if (merge) {
          matching = await exec.run(`${block}.tome_match`, (g, i) => ({ ...matchTokens(g, i.tokens, i.src, i.dst, merge.r) }),
            { tokens, src: merge.src, dst: merge.dst }, { unbatched: ['src', 'dst'], variant: `r${merge.r}` });
          matching = { ...matching, src: merge.src, dst: merge.dst };
        }
        const merged = (on: boolean | undefined) => (on ? { inputs: matching, options: { unbatched: ['src', 'dst'], variant: 'tome' } } : { inputs: {}, options: {} });
        // Runs `core` on the normalised tokens, merged and unmerged around it when asked.
        const around = (g: GraphBuilder, i: Record<string, Value>, on: boolean | undefined, h: Value, core: (h: Value) => Value): Value => {
          if (!on) return core(h);
          const m = { unmerged: i.unmerged, merged: i.merged, into: i.into };
          return unmergeTokens(g, core(mergeTokens(g, h, i.src, i.dst, m)), i.src, i.dst, m);
        };
        // The attention output (after to_out, before the residual) is a second output that
        // accelerators may cache; plain runs only produce `tokens`. With attention-map reuse a
        // segment also emits its post-softmax map, or runs on a stored one (no to_q, to_k, softmax).
        const options = (h: Value) => ({ heads, innerDim: h.shape[2], qkvBias: false });
        const residual = { value: 'attn', residual: 'tokens', result: 'tokens' };
        type Source = (g: GraphBuilder, h: Value, i: Record<string, Value>) => Value;
        // `keys` gives (or computes) both keys and values, `values` the values alone.
        const runAttention = async (sub: 'attn1' | 'attn2', norm: string, on: boolean | undefined, inputs: Record<string, T>,
          keys: (g: GraphBuilder, h: Value, i: Record<string, Value>) => { k: Value; v: Value }, values: Source): Promise<T> => {
          const segment = `${block}.${sub}`;
          const block_ = (core: (g: GraphBuilder, h: Value, i: Record<string, Value>) => Record<string, Value> & { out: Value }) =>
            (g: GraphBuilder, i: Record<string, Value>) =>
              g.scope(block, () => {
                const h = g.layerNorm(i.tokens, norm, 1e-5);
                let extra: Record<string, Value> = {};
                const attn = around(g, i, on, h, (x) => g.scope(sub, () => {
                  const { out, ...rest } = core(g, x, i);
                  extra = rest;
                  return out;
                }));
                return { tokens: g.add(attn, i.tokens), attn, ...extra };
              });
          const pass = on ? undefined : attentionMapPlanner(exec)?.attentionMap(segment, tokens.dims.join(','));
          if (pass?.reuse) {
            return (await exec.run(segment, block_((g, h, i) => ({ out: attentionFromMap(g, i.map, values(g, h, i), h.shape[2]) })),
              { tokens, ...inputs, map: pass.reuse }, { residual, variant: 'map-reuse' })).tokens;
          }
          if (pass?.store) {
            const out = await exec.run(segment, block_((g, h, i) => {
              const { k, v } = keys(g, h, i);
              return attentionWithKeysAndMap(g, h, k, v, options(h), pass.type);
            }), { tokens, ...inputs }, { residual, variant: `map-${pass.type}`, outputs: ['tokens', 'map'] });
            if (out.map) pass.store(out.map); // absent when another method answered the segment from its cache
            return out.tokens;
          }
          const m = merged(on);
          return (await exec.run(segment, block_((g, h, i) => {
            const { k, v } = keys(g, h, i);
            return { out: attentionWithKeys(g, h, k, v, options(h)) };
          }), { tokens, ...inputs, ...m.inputs }, { residual, ...m.options })).tokens;
        };
        tokens = await runAttention('attn1', 'norm1', merge?.attn, {}, (g, h) => keysAndValues(g, h, options(h)), (g, h) => valuesOf(g, h, options(h)));
        const kv = crossKV?.get(`${block}.attn2`);
        tokens = kv
          ? await runAttention('attn2', 'norm2', merge?.cross, { k: kv.k, v: kv.v }, (_g, _h, i) => ({ k: i.k, v: i.v }), (_g, _h, i) => i.v)
          : await runAttention('attn2', 'norm2', merge?.cross, { context: encoderHiddenStates },
            (g, h, i) => keysAndValues(g, i.context, options(h)), (g, h, i) => valuesOf(g, i.context, options(h)));
        const mlp = merged(merge?.mlp);
        tokens = (await exec.run(`${block}.ff`, (g, i) => ({
          tokens: g.scope(block, () => {
            const h = g.layerNorm(i.tokens, 'norm3', 1e-5);
            return g.add(around(g, i, merge?.mlp, h, (x) => g.scope('ff', () => gegluFeedForward(g, x))), i.tokens);
          }),
        }), { tokens, ...mlp.inputs }, mlp.options)).tokens;
      }
      return (await exec.run(`${path}.proj_out`, (g, i) => ({ x: g.scope(path, () => this.projOut(g, i.tokens, i.x)) }), { tokens, x })).x;
    };

    const inPad = (c.convInKernel - 1) / 2;
    let x = (await exec.run('conv_in', (g, i) => ({ x: g.conv2d(i.sample, 'conv_in', c.blockOutChannels[0], c.convInKernel, { padding: inPad }) }), { sample })).x;
    // TimestepEmbedding: linear_1, SiLU, linear_2 (time_embedding and add_embedding alike).
    const mlp = (g: GraphBuilder, input: Value) => g.linear(g.silu(g.linear(input, 'linear_1', this.timeEmbedDim)), 'linear_2', this.timeEmbedDim);
    let temb = (await exec.run('time_embedding', (g, i) => {
      const proj = timestepEmbedding(g, i.timestep, c.blockOutChannels[0], c.flipSinToCos, c.freqShift);
      return { temb: g.scope('time_embedding', () => mlp(g, proj)) };
    }, { timestep })).temb;
    const addition = c.addition;
    if (addition && added) {
      // add_time_proj (no parameters) over the flattened ids, [text_embeds, time embeds] → add_embedding, summed into temb.
      temb = (await exec.run('add_embedding', (g, i) => {
        const [batch, count] = i.time_ids.shape;
        const flat = g.reshape(i.time_ids, [batch * count]);
        const proj = g.reshape(timestepEmbedding(g, flat, addition.timeEmbedDim, c.flipSinToCos, c.freqShift), [batch, count * addition.timeEmbedDim]);
        const aug = g.scope('add_embedding', () => mlp(g, g.concat([i.text_embeds, proj], -1)));
        return { temb: g.add(i.temb, aug) };
      }, { temb, text_embeds: added.textEmbeds, time_ids: added.timeIds })).temb;
    }

    const skips: T[] = [x];
    const done = () => shallow && skips.length > cut;
    down: for (let b = 0; b < n; b++) {
      const channels = c.blockOutChannels[b];
      for (let j = 0; j < c.layersPerBlock[b]; j++) {
        if (done()) break down;
        const name = `down_blocks.${b}.resnets.${j}`;
        x = (await exec.run(name, resnet(name, channels, c.normEps), { x, temb })).x;
        if (c.downBlockTypes[b] === 'CrossAttnDownBlock2D') {
          x = await transformer(`down_blocks.${b}.attentions.${j}`, x, c.attentionHeads[b], c.transformerLayersPerBlock[b]);
        }
        skips.push(x);
      }
      if (b < n - 1) {
        if (done()) break down;
        const name = `down_blocks.${b}.downsamplers.0`;
        x = (await exec.run(name, (g, i) => ({
          x: g.scope(name, () => g.conv2d(i.x, 'conv', channels, 3, { stride: 2, padding: c.downsamplePadding })),
        }), { x })).x;
        skips.push(x);
      }
    }

    if (c.hasMidBlock && !shallow) {
      const last = c.blockOutChannels[n - 1];
      x = (await exec.run('mid_block.resnets.0', resnet('mid_block.resnets.0', last, c.normEps, c.midBlockScaleFactor), { x, temb })).x;
      x = await transformer('mid_block.attentions.0', x, c.attentionHeads[n - 1], c.transformerLayersPerBlock[n - 1]);
      x = (await exec.run('mid_block.resnets.1', resnet('mid_block.resnets.1', last, c.normEps, c.midBlockScaleFactor), { x, temb })).x;
    }
    if (pass?.reuse !== undefined) x = pass.reuse;

    // Up resnets consume the skips deepest first; `next` is the index of the next one. diffusers
    // forwards explicit upsample sizes when the latent is not a multiple of the total
    // downsampling; taking the skip's size covers both cases.
    let next = this.branchOutputs;
    for (let u = 0; u < n; u++) {
      const b = n - 1 - u;
      const channels = c.blockOutChannels[b];
      for (let j = 0; j < c.layersPerBlock[b] + 1; j++) {
        const index = next--;
        if (index > cut) {
          if (shallow) continue;
        } else if (index === cut && !shallow) {
          pass!.store(x);
        }
        const name = `up_blocks.${u}.resnets.${j}`;
        x = (await exec.run(name, resnet(name, channels, c.normEps), { x, skip: skips[index], temb })).x;
        if (c.upBlockTypes[u] === 'CrossAttnUpBlock2D') {
          x = await transformer(`up_blocks.${u}.attentions.${j}`, x, c.attentionHeads[b], c.transformerLayersPerBlock[b]);
        }
      }
      // The upsampler follows the block's last resnet, which consumed skip next + 1.
      if (u < n - 1 && !(shallow && next + 1 > cut)) {
        const name = `up_blocks.${u}.upsamplers.0`;
        const [height, width] = skips[next].dims.slice(2);
        x = (await exec.run(name, (g, i) => ({
          x: g.scope(name, () => g.conv2d(g.resizeNearest(i.x, height, width), 'conv', channels, 3, { padding: 1 })),
        }), { x })).x;
      }
    }

    const outPad = (c.convOutKernel - 1) / 2;
    return (await exec.run('conv_out', (g, i) => {
      const h = g.silu(g.groupNorm(i.x, 'conv_norm_out', c.normNumGroups, c.normEps));
      return { sample: g.conv2d(h, 'conv_out', c.outChannels, c.convOutKernel, { padding: outPad }) };
    }, { x })).sample;
  }

  /** Transformer2DModel input: GroupNorm, proj_in (1×1 conv or Linear), to tokens. */
  private projIn(g: GraphBuilder, x: Value): Value {
    const channels = x.shape[1];
    const h = g.groupNorm(x, 'norm', this.config.normNumGroups, 1e-6);
    if (this.config.useLinearProjection) return g.linear(toTokens(g, h), 'proj_in', channels);
    return toTokens(g, g.conv2d(h, 'proj_in', channels, 1));
  }

  /** Transformer2DModel output: proj_out back to NCHW plus the block's input. */
  private projOut(g: GraphBuilder, tokens: Value, residual: Value): Value {
    const [, channels, height, width] = residual.shape;
    const out = this.config.useLinearProjection
      ? fromTokens(g, g.linear(tokens, 'proj_out', channels), height, width)
      : g.conv2d(fromTokens(g, tokens, height, width), 'proj_out', channels, 1);
    return g.add(out, residual);
  }
}
