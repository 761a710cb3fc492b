import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { TestContext } from 'node:test';
import { InputError } from '../../src/errors.ts';
import type { ParamSource } from '../../src/graph/builder.ts';

/** A fresh temporary folder, removed when the test ends. */
export function tempDir(t: TestContext): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'diffusion-ts-test-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Writes `value` as JSON, creating parent folders. */
export function writeJson(filePath: string, value: unknown): void {
  fs.mkdirSync(path.dirname(filePath), { recursive: true });
  fs.writeFileSync(filePath, JSON.stringify(value, null, 2));
}

/** A complete safetensors file image with a hand-written header (for malformed-file tests). */
export function rawSafetensors(header: unknown, dataBytes: number): Uint8Array {
  const json = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header), 'utf8');
  const out = new Uint8Array(8 + json.length + dataBytes);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  return out;
}

/** Runs `fn`, asserting it throws an InputError whose message contains every fragment. */
export function throwsInputError(fn: () => unknown, ...fragments: string[]): string {
  try {
    fn();
  } catch (err) {
    if (!(err instanceof InputError)) {
      throw new Error(`expected an InputError, got ${String(err)}`);
    }
    for (const f of fragments) {
      if (!err.message.includes(f)) throw new Error(`error message lacks ${JSON.stringify(f)}: ${err.message}`);
    }
    return err.message;
  }
  throw new Error('expected an InputError, but nothing was thrown');
}

/** The async counterpart of throwsInputError; the message must also be a single line. */
export async function rejectsInputError(fn: () => Promise<unknown>, ...fragments: string[]): Promise<string> {
  let caught: unknown;
  try {
    await fn();
  } catch (err) {
    caught = err;
  }
  if (caught === undefined) throw new Error('expected an InputError, but nothing was thrown');
  if (!(caught instanceof InputError)) throw new Error(`expected an InputError, got ${String(caught)}`);
  for (const f of fragments) {
    if (!caught.message.includes(f)) throw new Error(`error message lacks ${JSON.stringify(f)}: ${caught.message}`);
  }
  if (caught.message.includes('\n')) throw new Error(`message is not one line: ${caught.message}`);
  return caught.message;
}

/** Parameters with given values, written to one file the way safetensors lays tensors out. */
export function fileParams(dir: string, values: Record<string, Float32Array>): ParamSource {
  const file = path.join(dir, 'params.bin');
  const offsets = new Map<string, number>();
  let offset = 0;
  const chunks: Buffer[] = [];
  for (const [name, v] of Object.entries(values)) {
    offsets.set(name, offset);
    chunks.push(Buffer.from(v.buffer, v.byteOffset, v.byteLength));
    offset += v.byteLength;
  }
  fs.writeFileSync(file, Buffer.concat(chunks));
  return {
    param: (name, shape) => {
      const start = offsets.get(name);
      if (start === undefined) throw new Error(`no test value for ${name}`);
      return { name, shape, dtype: 'F32', location: { file, offset: start, byteLength: values[name].byteLength } };
    },
  };
}
