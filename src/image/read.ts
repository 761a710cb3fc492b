/**
 * Reading an init image: PNG (fast-png: every colour type, bit depth and interlacing) or JPEG
 * (jpeg-js, baseline and progressive) into planar RGB in [0, 1], as the pipelines take it. Alpha
 * is dropped, grey is repeated into three channels and a palette expanded — what Pillow's
 * `convert("RGB")` does. Sizes are read from the header and bounded before any pixel is decoded.
 */
import * as fs from 'node:fs';
import { convertIndexedToRgb, decode as decodePng } from 'fast-png';
import jpeg from 'jpeg-js';
import { InputError } from '../errors.ts';
import type { GeneratedImage } from '../pipelines/common.ts';
import { isSystemError, systemErrorReason } from '../util/files.ts';

/** The largest side we accept (the pipelines' own bound), and the most pixels (8192²: 768 MiB as planar floats). */
export const MAX_IMAGE_SIDE = 16_384;
export const MAX_IMAGE_PIXELS = 8192 * 8192;

const PNG_SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

/** Decodes PNG or JPEG bytes; `where` names the source in errors. */
export function decodeImage(bytes: Uint8Array, where: string): GeneratedImage {
  if (PNG_SIGNATURE.every((b, i) => bytes[i] === b)) return fromPng(bytes, where);
  if (bytes[0] === 0xff && bytes[1] === 0xd8) return fromJpeg(bytes, where);
  throw new InputError(where, 'not an image this engine reads', 'a PNG or JPEG file', bytes.length === 0 ? 'an empty file' : `a file starting ${[...bytes.subarray(0, 4)].map((b) => b.toString(16).padStart(2, '0')).join(' ')}`);
}

/** Reads a PNG or JPEG file. Every problem is one InputError naming the file. */
export function readImage(file: string): GeneratedImage {
  let bytes: Uint8Array;
  try {
    bytes = fs.readFileSync(file);
  } catch (e) {
    if (isSystemError(e)) throw new InputError(file, `cannot read the image: ${systemErrorReason(e)}`);
    throw e;
  }
  return decodeImage(bytes, file);
}

function checkSize(width: number, height: number, where: string): void {
  if (!(width >= 1 && height >= 1 && width <= MAX_IMAGE_SIDE && height <= MAX_IMAGE_SIDE && width * height <= MAX_IMAGE_PIXELS)) {
    throw new InputError(where, 'image size out of range', `sides from 1 to ${MAX_IMAGE_SIDE} pixels, at most ${MAX_IMAGE_PIXELS / 2 ** 20} megapixels`, `${width}x${height}`);
  }
}

function fromPng(bytes: Uint8Array, where: string): GeneratedImage {
  // IHDR is the first chunk: width and height at bytes 16..23, before anything is inflated.
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.length < 24) throw new InputError(where, 'truncated PNG', 'a PNG header', `${bytes.length} bytes`);
  checkSize(view.getUint32(16), view.getUint32(20), where);
  try {
    const png = decodePng(bytes);
    const { width, height } = png;
    let channels = png.channels;
    let samples: ArrayLike<number> = png.data;
    let max = 2 ** png.depth - 1;
    if (png.palette) {
      samples = convertIndexedToRgb(png);
      channels = samples.length / (width * height);
      max = 255;
    } else if (png.depth < 8) {
      samples = unpackBits(png.data as Uint8Array, width, height, channels, png.depth);
    }
    if (samples.length < width * height * channels) throw new InputError(where, 'truncated PNG', `${width * height * channels} samples`, `${samples.length}`);
    return toPlanar(samples, width, height, channels, max);
  } catch (e) {
    if (e instanceof InputError) throw e;
    throw new InputError(where, `broken PNG: ${(e as Error).message ?? String(e)}`);
  }
}

/** Grey images of 1, 2 or 4 bits per sample come packed, each row padded to a byte. */
function unpackBits(packed: Uint8Array, width: number, height: number, channels: number, depth: number): Uint8Array {
  const perRow = Math.ceil((width * channels * depth) / 8);
  const out = new Uint8Array(width * height * channels);
  const mask = 2 ** depth - 1;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width * channels; x++) {
      const bit = x * depth;
      const byte = packed[y * perRow + (bit >> 3)] ?? 0;
      out[y * width * channels + x] = (byte >> (8 - depth - (bit & 7))) & mask;
    }
  }
  return out;
}

function fromJpeg(bytes: Uint8Array, where: string): GeneratedImage {
  let image;
  try {
    image = jpeg.decode(bytes, { useTArray: true, formatAsRGBA: false, maxResolutionInMP: MAX_IMAGE_PIXELS / 1e6, maxMemoryUsageInMB: 2048 });
  } catch (e) {
    throw new InputError(where, `broken JPEG: ${(e as Error).message ?? String(e)}`);
  }
  checkSize(image.width, image.height, where);
  return toPlanar(image.data, image.width, image.height, 3, 255);
}

/** Interleaved samples (grey, grey+alpha, RGB or RGBA) → planar RGB in [0, 1]. */
function toPlanar(samples: ArrayLike<number>, width: number, height: number, channels: number, max: number): GeneratedImage {
  const size = width * height;
  const data = new Float32Array(3 * size);
  const colour = channels >= 3;
  for (let p = 0; p < size; p++) {
    for (let c = 0; c < 3; c++) data[c * size + p] = samples[p * channels + (colour ? c : 0)] / max;
  }
  return { data, width, height };
}
