import * as fs from 'node:fs';

/** Writes a file whole or not at all: a temporary file renamed over the target (no half-written output). */
export function writeFileAtomically(file: string, data: string | Uint8Array): void {
  const tmp = `${file}.partial-${process.pid}`;
  try {
    fs.writeFileSync(tmp, data);
    fs.renameSync(tmp, file);
  } catch (err) {
    fs.rmSync(tmp, { force: true });
    throw err;
  }
}
