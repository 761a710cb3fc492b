import * as fs from 'node:fs';
import * as path from 'node:path';
import { InputError } from '../errors.ts';
import { own } from './own.ts';

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

/** Where a command's text goes: stdout, or stderr when its JSON goes to stdout (--json -), so that stdout parses. */
export function textOf(o: { json?: string }): (line: string) => void {
  return o.json === '-' ? (line) => process.stderr.write(`${line}\n`) : (line) => console.log(line);
}

/** A --json / --out target: "-" is standard output, anything else a file written whole. */
export function writeOutput(target: string, data: string): void {
  if (target === '-') process.stdout.write(data.endsWith('\n') ? data : `${data}\n`);
  else writeFileAtomically(target, data);
}

/**
 * Checks, before any work, that `file` can be written the way writeFileAtomically writes it: its
 * folder exists and takes a new file renamed into it (permissions, read-only mounts), and the
 * name is not a folder or a read-only file. `flag` names the option in the error.
 */
export function checkOutputFile(file: string, flag: string): void {
  const target = path.resolve(file);
  const dir = path.dirname(target);
  const stat = (p: string) => fs.statSync(p, { throwIfNoEntry: false });
  const folder = stat(dir);
  if (!folder) throw new InputError(flag, 'folder does not exist', 'an existing folder', dir);
  if (!folder.isDirectory()) throw new InputError(flag, 'not a folder', 'an existing folder', dir);
  const existing = stat(target);
  if (existing?.isDirectory()) throw new InputError(flag, 'is a folder', 'a file name', target);
  if (existing) {
    try {
      fs.accessSync(target, fs.constants.W_OK);
    } catch {
      throw new InputError(flag, 'cannot overwrite a read-only file', 'a writable file or a new name', target);
    }
  }
  const probe = `${target}.probe-${process.pid}`;
  try {
    fs.writeFileSync(probe, '');
    fs.renameSync(probe, `${probe}-renamed`);
    fs.rmSync(`${probe}-renamed`);
  } catch (err) {
    fs.rmSync(probe, { force: true });
    throw new InputError(flag, `cannot write into ${dir}`, 'a folder that takes new files', systemErrorReason(err));
  }
}

const REASONS: Record<string, string> = {
  EACCES: 'permission denied', EPERM: 'operation not permitted', EROFS: 'read-only file system', ENOSPC: 'no space left on the device',
  EDQUOT: 'disk quota exceeded', ENOENT: 'no such file or folder', EISDIR: 'is a folder', ENOTDIR: 'a part of the path is not a folder',
  EEXIST: 'already exists', EMFILE: 'too many open files', ENFILE: 'too many open files', EIO: 'input/output error',
  ENAMETOOLONG: 'name too long', EXDEV: 'cannot rename across file systems', ELOOP: 'too many levels of symbolic links', EBUSY: 'busy',
};

/** An error from the operating system (fs, child processes): it has a string `code` such as EACCES. */
/**
 * `mkdir -p` that fails rather than hangs: Node 20's recursive mkdirSync never returns for a path
 * under /proc (it retries ENOENT forever), so folders are made one level at a time.
 */
export function makeFolder(dir: string): void {
  const target = path.resolve(dir);
  const parent = path.dirname(target);
  if (parent !== target && !fs.existsSync(parent)) makeFolder(parent);
  try {
    fs.mkdirSync(target);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || !fs.statSync(target).isDirectory()) throw err;
  }
}

/** Creates `dir` if needed and checks that new files can be written in it, before long work. */
export function checkOutputFolder(dir: string, flag: string): void {
  try {
    makeFolder(dir);
  } catch (err) {
    throw new InputError(flag, 'cannot be created', 'a folder this user can create and write', `${path.resolve(dir)} (${systemErrorReason(err)})`);
  }
  checkOutputFile(path.join(dir, '.write-check'), flag);
}

export function isSystemError(err: unknown): err is NodeJS.ErrnoException {
  return err instanceof Error && typeof (err as NodeJS.ErrnoException).code === 'string' && /^E[A-Z]+$/.test((err as NodeJS.ErrnoException).code!);
}

/** "permission denied (EACCES)" for a system error; the message otherwise. */
export function systemErrorReason(err: unknown): string {
  if (!isSystemError(err)) return err instanceof Error ? err.message : String(err);
  return `${own(REASONS, err.code!) ?? err.message.replace(/^E[A-Z]+: /, '').replace(/,.*$/, '')} (${err.code})`;
}

/** One line for a system error: the path(s) it concerns, then the reason. */
export function systemErrorLine(err: NodeJS.ErrnoException): string {
  const paths = [err.path, (err as { dest?: string }).dest].filter((p): p is string => typeof p === 'string');
  return `${paths.length ? `${paths.join(' → ')}: ` : ''}${systemErrorReason(err)}`;
}

/** Whether no process `pid` runs (a write it began was abandoned): ESRCH; another user's (EPERM) is alive. */
export function processGone(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return false;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'ESRCH';
  }
}
