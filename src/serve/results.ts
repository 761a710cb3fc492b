/**
 * The results folder's lifetime: a job's images (`<job id>-<index>.png`) outlive it by at most
 * KEEP_FINISHED_SECONDS, as its record does in both queues; nothing names them after that.
 */
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { KEEP_FINISHED_SECONDS } from './queue.ts';

/** A job's image, or one a killed worker left half-written (writeFileAtomically's temporary name). */
const RESULT_FILE = /^[0-9a-f-]{36}-\d{1,2}\.png(?:\.partial-\d+)?$/;

/** Deletes job images in `dir` written before `before` (ms); other files are left alone. Asynchronous: a big folder never stalls the server. */
export async function removeResultsBefore(dir: string, before: number): Promise<void> {
  let names: string[];
  try {
    names = await fs.readdir(dir);
  } catch {
    return; // a folder removed under the service: nothing to expire
  }
  for (const name of names) {
    if (!RESULT_FILE.test(name)) continue;
    const file = path.join(dir, name);
    try {
      if ((await fs.stat(file)).mtimeMs < before) await fs.rm(file, { force: true });
    } catch {
      // Gone meanwhile (another worker's sweep), or not ours to remove: either way not kept by us.
    }
  }
}

/** Expires job images in `dir` now (awaited) and every hour after; resolves to the function that stops it. */
export async function expireResults(dir: string): Promise<() => void> {
  const sweep = () => removeResultsBefore(dir, Date.now() - KEEP_FINISHED_SECONDS * 1000);
  await sweep();
  const timer = setInterval(() => void sweep(), 3_600_000);
  timer.unref();
  return () => clearInterval(timer);
}
