/**
 * The table for docs/BENCHMARKS.md from what tools/gpu-bench/device.sh wrote: per model, seconds
 * per image (whole run and the denoising loop) of each engine and precision, and each against
 * diffusion.ts's own CPU fp32 run and PyTorch CUDA fp16.
 *
 *   node --import tsx tools/gpu-bench/summary.ts DIR
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

interface BenchRow { setting: string; seconds: number; denoisingSeconds: number; psnr: number }
interface Entry { engine: string; seconds: number; denoising: number; psnr?: number }

const dir = process.argv[2];
if (!dir || !fs.existsSync(dir)) {
  console.error('usage: summary.ts DIR (the folder device.sh wrote its JSON files to)');
  process.exit(2);
}
const read = (file: string) => (fs.existsSync(path.join(dir, file)) ? fs.readFileSync(path.join(dir, file), 'utf8') : undefined);
const models = [...new Set(fs.readdirSync(dir).map((f) => /^(.*)-(webgpu|cpu)\.json$|^(.*)-pytorch\.jsonl$/.exec(f)).filter((m) => m).map((m) => m![1] ?? m![3]))];

for (const model of models) {
  const entries: Entry[] = [];
  for (const [device, reduced] of [['cpu', 'int8'], ['webgpu', 'fp16']]) {
    const text = read(`${model}-${device}.json`);
    if (!text) continue;
    const rows = (JSON.parse(text) as { rows: BenchRow[] }).rows;
    entries.push({ engine: `diffusion.ts ${device} fp32`, seconds: rows[0].seconds, denoising: rows[0].denoisingSeconds });
    entries.push({ engine: `diffusion.ts ${device} ${reduced}`, seconds: rows[1].seconds, denoising: rows[1].denoisingSeconds, psnr: rows[1].psnr });
  }
  const timed = (read(`${model}-pytorch.jsonl`) ?? '').split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { engine: string; warmup: boolean; total: number; denoising: number })
    .filter((l) => !l.warmup);
  for (const engine of new Set(timed.map((l) => l.engine))) {
    const best = timed.filter((l) => l.engine === engine).reduce((a, b) => (b.total < a.total ? b : a));
    entries.push({ engine, seconds: best.total, denoising: best.denoising });
  }
  const cpu = entries.find((e) => e.engine === 'diffusion.ts cpu fp32');
  const cuda16 = entries.find((e) => /cuda, fp16/.test(e.engine));
  console.log(`\n${model}\n\n| engine | s/image | denoising s | speed-up over our CPU fp32 | time ÷ PyTorch CUDA fp16's | PSNR vs its fp32 |\n|---|---|---|---|---|---|`);
  for (const e of entries) {
    const ratio = (x?: Entry) => (x ? `${(x.seconds / e.seconds).toFixed(2)}×` : '–');
    console.log(`| ${e.engine} | ${e.seconds.toFixed(3)} | ${e.denoising.toFixed(3)} | ${ratio(cpu)} | ${cuda16 ? `${(e.seconds / cuda16.seconds).toFixed(2)}` : '–'} | ${e.psnr === undefined ? '–' : `${e.psnr.toFixed(1)} dB`} |`);
  }
}
