/**
 * ORT's optimised models kept on disk between processes, so a second process skips graph
 * optimisation (constant folding of weight casts, NCHWc reordering: most of a session's creation).
 * One folder per segment, named by a hash of everything the optimised model depends on: the
 * segment's graph, each weight file's real path, size and modification time (weights that change
 * miss), the session options, ONNX Runtime's version and this machine's CPU and architecture (the
 * optimised model holds kernels' layouts for this CPU). Large sessions' entries also hold MLAS's
 * pre-packed weights, once another process has loaded and run them (src/runtime/ort-executor.ts
 * says why). An entry is written into a temporary folder and renamed into place when complete, so
 * a crash mid-write leaves nothing that is ever read. Past its size limit (DIFFUSE_CACHE_MAX_GB,
 * default 16) the entries used least recently are removed. The folder can be moved
 * (DIFFUSE_CACHE_DIR) or deleted at any time.
 */
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import type { SessionCache, SessionCacheEntry } from './ort-executor.ts';
import { makeFolder } from '../util/files.ts';
import { InputError } from '../errors.ts';

const MODEL_FILE = 'model.onnx';

/**
 * The commands' cache: in `$DIFFUSE_CACHE_DIR`, else `$XDG_CACHE_HOME/diffusion.ts/sessions`, else
 * `~/.cache/diffusion.ts/sessions`; none with DIFFUSE_CACHE_DIR=off.
 */
export function commandSessionCache(): SessionCache | undefined {
  const dir = process.env.DIFFUSE_CACHE_DIR;
  if (dir === 'off') return undefined;
  const maxGb = process.env.DIFFUSE_CACHE_MAX_GB;
  const max = maxGb === undefined || maxGb === '' ? DEFAULT_MAX_BYTES : Number(maxGb) * 2 ** 30;
  if (!(Number.isFinite(max) && max > 0)) throw new InputError('DIFFUSE_CACHE_MAX_GB', 'wrong value', 'a positive number of GiB', JSON.stringify(maxGb));
  return openSessionCache(dir || path.join(process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'diffusion.ts', 'sessions'), { maxBytes: max });
}

/** Enough for SDXL's entries at fp32 (~14 GiB) beside a few small models'. */
const DEFAULT_MAX_BYTES = 16 * 2 ** 30;

/** Bytes of the files under `dir`. */
function folderBytes(dir: string): number {
  let bytes = 0;
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const file = path.join(dir, entry.name);
    bytes += entry.isDirectory() ? folderBytes(file) : fs.statSync(file, { throwIfNoEntry: false })?.size ?? 0;
  }
  return bytes;
}

/** Temporary folders older than this were left by a process that died mid-write. */
const ABANDONED_MS = 24 * 3600 * 1000;

/**
 * Sessions whose weights take less than this are saved without pre-packed weights: they start fast
 * anyway, and each pre-packed entry costs a check in another process. Measured on SD 1.5 at 256²
 * (a second process's first run / its warm run): 1.37× from 32 MiB up, 1.27× from 1 MiB up.
 */
const PREPACK_FROM_BYTES = 2 ** 20;

/**
 * Loads an entry and runs it once on zeros of its input shapes (unknown dimensions 1), in a process
 * of its own: exit status 0 if both worked.
 */
const CHECK_SCRIPT = `
const ort = await import(process.env.DIFFUSE_CHECK_ORT);
const session = await ort.InferenceSession.create(process.env.DIFFUSE_CHECK_MODEL, JSON.parse(process.env.DIFFUSE_CHECK_OPTIONS));
const arrays = { float32: Float32Array, float16: Uint16Array, int64: BigInt64Array, int32: Int32Array, bool: Uint8Array };
const feeds = {};
for (const input of session.inputMetadata) {
  const shape = input.shape.map((d) => (typeof d === 'number' ? d : 1));
  feeds[input.name] = new ort.Tensor(input.type, new arrays[input.type](shape.reduce((a, b) => a * b, 1)), shape);
}
await session.run(feeds);
`;

