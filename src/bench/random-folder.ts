/**
 * Writes a diffusers pipeline folder with seeded random weights for a built-in preset, so that
 * benchmarks run the real architecture at real size without downloading a checkpoint.
 * Weights are stored as F16 (half the disk) and computed in float32 after loading.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ParamSource } from '../graph/builder.ts';
import { AutoencoderKL, parseAutoencoderKLConfig } from '../models/autoencoder-kl.ts';
import { ClipTextModel, parseClipTextConfig } from '../models/clip-text.ts';
import { PRESETS } from '../models/presets.ts';
import { UNet2DConditionModel, parseUNetConfig } from '../models/unet2d-condition.ts';
import { DryExecutor } from '../runtime/dry-executor.ts';
import { shaped } from '../runtime/executor.ts';
import { Rng } from '../util/rng.ts';
import { float32ToFloat16, writeSafetensors, type TensorToWrite } from '../weights/safetensors.ts';

/** Records every parameter a forward pass asks for. */
function recordingParams(): { source: ParamSource; shapes: Map<string, number[]> } {
  const shapes = new Map<string, number[]>();
  return { shapes, source: { param: (name, shape) => (shapes.set(name, shape), { name, shape, dtype: 'F32' }) } };
}

/** PyTorch-like init scale: U(-1/√fan_in, 1/√fan_in) for weights, norms at 1, biases small. */
function randomTensor(name: string, shape: number[], rng: Rng): TensorToWrite {
  const size = shape.reduce((a, b) => a * b, 1);
  const values = new Float32Array(size);
  const isNorm = /norm/.test(name) && name.endsWith('.weight');
  if (isNorm) values.fill(1);
  else {
    const fanIn = shape.length > 1 ? size / shape[0] : shape[0];
    const bound = (name.endsWith('.bias') ? 0.1 : 1) / Math.sqrt(fanIn);
    for (let i = 0; i < size; i++) values[i] = (rng.uniform() * 2 - 1) * bound;
  }
  return { dtype: 'F16', shape, data: float32ToFloat16(values) };
}

export type ComponentName = 'unet' | 'vae' | 'text_encoder';

const CLASS: Record<ComponentName, [string, string, string]> = {
  unet: ['diffusers', 'UNet2DConditionModel', 'diffusion_pytorch_model.safetensors'],
  vae: ['diffusers', 'AutoencoderKL', 'diffusion_pytorch_model.safetensors'],
  text_encoder: ['transformers', 'CLIPTextModel', 'model.safetensors'],
};

/** Creates (once) `dir` holding the chosen components of `preset` with seeded random weights. */
export async function ensureRandomPipelineFolder(dir: string, presetName: string, components: ComponentName[], seed = 0): Promise<string> {
  const preset = PRESETS[presetName];
  if (!preset) throw new Error(`unknown preset ${presetName}`);
  const index: Record<string, unknown> = { _class_name: 'StableDiffusionPipeline', _diffusers_version: '0.40.0' };
  for (const component of components) {
    const [library, className, file] = CLASS[component];
    index[component] = [library, className];
    const componentDir = path.join(dir, component);
    const weightsFile = path.join(componentDir, file);
    if (fs.existsSync(weightsFile)) continue;
    const { source, shapes } = recordingParams();
    const exec = new DryExecutor(source);
    const config = component === 'unet' ? preset.unet : component === 'vae' ? preset.vae : preset.textEncoder;
    if (component === 'unet') {
      const unet = new UNet2DConditionModel(parseUNetConfig(config, presetName));
      const te2 = preset.textEncoder2 && parseClipTextConfig(preset.textEncoder2, presetName);
      const addedShapes = unet.addedConditioningShapes(1, te2 ? te2.projectionDim : undefined);
      const added = addedShapes ? { textEmbeds: shaped(addedShapes.textEmbeds), timeIds: shaped(addedShapes.timeIds) } : undefined;
      await unet.forward(exec, shaped([1, 4, 64, 64]), shaped([1]), shaped([1, 77, unet.config.crossAttentionDim[0]]), added);
    } else if (component === 'vae') {
      const vae = new AutoencoderKL(parseAutoencoderKLConfig(config, presetName));
      await vae.encode(exec, shaped([1, 3, 64, 64]));
      await vae.decode(exec, shaped([1, 4, 8, 8]));
    } else {
      await new ClipTextModel(parseClipTextConfig(config, presetName)).forward(exec, shaped([1, 77], 'int64'));
    }
    const rng = new Rng(seed);
    const tensors: Record<string, TensorToWrite> = {};
    for (const [name, shape] of shapes) tensors[name] = randomTensor(name, shape, rng);
    fs.mkdirSync(componentDir, { recursive: true });
    const configJson = { _class_name: className, ...config };
    fs.writeFileSync(path.join(componentDir, 'config.json'), JSON.stringify(configJson, null, 2));
    writeSafetensors(weightsFile, tensors);
  }
  fs.writeFileSync(path.join(dir, 'model_index.json'), JSON.stringify(index, null, 2));
  return dir;
}
