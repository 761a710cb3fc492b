/**
 * Line/point charts as planar RGB (for PNG), drawn with the label font: enough for the fidelity
 * report's speed-up vs. PSNR curves without a plotting library.
 */
import { drawLabel, labelWidth } from './label.ts';

export interface Series {
  name: string;
  rgb: [number, number, number];
  points: [number, number][];
}

export interface Chart {
  title: string;
  xLabel: string;
  yLabel: string;
  series: Series[];
  width?: number;
  height?: number;
}

/** About five round tick values covering [lo, hi]. */
function ticks(lo: number, hi: number): number[] {
  const raw = (hi - lo) / 5;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * magnitude).find((s) => s >= raw)!;
  const out: number[] = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + 1e-9; t += step) out.push(Number(t.toPrecision(12)));
  return out;
}

export function drawChart(c: Chart): { data: Float32Array; width: number; height: number } {
  const width = c.width ?? 720;
  const height = c.height ?? 460;
  const data = new Float32Array(3 * width * height).fill(1);
  const plane = width * height;
  const put = (x: number, y: number, rgb: [number, number, number]) => {
    x = Math.round(x);
    y = Math.round(y);
    if (x < 0 || y < 0 || x >= width || y >= height) return;
    for (let ch = 0; ch < 3; ch++) data[ch * plane + y * width + x] = rgb[ch];
  };
  const line = (x0: number, y0: number, x1: number, y1: number, rgb: [number, number, number], thick = 1) => {
    const n = Math.max(Math.abs(x1 - x0), Math.abs(y1 - y0), 1);
    for (let i = 0; i <= n; i++) {
      for (let d = 0; d < thick; d++) put(x0 + ((x1 - x0) * i) / n + d, y0 + ((y1 - y0) * i) / n, rgb);
    }
  };
  const black: [number, number, number] = [0, 0, 0];
  const grey: [number, number, number] = [0.85, 0.85, 0.85];
  const [left, right, top, bottom] = [70, width - 20, 40, height - 50];
  const xs = c.series.flatMap((s) => s.points.map((p) => p[0]));
  const ys = c.series.flatMap((s) => s.points.map((p) => p[1]));
  const pad = (lo: number, hi: number) => (hi - lo || Math.abs(hi) || 1) * 0.08;
  const [xLo, xHi] = [Math.min(...xs) - pad(Math.min(...xs), Math.max(...xs)), Math.max(...xs) + pad(Math.min(...xs), Math.max(...xs))];
  const [yLo, yHi] = [Math.min(...ys) - pad(Math.min(...ys), Math.max(...ys)), Math.max(...ys) + pad(Math.min(...ys), Math.max(...ys))];
  const px = (x: number) => left + ((x - xLo) / (xHi - xLo)) * (right - left);
  const py = (y: number) => bottom - ((y - yLo) / (yHi - yLo)) * (bottom - top);

  for (const t of ticks(xLo, xHi)) {
    line(px(t), top, px(t), bottom, grey);
    const text = String(t);
    drawLabel(data, width, height, text, Math.round(px(t) - labelWidth(text, 1) / 2), bottom + 6, 1, black);
  }
  for (const t of ticks(yLo, yHi)) {
    line(left, py(t), right, py(t), grey);
    const text = String(t);
    drawLabel(data, width, height, text, left - 6 - labelWidth(text, 1), Math.round(py(t) - 3), 1, black);
  }
  line(left, top, left, bottom, black);
  line(left, bottom, right, bottom, black);
  line(right, top, right, bottom, black);
  line(left, top, right, top, black);
  drawLabel(data, width, height, c.title, Math.round((width - labelWidth(c.title, 2)) / 2), 10, 2, black);
  drawLabel(data, width, height, c.xLabel, Math.round((left + right - labelWidth(c.xLabel, 1)) / 2), bottom + 24, 1, black);
  drawLabel(data, width, height, c.yLabel, 6, top - 14, 1, black);

  c.series.forEach((s, n) => {
    const pts = [...s.points].sort((a, b) => a[0] - b[0]);
    for (let i = 1; i < pts.length; i++) line(px(pts[i - 1][0]), py(pts[i - 1][1]), px(pts[i][0]), py(pts[i][1]), s.rgb, 2);
    for (const [x, y] of pts) {
      for (let dy = -3; dy <= 3; dy++) for (let dx = -3; dx <= 3; dx++) put(px(x) + dx, py(y) + dy, s.rgb);
    }
    // Legend, top right.
    const ly = top + 10 + n * 14;
    const lx = right - 12 - Math.max(...c.series.map((t) => labelWidth(t.name, 1))) - 20;
    for (let dy = -3; dy <= 3; dy++) for (let dx = 0; dx < 14; dx++) put(lx + dx, ly + 3 + dy, s.rgb);
    drawLabel(data, width, height, s.name, lx + 20, ly, 1, black);
  });
  return { data, width, height };
}
