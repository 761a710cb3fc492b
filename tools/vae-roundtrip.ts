/**
 * Scores what tools/train-reference/vae_roundtrip.py wrote: for the rendered one-object scenes and
 * their VAE round trips, how often the adherence checker finds the named colour, shape, size and
 * place, and the shape per size and shape (the ceiling of any U-Net drawing through that VAE).
 *
 *   node --import tsx tools/vae-roundtrip.ts PREFIX
 */
import * as fs from 'node:fs';
import { adherence, sameCell } from '../src/metrics/adherence.ts';
import { parseCaption, sceneGrammar } from '../src/scenes/captions.ts';

const prefix = process.argv[2];
if (!prefix || !fs.existsSync(`${prefix}.json`)) {
  console.error('usage: vae-roundtrip.ts PREFIX (what vae_roundtrip.py --out PREFIX wrote)');
  process.exit(2);
}
const captions: string[] = JSON.parse(fs.readFileSync(`${prefix}.json`, 'utf8'));
const size = sceneGrammar().imageSize;
const plane = 3 * size * size;
console.log(`${captions.length} one-object scenes | found | shape | size | place | shape right per size and shape`);
for (const kind of ['original', 'roundtrip']) {
  const bytes = fs.readFileSync(`${prefix}-${kind}.f32`);
  const all = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
  const right = { found: 0, shape: 0, size: 0, place: 0 };
  const perKind = new Map<string, [number, number]>();
  captions.forEach((caption, i) => {
    const [want] = parseCaption(caption).objects;
    const [got] = adherence(all.subarray(i * plane, (i + 1) * plane), size, size, caption).objects;
    const key = `${want.size} ${want.shape}`;
    const tally = perKind.get(key) ?? [0, 0];
    perKind.set(key, tally);
    tally[1]++;
    if (!got.found) return;
    right.found++;
    if (got.shape === want.shape) (right.shape++, tally[0]++);
    if (got.size === want.size) right.size++;
    if (sameCell(got.cell, want.cell)) right.place++;
  });
  const kinds = [...perKind].sort(([a], [b]) => a.localeCompare(b)).map(([k, [ok, n]]) => `${k} ${ok}/${n}`).join(', ');
  console.log(`${kind} | ${right.found} | ${right.shape} | ${right.size} | ${right.place} | ${kinds}`);
}
