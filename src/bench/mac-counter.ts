/** Whole-run denoiser (U-Net or transformer) MAC counts from a folder's or a preset's configs alone, for `bench`. */
import { InputError } from '../errors.ts';
import { createAccelerator, type AccelSpec } from '../accel/index.ts';
import { parseClipTextConfig } from '../models/clip-text.ts';
import { transformerFromConfig } from '../models/components.ts';
import { PRESETS, PRESET_NAMES, TRANSFORMER_PRESETS } from '../models/presets.ts';
import { UNet2DConditionModel, parseUNetConfig } from '../models/unet2d-condition.ts';
import { createScheduler, type SchedulerName } from '../schedulers/index.ts';
import { getComponent, readComponentConfig, readPipelineFolder } from '../weights/diffusers-folder.ts';
import { folderFamily } from '../pipelines/families.ts';
import { wholeRunMacs, type Denoiser, type RunMacs } from './run-macs.ts';
import type { ModelDeclaration } from '../runtime/protocol.ts';
import { own } from '../util/own.ts';

/** A denoiser config (a folder's or a preset's) ready for whole-run MAC counts at one image size. */
export interface MacCounter {
  width: number;
  height: number;
  /** Whether the CFG batch runs: guidance > 1 and a U-Net that is not guidance-distilled (LCM). */
  cfg: boolean;
  /** What the denoiser declares (its kind, blocks, long skips), for choosing methods that fit it. */
  declaration: ModelDeclaration;
  /** Model calls a run of `steps` makes with the folder's (or the chosen) scheduler. */
  calls(steps: number): number;
  count(steps: number, accel: AccelSpec[]): Promise<RunMacs>;
}

export interface MacCounterOptions {
  model?: string;
  preset?: string;
  size?: [number, number];
  scheduler?: SchedulerName;
  batch: number;
  guidance: number;
}

export function macCounter(o: MacCounterOptions): MacCounter {
  let model: Denoiser;
  let sampleSize: number;
  let textEmbedsDim: number | undefined;
  let tokens: number | undefined;
  let calls = (steps: number) => steps;
  // A preset has no scheduler: its calls' timesteps are unknown (methods acting on noise levels then use none).
  let timesteps = (_steps: number): readonly number[] | undefined => undefined;
  let factor = 8;
  let distilled = false;
  const useUNet = (config: Record<string, unknown>, where: string) => {
    const unet = new UNet2DConditionModel(parseUNetConfig(config, where));
    [model, sampleSize] = [unet, unet.config.sampleSize];
    distilled = unet.config.timeCondProjDim !== null;
  };
  const useTransformer = (className: string, config: Record<string, unknown>, where: string) => {
    const transformer = transformerFromConfig(className, config, where);
    [model, sampleSize] = [transformer, transformer.config.sampleSize];
  };
  if (o.preset !== undefined) {
    const preset = own(PRESETS, o.preset);
    const transformerPreset = own(TRANSFORMER_PRESETS, o.preset);
    if (preset) {
      useUNet(preset.unet, `preset ${o.preset}`);
      textEmbedsDim = preset.textEncoder2 && parseClipTextConfig(preset.textEncoder2, `preset ${o.preset}`).projectionDim;
    } else if (transformerPreset) {
      useTransformer(transformerPreset.transformerClass, transformerPreset.transformer, `preset ${o.preset}`);
      tokens = transformerPreset.maxSequenceLength;
      const schedulerConfig = transformerPreset.scheduler;
      if (schedulerConfig) {
        const scheduled = (steps: number) => createScheduler({ name: o.scheduler, config: schedulerConfig, configFile: `preset ${o.preset} scheduler`, steps }).timesteps;
        timesteps = scheduled;
        calls = (steps) => scheduled(steps).length;
      }
    } else {
      throw new InputError('--preset', 'unknown preset', PRESET_NAMES.join(', '), o.preset);
    }
  } else {
    const folder = readPipelineFolder(o.model!);
    folderFamily(folder); // counts only what a run could do: a class no pipeline here runs is refused
    if (folder.components.unet) {
      const { config, where } = readComponentConfig(folder, 'unet');
      useUNet(config, where);
    } else if (folder.components.transformer) {
      const { config, where } = readComponentConfig(folder, 'transformer');
      useTransformer(getComponent(folder, 'transformer').className, config, where);
      tokens = folder.className === 'PixArtSigmaPipeline' ? 300 : folder.className === 'PixArtAlphaPipeline' ? 120 : undefined;
    } else {
      throw new InputError(`${folder.dir}/model_index.json`, 'no denoiser to count', 'a unet or a transformer component');
    }
    if (folder.components.text_encoder_2) {
      const te2 = readComponentConfig(folder, 'text_encoder_2');
      textEmbedsDim = parseClipTextConfig(te2.config, te2.where).projectionDim;
    }
    if (folder.components.vae) {
      const vae = readComponentConfig(folder, 'vae');
      factor = 2 ** ((vae.config.block_out_channels as unknown[]).length - 1);
    }
    // The scheduler decides how many model calls a run makes (PNDM makes one more than steps).
    const scheduler = readComponentConfig(folder, 'scheduler');
    const className = getComponent(folder, 'scheduler').className;
    const scheduled = (steps: number) => createScheduler({ name: o.scheduler, className, config: scheduler.config, configFile: scheduler.where, steps }).timesteps;
    timesteps = scheduled;
    calls = (steps) => scheduled(steps).length;
  }
  const [width, height] = o.size ?? [sampleSize! * factor, sampleSize! * factor];
  if (width % factor || height % factor) throw new InputError('--size', `must be multiples of ${factor}`, undefined, `${width}x${height}`);
  const cfg = o.guidance > 1 && !distilled;
  return {
    width, height, calls, cfg, declaration: model!.declaration,
    count: (steps, accel) => wholeRunMacs(model, {
      calls: calls(steps), steps, batch: o.batch, latentHeight: height / factor, latentWidth: width / factor, cfg, textEmbedsDim, tokens, timesteps: timesteps(steps),
      accelerator: accel.length > 0 ? createAccelerator(accel, calls(steps)) : undefined,
    }),
  };
}
