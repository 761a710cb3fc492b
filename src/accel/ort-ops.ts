/** Cache operations on onnxruntime tensors (read back to the CPU where they live on a GPU). */
import * as ort from 'onnxruntime-node';
import type { CacheOps } from './plan.ts';

export const ortCacheOps: CacheOps<ort.Tensor> = {
  async meanOfHalves(t) {
    const data = (t.location === 'cpu' ? t.data : await t.getData()) as Float32Array;
    const half = data.length / 2;
    const mean = new Float32Array(half);
    for (let i = 0; i < half; i++) mean[i] = (data[i] + data[half + i]) / 2;
    return new ort.Tensor('float32', mean, [t.dims[0] / 2, ...t.dims.slice(1)]);
  },
  indices: (values) => new ort.Tensor('int64', BigInt64Array.from(values, BigInt), [values.length]),
};
