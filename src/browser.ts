/**
 * Browser entry of diffusion.ts: the same pipelines, models, schedulers and accelerations on
 * onnxruntime-web (package.json's `browser` field maps `onnxruntime-node` to `onnxruntime-web/webgpu` for bundlers; `device`
 * "cpu" runs on its wasm backend, "webgpu" on WebGPU). Model folders come from HTTP (Range
 * requests) or from files the user picked: mount them, then load by their root.
 */
export { InputError } from './errors.ts';
export { mountFiles, type FileSource } from './io/files.ts';
export { mountHttpFolder, mountPickedFiles, prefetchedSource, httpRangeReader, LISTING_FILE, type FolderListing, type PickedFile } from './io/prefetched-source.ts';
export { loadPipeline, StableDiffusionPipeline, type GenerateRequest, type GenerateResult, type PipelineOptions } from './pipelines/stable-diffusion.ts';
export { loadPixArtPipeline, PixArtPipeline } from './pipelines/pixart.ts';
export { loadDiTPipeline, DiTPipeline } from './pipelines/dit.ts';
export { describeTransfers, type Transfers } from './runtime/ort-executor.ts';
export type { GeneratedImage, GenerationResult } from './pipelines/common.ts';
export { pipelineDefaults } from './pipelines/families.ts';
export { SCHEDULER_NAMES, type SchedulerName } from './schedulers/index.ts';
export { parseAccelSpec, formatAccelSpec, METHODS, type AccelSpec } from './accel/index.ts';
export { calflopsMacs, fullMacs, type MacCount } from './graph/builder.ts';
export { psnr, ssim } from './metrics/image.ts';
export { encodePng } from './image/png.ts';
export { readPipelineFolder, openComponentWeights } from './weights/diffusers-folder.ts';
