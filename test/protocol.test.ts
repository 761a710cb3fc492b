/**
 * The protocol between models and methods (src/runtime/protocol.ts, plan.ts), exercised by small
 * methods written here against it alone: variants of two methods compose on one segment, each
 * with its own inputs and outputs; hooks see the declared roles; the U-Net's declaration.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { loadUNet } from '../src/models/components.ts';
import { PRESETS } from '../src/models/presets.ts';
import { UNet2DConditionModel, parseUNetConfig } from '../src/models/unet2d-condition.ts';
import { DryExecutor } from '../src/runtime/dry-executor.ts';
import type { TensorLike } from '../src/runtime/executor.ts';
import { OrtExecutor, ortOps } from '../src/runtime/ort-executor.ts';
import { PlannedExecutor, combine, shapedOps, type Accelerator, type PlanContext, type RunHooks } from '../src/runtime/plan.ts';
import { loadPipeline } from '../src/pipelines/stable-diffusion.ts';
import { readPipelineFolder } from '../src/weights/diffusers-folder.ts';
import { openGoldens } from './helpers/goldens.ts';

const FIXTURES = path.join(import.meta.dirname, 'fixtures');

/** Emits every self-attention's normalised input tokens (a `body` hook), recording their shapes. */
function probeTokens(seen: Map<string, readonly number[]>): Accelerator {
  return {
    name: 'probe-tokens',
    begin: <T extends TensorLike>(): RunHooks<T> => ({
      variant: async (s) => (s.role.layer !== 'self-attention' ? undefined : {
        name: 'probe-h',
        emits: ['h'],
        hooks: (_own, inner, emit) => ({
          body(g, h, run) {
            emit('h', h);
            return inner.body(g, h, run);
          },
        }),
        ran: (emitted) => void seen.set(s.name, emitted.h.dims),
      }),
    }),
  };
}

/** Scales every attention core's output by a graph input (`scale`). */
function scaleCore(scale: number): Accelerator {
  return {
    name: 'scale-core',
    begin: <T extends TensorLike>(context: PlanContext<T>): RunHooks<T> => ({
      variant: async (s) => (s.role.layer === 'feed-forward' ? undefined : {
        name: 'scale',
        // An int64 [1] tensor as the scale's carrier: any tensor the method makes through its ops.
        inputs: { scale: context.ops.indices([scale]) },
        unbatched: ['scale'],
        hooks: (own, inner) => ({ attend: (g, parts) => g.mul(inner.attend(g, parts), g.cast(own.scale, 'float32')) }),
      }),
    }),
  };
}

test('protocol: two methods\' variants compose on one segment, each with its own inputs and outputs', async () => {
  const unet = new UNet2DConditionModel(parseUNetConfig(PRESETS.sd15.unet, 'sd15'));
  const seen = new Map<string, readonly number[]>();
  const dry = new DryExecutor();
  const planned = new PlannedExecutor(dry, combine([probeTokens(seen), scaleCore(1)]), shapedOps);
  const out = await unet.forwardShapes(planned, { batch: 2, latentHeight: 32, latentWidth: 32 });
  assert.deepEqual(out.dims, [2, 4, 32, 32]);
  const attn1 = dry.calls.filter((r) => r.name.endsWith('.attn1@probe-h+scale'));
  assert.equal(attn1.length, 16);
  // Inputs and outputs of each variant under its own name; the model gets neither back.
  const first = attn1[0];
  assert.deepEqual(Object.keys(first.inputShapes).sort(), ['scale.scale', 'tokens']);
  assert.deepEqual(first.outputShapes['probe-h.h'], [2, 1024, 320]);
  assert.deepEqual(dry.calls.filter((r) => r.name.endsWith('.attn2@scale')).length, 16);
  assert.equal(seen.size, 16);
  assert.deepEqual(seen.get('down_blocks.0.attentions.0.transformer_blocks.0.attn1'), [2, 1024, 320]);
  assert.deepEqual(seen.get('mid_block.attentions.0.transformer_blocks.0.attn1'), [2, 16, 1280]);
});

test('protocol: variants change exactly what their hooks say (tiny-sd1 U-Net, real sessions)', async (t) => {
  const folder = readPipelineFolder(path.join(FIXTURES, 'tiny-sd1'));
  const { model, params } = loadUNet(folder);
  const g = openGoldens(t, path.join(FIXTURES, 'goldens', 'tiny-sd1-unet.safetensors'));
  const exec = new OrtExecutor(params);
  const timestep = new ort.Tensor('float32', new Float32Array(2).fill(999), [2]);
  const run = (plan?: Accelerator) => model.forward(plan ? new PlannedExecutor(exec, plan, ortOps) : exec, g.f32('sample'), timestep, g.f32('encoder_hidden_states'));
  const plain = (await run()).data as Float32Array;
  const seen = new Map<string, readonly number[]>();
  // A probe and a scale of 1 change nothing, bit for bit.
  assert.deepEqual((await run(combine([probeTokens(seen), scaleCore(1)]))).data, plain);
  assert.equal(seen.size, 11);
  // A scale of 2 changes the result.
  const scaled = (await run(scaleCore(2))).data as Float32Array;
  assert.ok(scaled.some((v, i) => Math.abs(v - plain[i]) > 1e-3));
  await exec.release();
});

