/**
 * The graph builder on its own: exact MAC counts, shape checks, and op helpers run through ORT
 * against plain JavaScript references.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as ort from 'onnxruntime-node';
import { GraphBuilder } from '../src/graph/builder.ts';
import { shapeOnlyParams } from '../src/runtime/dry-executor.ts';
import { createSession } from '../src/runtime/ort-executor.ts';
import { Rng } from '../src/util/rng.ts';
import { fileParams, tempDir } from './helpers/files.ts';
import { assertClose } from './helpers/compare.ts';

test('MACs: conv, linear and attention are counted exactly, split by kind', () => {
  const g = new GraphBuilder('macs', shapeOnlyParams);
  const x = g.input('x', [2, 8, 10, 12]);
  g.conv2d(x, 'conv', 16, 3, { padding: 1 }); // 2·16·10·12 outputs × 8·3·3
  g.conv2d(x, 'down', 4, 3, { stride: 2, padding: 1 }); // 2·4·5·6 × 72
  const tokens = g.input('t', [2, 30, 64]);
  g.linear(tokens, 'lin', 32); // 2·30·32 × 64
  g.attention(tokens, g.input('c', [2, 7, 64]), g.input('v', [2, 7, 64]), 4); // 2 · (2·4·30·7·16)
  assert.deepEqual(g.macs, { conv: 2 * 16 * 120 * 72 + 2 * 4 * 30 * 72, linear: 2 * 30 * 32 * 64, attention: 2 * 2 * 4 * 30 * 7 * 16 });
});

test('shape errors are caught when building, not when running', () => {
  const g = new GraphBuilder('shapes', shapeOnlyParams);
  const a = g.input('a', [2, 3]);
  assert.throws(() => g.add(a, g.input('b', [4])), /cannot broadcast/);
  assert.throws(() => g.reshape(a, [5]), /reshape/);
  assert.throws(() => g.matmul(a, g.input('m', [4, 5]), 'linear'), /matmul/);
  assert.throws(() => g.attention(g.input('q', [1, 4, 10]), g.input('k', [1, 4, 10]), g.input('v', [1, 4, 10]), 3), /heads/);
});

async function run(g: GraphBuilder, feeds: Record<string, ort.Tensor>): Promise<Float32Array> {
  const session = await createSession(g, { threads: 1 });
  const out = await session.run(feeds);
  await session.release();
  return out.y.data as Float32Array;
}

test('groupNorm equals a direct computation of torch.nn.GroupNorm', async (t) => {
  const rng = new Rng(3);
  const [n, c, h, w, groups, eps] = [2, 6, 3, 4, 3, 1e-5];
  const x = rng.fillNormal(new Float32Array(n * c * h * w));
  const gamma = rng.fillNormal(new Float32Array(c));
  const beta = rng.fillNormal(new Float32Array(c));
  const g = new GraphBuilder('gn', fileParams(tempDir(t), { 'gn.weight': gamma, 'gn.bias': beta }));
  g.output(g.groupNorm(g.input('x', [n, c, h, w]), 'gn', groups, eps), 'y');
  const actual = await run(g, { x: new ort.Tensor('float32', x, [n, c, h, w]) });
  const expected = new Float32Array(x.length);
  const perGroup = (c / groups) * h * w;
  for (let b = 0; b < n; b++) {
    for (let gi = 0; gi < groups; gi++) {
      const base = (b * c + gi * (c / groups)) * h * w;
      let mean = 0;
      for (let i = 0; i < perGroup; i++) mean += x[base + i];
      mean /= perGroup;
      let variance = 0;
      for (let i = 0; i < perGroup; i++) variance += (x[base + i] - mean) ** 2;
      variance /= perGroup;
      for (let i = 0; i < perGroup; i++) {
        const ch = gi * (c / groups) + Math.floor(i / (h * w));
        expected[base + i] = ((x[base + i] - mean) / Math.sqrt(variance + eps)) * gamma[ch] + beta[ch];
      }
    }
  }
  assertClose(actual, expected, 1e-5, 'group norm');
});

test('resizeNearest picks floor(dst · in / out) like torch nearest, for non-integer ratios too', async () => {
  const g = new GraphBuilder('resize', shapeOnlyParams);
  g.output(g.resizeNearest(g.input('x', [1, 1, 3, 2]), 7, 5), 'y');
  const x = Float32Array.from({ length: 6 }, (_, i) => i);
  const actual = await run(g, { x: new ort.Tensor('float32', x, [1, 1, 3, 2]) });
  const expected = new Float32Array(35);
  for (let r = 0; r < 7; r++) for (let col = 0; col < 5; col++) expected[r * 5 + col] = x[Math.floor((r * 3) / 7) * 2 + Math.floor((col * 2) / 5)];
  assert.deepEqual([...actual], [...expected]);
});

test('linearRows: two slices of one Linear equal the full Linear split in two', async (t) => {
  const rng = new Rng(5);
  const weight = rng.fillNormal(new Float32Array(6 * 4));
  const bias = rng.fillNormal(new Float32Array(6));
  const x = rng.fillNormal(new Float32Array(3 * 4));
  const params = fileParams(tempDir(t), { 'l.weight': weight, 'l.bias': bias });
  const full = new GraphBuilder('full', params);
  full.output(full.linear(full.input('x', [3, 4]), 'l', 6), 'y');
  const halves = new GraphBuilder('halves', params);
  const xi = halves.input('x', [3, 4]);
  halves.output(halves.concat([halves.linearRows(xi, 'l', 6, 0, 2), halves.linearRows(xi, 'l', 6, 2, 6)], -1), 'y');
  const feeds = { x: new ort.Tensor('float32', x, [3, 4]) };
  const expected = await run(full, feeds);
  assertClose(await run(halves, feeds), expected, 1e-6, 'sliced linear');
  for (let r = 0; r < 3; r++) {
    for (let o = 0; o < 6; o++) {
      let sum = bias[o];
      for (let i = 0; i < 4; i++) sum += x[r * 4 + i] * weight[o * 4 + i];
      assert.ok(Math.abs(expected[r * 6 + o] - sum) < 1e-5, 'linear = x·Wᵀ + b');
    }
  }
});

test('MultiHeadAttention and the plain MatMul/Softmax path agree', async () => {
  const rng = new Rng(9);
  const dims = { q: [2, 5, 8], k: [2, 3, 8], v: [2, 3, 8] };
  const feeds = Object.fromEntries(Object.entries(dims).map(([k, d]) => [k, new ort.Tensor('float32', rng.fillNormal(new Float32Array(d.reduce((a, b) => a * b))), d)]));
  const results = [];
  for (const kind of ['mha', 'plain'] as const) {
    const g = new GraphBuilder(kind, shapeOnlyParams, { attentionKind: kind });
    g.output(g.attention(g.input('q', dims.q), g.input('k', dims.k), g.input('v', dims.v), 2), 'y');
    results.push(await run(g, feeds));
  }
  assertClose(results[0], results[1], 1e-5, 'mha vs plain');
});