export function openSessionCache(dir: string, o: { prepackFromBytes?: number; maxBytes?: number } = {}): SessionCache {
  const prepackFrom = o.prepackFromBytes ?? PREPACK_FROM_BYTES;
  const maxBytes = o.maxBytes ?? DEFAULT_MAX_BYTES;
  /** The entries' bytes, counted at the first write of this process and kept up to date by its writes. */
  let total: number | undefined;
  // Least recently used first (a hit touches its entry), down to 3/4 of the limit so that not every write lists the folder.
  const trim = (keep: string) => {
    try {
      const entries = fs.readdirSync(dir).filter((name) => !name.startsWith('.') && name !== keep).map((name) => {
        const file = path.join(dir, name);
        return { file, used: fs.statSync(file, { throwIfNoEntry: false })?.mtimeMs ?? 0, bytes: folderBytes(file) };
      });
      total = entries.reduce((sum, e) => sum + e.bytes, 0) + folderBytes(path.join(dir, keep));
      if (total <= maxBytes) return;
      for (const e of entries.sort((a, b) => a.used - b.used)) {
        if (total <= 0.75 * maxBytes) break;
        fs.rmSync(e.file, { recursive: true, force: true });
        total -= e.bytes;
      }
    } catch {
      // An unreadable entry or folder: left as it is; the cache still works.
    }
  };
  // Temporary folders of writers that died are cleared by the next process that writes (listing a
  // cache of thousands of entries at every start cost 27 ms of a 0.9 s reference-model start).
  let swept = false;
  const sweep = () => {
    swept = true;
    try {
      for (const name of fs.existsSync(dir) ? fs.readdirSync(dir) : []) {
        const file = path.join(dir, name);
        if (name.startsWith('.') && Date.now() - (fs.statSync(file, { throwIfNoEntry: false })?.mtimeMs ?? Date.now()) > ABANDONED_MS) {
          fs.rmSync(file, { recursive: true, force: true });
        }
      }
    } catch {
      // An unreadable cache folder: every lookup falls back to building the session.
    }
  };
  const machine = `${process.arch} ${os.cpus()[0]?.model ?? 'unknown cpu'} onnxruntime ${ort.env.versions.common ?? ''}`;
  return {
    key(model, weightFiles, options) {
      const hash = createHash('sha256').update(machine).update('\0').update(options).update('\0').update(model);
      for (const file of weightFiles) {
        const st = fs.statSync(file);
        hash.update(`\0${file}\0${st.size}\0${st.mtimeMs}\0${st.ino}`);
      }
      return hash.digest('hex').slice(0, 40);
    },
    find(key) {
      const file = path.join(dir, key, MODEL_FILE);
      if (!fs.existsSync(file)) return undefined;
      try {
        const now = new Date();
        fs.utimesSync(path.join(dir, key), now, now); // used now: the last to be trimmed
      } catch {
        // A read-only cache: still readable.
      }
      return file;
    },
    begin(key): SessionCacheEntry {
      if (!swept) sweep();
      const final = path.join(dir, key);
      const temporary = path.join(dir, `.${key}.${process.pid}.${randomBytes(4).toString('hex')}`);
      makeFolder(temporary);
      return {
        modelPath: path.join(temporary, MODEL_FILE),
        commit() {
          try {
            fs.renameSync(temporary, final);
          } catch {
            // Another process put the same entry in place first: theirs is as good.
            fs.rmSync(temporary, { recursive: true, force: true });
            return;
          }
          const added = folderBytes(final);
          if (total === undefined || total + added > maxBytes) trim(key);
          else total += added;
        },
        discard() {
          fs.rmSync(temporary, { recursive: true, force: true });
        },
      };
    },
    forget(key) {
      fs.rmSync(path.join(dir, key), { recursive: true, force: true });
    },
    prepacks: (weightBytes) => weightBytes >= prepackFrom,
    verify(modelPath, sessionOptions) {
      const check = spawnSync(process.execPath, ['--input-type=module', '-e', CHECK_SCRIPT], {
        stdio: 'ignore',
        env: { ...process.env, DIFFUSE_CHECK_ORT: import.meta.resolve('onnxruntime-node'), DIFFUSE_CHECK_MODEL: modelPath, DIFFUSE_CHECK_OPTIONS: JSON.stringify(sessionOptions) },
      });
      return check.status === 0;
    },
  };
}
