/** Whole-run U-Net MAC counts from a folder's or a preset's configs alone, for `bench`. */
import { InputError } from '../errors.ts';
import { createAccelerator, type AccelSpec } from '../accel/index.ts';
import { parseClipTextConfig } from '../models/clip-text.ts';
import { PRESETS } from '../models/presets.ts';
import { UNet2DConditionModel, parseUNetConfig } from '../models/unet2d-condition.ts';
import { createScheduler, type SchedulerName } from '../schedulers/index.ts';
import { getComponent, readComponentConfig, readPipelineFolder } from '../weights/diffusers-folder.ts';
import { wholeRunMacs, type RunMacs } from './run-macs.ts';

/** A U-Net config (a folder's or a preset's) ready for whole-run MAC counts at one image size. */
export interface MacCounter {
  width: number;
  height: number;
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
  let unet: UNet2DConditionModel;
  let textEmbedsDim: number | undefined;
  let calls = (steps: number) => steps;
  let factor = 8;
  if (o.preset !== undefined) {
    const preset = PRESETS[o.preset];
    if (!preset) throw new InputError('--preset', 'unknown preset', Object.keys(PRESETS).join(', '), o.preset);
    unet = new UNet2DConditionModel(parseUNetConfig(preset.unet, `preset ${o.preset}`));
    textEmbedsDim = preset.textEncoder2 && parseClipTextConfig(preset.textEncoder2, `preset ${o.preset}`).projectionDim;
  } else {
    const folder = readPipelineFolder(o.model!);
    const { config, where } = readComponentConfig(folder, 'unet');
    unet = new UNet2DConditionModel(parseUNetConfig(config, where));
    if (folder.components.text_encoder_2) {
      const te2 = readComponentConfig(folder, 'text_encoder_2');
      textEmbedsDim = parseClipTextConfig(te2.config, te2.where).projectionDim;
    }
    if (folder.components.vae) {
      const vae = readComponentConfig(folder, 'vae');
      factor = 2 ** ((vae.config.block_out_channels as unknown[]).length - 1);
    }
    // The scheduler decides how many U-Net calls a run makes (PNDM makes one more than steps).
    const scheduler = readComponentConfig(folder, 'scheduler');
    const className = getComponent(folder, 'scheduler').className;
    calls = (steps) => createScheduler({ name: o.scheduler, className, config: scheduler.config, configFile: scheduler.where, steps }).timesteps.length;
  }
  const [width, height] = o.size ?? [unet.config.sampleSize * factor, unet.config.sampleSize * factor];
  if (width % factor || height % factor) throw new InputError('--size', `must be multiples of ${factor}`, undefined, `${width}x${height}`);
  return {
    width, height, calls,
    count: (steps, accel) => wholeRunMacs(unet, {
      calls: calls(steps), steps, batch: o.batch, latentHeight: height / factor, latentWidth: width / factor, cfg: o.guidance > 1, textEmbedsDim,
      accelerator: accel.length > 0 ? createAccelerator(accel) : undefined,
    }),
  };
}