test('the U-Net declares its transformer blocks and long skips', () => {
  const sd15 = new UNet2DConditionModel(parseUNetConfig(PRESETS.sd15.unet, 'sd15')).declaration;
  assert.equal(sd15.kind, 'U-Net');
  assert.equal(sd15.transformerBlocks.length, 16);
  assert.deepEqual(sd15.transformerBlocks[0], { block: 'down_blocks.0.attentions.0.transformer_blocks.0', downsample: 1 });
  assert.deepEqual(sd15.transformerBlocks.map((b) => b.downsample).filter((d) => d === 8), [8]); // the mid block
  assert.deepEqual(sd15.longSkips, { maxBranch: 11, describe: '4 down blocks of 2/2/2/2 layers: 11 down-path outputs' });
  const sdxl = new UNet2DConditionModel(parseUNetConfig(PRESETS.sdxl.unet, 'sdxl')).declaration;
  assert.equal(Math.min(...sdxl.transformerBlocks.map((b) => b.downsample)), 2); // no attention at full resolution
  assert.equal(sdxl.longSkips!.maxBranch, 8);
});

/**
 * Keeps the first self-attention's output tokens of call 0 and feeds them, unused, into that
 * segment at later calls: what any method that reuses a tensor does. `declare` lists it in held.
 */
function keepFirstTokens(declare: boolean): Accelerator {
  return {
    name: 'keep-tokens',
    begin: <T extends TensorLike>(): RunHooks<T> => {
      let kept: T | undefined;
      let first: string | undefined;
      return {
        async around(segment, at, next, residual) {
          const out = await next();
          first ??= segment.name;
          if (segment.name === first && residual && at.call === 0) kept = out[residual.result];
          return out;
        },
        variant: async (s, { call }) => (call === 0 || s.name !== first || !kept ? undefined : { name: 'kept', inputs: { kept }, hooks: () => ({}) }),
        held: declare ? () => (kept ? [kept] : []) : undefined,
      };
    },
  };
}

test('between model calls the executor frees every output but those a plan holds: one kept and not declared fails by name', async () => {
  const pipeline = await loadPipeline(path.join(FIXTURES, 'tiny-sd1'));
  try {
    const request = { prompt: 'a cat', steps: 3, seed: 1, width: 64, height: 64, output: 'latent' as const };
    await assert.rejects(pipeline.generate({ ...request, plans: [keepFirstTokens(false)] }),
      /input kept\.kept was freed after an earlier model call: a plan that keeps tensors between calls lists them in RunHooks\.held/);
    const held = await pipeline.generate({ ...request, plans: [keepFirstTokens(true)] });
    const plain = await pipeline.generate(request);
    assert.deepEqual(held.latents.data, plain.latents.data);
  } finally {
    await pipeline.release();
  }
});

test('generations on one pipeline run one at a time: at once they give what they give one after another', async () => {
  const pipeline = await loadPipeline(path.join(FIXTURES, 'tiny-sd1'));
  const requests = [1, 2].map((seed) => ({ prompt: 'a cat', steps: 3, seed, width: 64, height: 64, output: 'latent' as const, accel: [{ method: 'deepcache' }] }));
  const alone = [];
  for (const r of requests) alone.push(await pipeline.generate(r));
  const together = await Promise.all(requests.map((r) => pipeline.generate(r)));
  for (const [i, result] of together.entries()) {
    assert.deepEqual(result.latents.data, alone[i].latents.data);
    assert.deepEqual(result.denoiserMacs, alone[i].denoiserMacs);
  }
  // release() waits for a generation begun before it.
  const running = pipeline.generate(requests[0]);
  await pipeline.release();
  assert.deepEqual((await running).latents.data, alone[0].latents.data);
});

test('an aborted generation stops before its next segment, not at the end of its step', async () => {
  const pipeline = await loadPipeline(path.join(FIXTURES, 'tiny-sd1'));
  const abort = new AbortController();
  let ranAfter = 0;
  const abortAtFirstSegment: Accelerator = {
    name: 'abort',
    begin: <T extends TensorLike>(): RunHooks<T> => ({
      async around(_segment, _at, next) {
        const aborted = abort.signal.aborted;
        const out = await next();
        if (aborted) ranAfter++;
        abort.abort(new Error('stopped by the test'));
        return out;
      },
    }),
  };
  try {
    await assert.rejects(pipeline.generate({ prompt: 'a cat', steps: 3, seed: 1, width: 64, height: 64, output: 'latent', plans: [abortAtFirstSegment], signal: abort.signal }),
      /stopped by the test/);
    assert.equal(ranAfter, 0);
    // The pipeline is free again, with no signal left behind.
    assert.equal((await pipeline.generate({ prompt: 'a cat', steps: 1, seed: 1, width: 64, height: 64, output: 'latent' })).steps, 1);
  } finally {
    await pipeline.release();
  }
});
