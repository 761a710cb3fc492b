/**
 * Where model files are read from. On Node, plain paths go to the file system; anything else —
 * an HTTP folder read with Range requests, files a user picked in a browser — is *mounted* under a
 * root (e.g. `https://host/reference-model` or `picked:my-model`) and every path below that root
 * is served by its source. Loading reads small files (configs, vocabularies, safetensors headers)
 * synchronously, so a mounted source holds those in memory (see prefetched-source.ts); tensor
 * bytes are read asynchronously, segment by segment, when a session is created.
 *
 * Failures carry Node's error codes (ENOENT, EISDIR, ENOTDIR, …) so callers handle every source
 * alike.
 */

/** What a mounted source serves, by path relative to its root ("" is the root folder). */
export interface FileSource {
  kind(relative: string): 'file' | 'folder' | undefined;
  /** Entry names of a folder. */
  list(relative: string): string[];
  size(relative: string): number;
  /** Synchronous read; a source may serve only what it holds in memory. */
  read(relative: string, offset: number, length: number): Uint8Array;
  /** Asynchronous read; `signal` (a generation's) may stop it. */
  fetch(relative: string, offset: number, length: number, signal?: AbortSignal): Promise<Uint8Array>;
}

export class FileError extends Error {
  constructor(readonly code: string, readonly path: string, message: string) {
    super(`${code}: ${message}, ${path}`);
  }
}

type NodeFs = typeof import('node:fs');
type NodePath = typeof import('node:path');
type NodeOs = typeof import('node:os');

interface NodeModules { fs: NodeFs; path: NodePath; os: NodeOs }
let nodeModules: NodeModules | undefined;

/** Node's fs and path, fetched at run time so that browser bundles never import them. */
function node(what: string): NodeModules {
  if (nodeModules) return nodeModules;
  const get = (globalThis as { process?: { getBuiltinModule?: (id: string) => unknown } }).process?.getBuiltinModule;
  if (!get) throw new FileError('ENOSYS', what, 'no file system here: mount a source for this path (mountFiles)');
  nodeModules = { fs: get('node:fs') as NodeFs, path: get('node:path') as NodePath, os: get('node:os') as NodeOs };
  return nodeModules;
}

const mounts = new Map<string, FileSource>();

/** Serves every path under `root` from `source` until the returned function is called. */
export function mountFiles(root: string, source: FileSource): () => void {
  const key = root.replace(/\/+$/, '');
  if (!isUrlLike(key)) throw new Error(`mount root ${root} is not a URL or "name:" root`);
  if (mounts.has(key)) throw new Error(`${key} is mounted already`);
  mounts.set(key, source);
  return () => {
    if (mounts.get(key) === source) mounts.delete(key);
  };
}

function mounted(file: string): { source: FileSource; relative: string } | undefined {
  for (const [root, source] of mounts) {
    if (file === root) return { source, relative: '' };
    if (file.startsWith(`${root}/`)) return { source, relative: file.slice(root.length + 1) };
  }
  return undefined;
}

/** True where the path is served by a mounted source rather than Node's file system. */
export const isMounted = (file: string): boolean => mounted(file) !== undefined;

/** Normalises "a/./b/../c" segments of a path below a mount (which has no cwd to resolve against). */
function normalise(file: string): string {
  const m = /^([a-z][a-z0-9+.-]*:\/\/[^/]*|[a-z][a-z0-9+.-]*:)?(.*)$/i.exec(file)!;
  const [prefix = '', rest] = [m[1], m[2]];
  const out: string[] = [];
  for (const part of rest.split('/')) {
    if (part === '..') out.pop();
    else if (part !== '.' && part !== '') out.push(part);
  }
  return `${prefix}${rest.startsWith('/') || prefix.includes('//') ? '/' : ''}${out.join('/')}`;
}

const isUrlLike = (file: string): boolean => /^[a-z][a-z0-9+.-]*:/i.test(file) && !/^[a-z]:[\\/]/i.test(file);

/** An absolute path (Node) or the normalised mounted/URL path. */
export function resolvePath(file: string): string {
  return isUrlLike(file) ? normalise(file) : node(file).path.resolve(file);
}

export function joinPath(...parts: string[]): string {
  return isUrlLike(parts[0]) ? normalise(parts.join('/')) : node(parts[0]).path.join(...parts);
}

export function dirName(file: string): string {
  return isUrlLike(file) ? normalise(file).replace(/\/[^/]*$/, '') : node(file).path.dirname(file);
}

