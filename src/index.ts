/** Public API of diffusion.ts. */
export { InputError } from './errors.ts';
export { GraphBuilder, Value, calflopsMacs, fullMacs, type MacCount, type ParamSource, type HeavyOp } from './graph/builder.ts';
export { OrtExecutor, type Device, type RuntimeOptions } from './runtime/ort-executor.ts';
export { DryExecutor, shapeOnlyParams } from './runtime/dry-executor.ts';
export { shaped, type Executor, type SegmentBuild, type SegmentReport, type TensorLike } from './runtime/executor.ts';
export { SafetensorsFile, parseSafetensorsHeader, writeSafetensors, type TensorInfo } from './weights/safetensors.ts';
export { readPipelineFolder, readComponentConfig, openComponentWeights, WeightSet, type PipelineFolder } from './weights/diffusers-folder.ts';
export { loadUNet, loadVae, loadTextEncoder, type LoadedComponent, type LoadOptions } from './models/components.ts';
export { UNet2DConditionModel, parseUNetConfig, type UNet2DConditionConfig, type AddedConditioning } from './models/unet2d-condition.ts';
export { AutoencoderKL, parseAutoencoderKLConfig, type AutoencoderKLConfig } from './models/autoencoder-kl.ts';
export { ClipTextModel, ClipTextModelWithProjection, parseClipTextConfig, type ClipTextConfig } from './models/clip-text.ts';
export { ClipTokenizer } from './tokenizers/clip-bpe.ts';
export { PRESETS, type Preset } from './models/presets.ts';
export { createScheduler, SCHEDULER_NAMES, type Scheduler, type SchedulerName } from './schedulers/index.ts';
export { loadPipeline, StableDiffusionPipeline, type GenerateRequest, type GenerateResult, type PipelineOptions } from './pipelines/stable-diffusion.ts';
export { encodePng } from './image/png.ts';
export { Rng } from './util/rng.ts';
