/**
 * Prompt adherence of a generated scene image (src/scenes/captions.ts): does the picture show what
 * the caption says? Every pixel is labelled with its nearest palette colour (objects and
 * backgrounds); each object of the caption is the largest 4-connected region of its colour, and is
 * checked for shape (fill of its bounding box: triangle 1/2, circle π/4, square 1), size (half of
 * the bounding box's longer side) and grid cell (its centroid). Score in [0, 1]: the mean over
 * objects (0 if missing, else the share of its attributes that match, colour counting as one),
 * the background when the caption names one, and "no object of a colour the caption never names".
 */
import { parseCaption, sceneGrammar, type Rgb, type SceneCaption } from '../scenes/captions.ts';

export interface ObjectCheck {
  colour: string;
  found: boolean;
  shape?: string;
  size?: string;
  cell?: [number, number];
  score: number;
}

export interface Adherence {
  score: number;
  objects: ObjectCheck[];
  background?: string;
  /** Colours the caption does not name that form an object-sized region anyway. */
  extras: string[];
}

/** Farther than this (0–255 RGB distance) from every palette colour: no label. */
const MAX_COLOUR_DISTANCE = 90;
/** A region counts as an object from 40% of the smallest circle's area. */
const MIN_AREA_SHARE = 0.4;
const SHAPE_FILL: Record<string, number> = { triangle: 0.5, circle: Math.PI / 4, square: 1 };

interface Region { area: number; x0: number; y0: number; x1: number; y1: number; cx: number; cy: number; pixels: number[] }

/** Whether two grid cells ([column, row]) are the same; a missing one matches nothing. */
export function sameCell(a: [number, number] | undefined, b: [number, number] | undefined): boolean {
  return !!a && !!b && a[0] === b[0] && a[1] === b[1];
}

function nearest<T>(value: number, options: [T, number][]): T {
  return options.reduce((best, o) => (Math.abs(o[1] - value) < Math.abs(best[1] - value) ? o : best))[0];
}

/** Largest 4-connected region of `label` in the label map. */
function largestRegion(labels: Int16Array, width: number, height: number, label: number): Region | undefined {
  const seen = new Uint8Array(labels.length);
  let best: Region | undefined;
  for (let start = 0; start < labels.length; start++) {
    if (labels[start] !== label || seen[start]) continue;
    const pixels = [start];
    seen[start] = 1;
    for (let k = 0; k < pixels.length; k++) {
      const p = pixels[k];
      const x = p % width;
      for (const q of [x > 0 ? p - 1 : -1, x < width - 1 ? p + 1 : -1, p - width, p + width]) {
        if (q >= 0 && q < labels.length && !seen[q] && labels[q] === label) {
          seen[q] = 1;
          pixels.push(q);
        }
      }
    }
    if (best && best.area >= pixels.length) continue;
    const r: Region = { area: pixels.length, x0: width, y0: height, x1: -1, y1: -1, cx: 0, cy: 0, pixels };
    for (const p of pixels) {
      const [x, y] = [p % width, Math.floor(p / width)];
      r.x0 = Math.min(r.x0, x); r.x1 = Math.max(r.x1, x);
      r.y0 = Math.min(r.y0, y); r.y1 = Math.max(r.y1, y);
      r.cx += x + 0.5; r.cy += y + 0.5;
    }
    r.cx /= r.area;
    r.cy /= r.area;
    best = r;
  }
  return best;
}

/** Scores planar RGB in [0, 1] ([3, height, width]) against a caption (text or parsed). */
export function adherence(image: Float32Array, width: number, height: number, caption: string | SceneCaption): Adherence {
  const g = sceneGrammar();
  const scene = typeof caption === 'string' ? parseCaption(caption) : caption;
  const palette: [string, Rgb][] = [...Object.entries(g.colours), ...Object.entries(g.backgrounds)];
  const labels = new Int16Array(width * height).fill(-1);
  const plane = width * height;
  for (let p = 0; p < plane; p++) {
    const rgb = [image[p] * 255, image[plane + p] * 255, image[2 * plane + p] * 255];
    let bestDistance = MAX_COLOUR_DISTANCE;
    for (let c = 0; c < palette.length; c++) {
      const d = Math.hypot(rgb[0] - palette[c][1][0], rgb[1] - palette[c][1][1], rgb[2] - palette[c][1][2]);
      if (d < bestDistance) {
        bestDistance = d;
        labels[p] = c;
      }
    }
  }
  const [sx, sy] = [width / g.imageSize, height / g.imageSize];
  const minArea = MIN_AREA_SHARE * Math.PI * Math.min(...Object.values(g.sizes)) ** 2 * sx * sy;
  const regionOf = (colour: string) => {
    const r = largestRegion(labels, width, height, palette.findIndex(([name]) => name === colour));
    return r && r.area >= minArea ? r : undefined;
  };

  const items: number[] = [];
  const taken = new Uint8Array(plane);
  const objects = scene.objects.map((o): ObjectCheck => {
    const r = regionOf(o.colour);
    if (!r) {
      items.push(0);
      return { colour: o.colour, found: false, score: 0 };
    }
    for (const p of r.pixels) taken[p] = 1;
    const [bw, bh] = [r.x1 - r.x0 + 1, r.y1 - r.y0 + 1];
    const shape = nearest(r.area / (bw * bh), Object.entries(SHAPE_FILL));
    const size = nearest(Math.max(bw / sx, bh / sy) / 2, Object.entries(g.sizes));
    const cell: [number, number] = [Math.min(2, Math.floor((3 * r.cx) / width)), Math.min(2, Math.floor((3 * r.cy) / height))];
    const checks = [1, Number(shape === o.shape), Number(size === o.size)];
    if (o.cell) checks.push(Number(sameCell(cell, o.cell)));
    const score = checks.reduce((a, b) => a + b, 0) / checks.length;
    items.push(score);
    return { colour: o.colour, found: true, shape, size, cell, score };
  });

  // The background: the most common background label outside the objects found.
  const counts = new Map<number, number>();
  const firstBackground = Object.keys(g.colours).length;
  for (let p = 0; p < plane; p++) {
    if (!taken[p] && labels[p] >= firstBackground) counts.set(labels[p], (counts.get(labels[p]) ?? 0) + 1);
  }
  const top = [...counts].sort((a, b) => b[1] - a[1])[0];
  const background = top && palette[top[0]][0];
  if (scene.background) items.push(Number(background === scene.background));

  const named = new Set(scene.objects.map((o) => o.colour));
  const extras = Object.keys(g.colours).filter((c) => !named.has(c) && regionOf(c));
  items.push(Number(extras.length === 0));
  return { score: items.reduce((a, b) => a + b, 0) / items.length, objects, background, extras };
}