export function baseName(file: string): string {
  return isUrlLike(file) ? normalise(file).replace(/^.*\//, '') : node(file).path.basename(file);
}

export function isAbsolutePath(file: string): boolean {
  return isUrlLike(file) || node(file).path.isAbsolute(file);
}

export function fileKind(file: string): 'file' | 'folder' | undefined {
  const m = mounted(file);
  if (m) return m.source.kind(m.relative);
  const stat = node(file).fs.statSync(file, { throwIfNoEntry: false });
  return stat === undefined ? undefined : stat.isDirectory() ? 'folder' : 'file';
}

export function listFolder(dir: string): string[] {
  const m = mounted(dir);
  return m ? m.source.list(m.relative) : node(dir).fs.readdirSync(dir);
}

export function fileSize(file: string): number {
  const m = mounted(file);
  return m ? m.source.size(m.relative) : node(file).fs.statSync(file).size;
}

export function readTextFile(file: string): string {
  return isMounted(file) ? new TextDecoder().decode(readWholeFile(file)) : node(file).fs.readFileSync(file, 'utf8');
}

export function readWholeFile(file: string): Uint8Array {
  const m = mounted(file);
  return m ? m.source.read(m.relative, 0, m.source.size(m.relative)) : new Uint8Array(node(file).fs.readFileSync(file));
}

/** The real path of a Node file (symlinks followed); a mounted path is its own. */
export function realPath(file: string): string {
  return isMounted(file) ? file : node(file).fs.realpathSync(file);
}

/** The 32-bit WebAssembly memory onnxruntime-web loads every model into (on WebGPU too, before uploading): 4 GiB at most. */
const WASM_MEMORY = 4 * 2 ** 30;

/** Whether this runs in Node: told by its getBuiltinModule, not by a global `process`, which pages often define. */
export function onNode(): boolean {
  return Boolean((globalThis as { process?: { getBuiltinModule?: unknown } }).process?.getBuiltinModule);
}

/**
 * The machine's memory in bytes; in a browser, what the page may use: navigator.deviceMemory
 * (else 4 GiB), at most what WebAssembly can address.
 */
export function totalMemory(): number {
  if (onNode()) return node('memory').os.totalmem();
  const gib = (globalThis as { navigator?: { deviceMemory?: number } }).navigator?.deviceMemory ?? 4;
  return Math.min(gib * 2 ** 30, WASM_MEMORY);
}

/** Largest single read; Node refuses lengths of 2 GiB and more. */
const IO_CHUNK = 1 << 30;

/** An open file for synchronous positioned reads (a descriptor on Node). */
export interface ReadHandle {
  readonly size: number;
  /** Fills `target` from `position`; returns the bytes read (fewer at the end of the file). */
  read(target: Uint8Array, position: number): number;
  close(): void;
}

export function openForReading(file: string): ReadHandle {
  const m = mounted(file);
  if (m) {
    const kind = m.source.kind(m.relative);
    if (kind === undefined) throw new FileError('ENOENT', file, 'no such file');
    if (kind === 'folder') throw new FileError('EISDIR', file, 'is a folder');
    const size = m.source.size(m.relative);
    return {
      size,
      read(target, position) {
        const n = Math.max(0, Math.min(target.length, size - position));
        target.set(m.source.read(m.relative, position, n));
        return n;
      },
      close() {},
    };
  }
  const { fs } = node(file);
  const fd = fs.openSync(file, 'r');
  try {
    const stat = fs.fstatSync(fd);
    if (!stat.isFile()) throw new FileError(stat.isDirectory() ? 'EISDIR' : 'EINVAL', file, 'not a regular file');
    let closed = false;
    return {
      size: stat.size,
      read(target, position) {
        let done = 0;
        while (done < target.length) {
          const n = fs.readSync(fd, target, done, Math.min(IO_CHUNK, target.length - done), position + done);
          if (n === 0) break;
          done += n;
        }
        return done;
      },
      close() {
        if (!closed) fs.closeSync(fd);
        closed = true;
      },
    };
  } catch (err) {
    fs.closeSync(fd);
    throw err;
  }
}

/** Bytes of a file region, read asynchronously (the way sessions get tensor data from a mounted source). */
export async function fetchBytes(file: string, offset: number, length: number, signal?: AbortSignal): Promise<Uint8Array> {
  const m = mounted(file);
  if (m) return m.source.fetch(m.relative, offset, length, signal);
  const handle = openForReading(file);
  try {
    const out = new Uint8Array(length);
    if (handle.read(out, offset) !== length) throw new FileError('EIO', file, `ended before byte ${offset + length}`);
    return out;
  } finally {
    handle.close();
  }
}

/** Every file below `dir` with its size, by path relative to `dir` ("unet/config.json"): a served folder's listing. */
export function listFilesRecursively(dir: string): Record<string, number> {
  const out: Record<string, number> = {};
  const walk = (relative: string) => {
    for (const name of listFolder(relative === '' ? dir : joinPath(dir, relative)).sort()) {
      const child = relative === '' ? name : `${relative}/${name}`;
      const full = joinPath(dir, child);
      if (fileKind(full) === 'folder') walk(child);
      else out[child] = fileSize(full);
    }
  };
  walk('');
  return out;
}
