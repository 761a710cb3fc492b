/**
 * Model folders that are not on a local disk: served over HTTP (read with Range requests) or
 * picked by a user in a browser. The listing (path → size) is known up front; the small files
 * loading needs (JSON, vocabularies, sentencepiece models) and every safetensors header are read
 * once when the folder is mounted and served synchronously; tensor bytes are read only when a
 * session asks for them, a segment at a time — a weights file is never held whole.
 */
import { InputError, checkAborted, describe } from '../errors.ts';
import { FileError, mountFiles, type FileSource } from './files.ts';

/** Reads `length` bytes at `offset` of a file named by its path in the folder. */
export type RangeReader = (relative: string, offset: number, length: number, signal?: AbortSignal) => Promise<Uint8Array>;

/** Path inside the folder → size in bytes. */
export type FolderListing = Record<string, number>;

/** Files read whole at mount time. */
const SMALL_FILE = /\.(json|txt|model)$/;
/** First read of a safetensors file: the 8-byte length and, usually, the whole header. */
const HEADER_GUESS = 1 << 16;
/** Safetensors headers larger than this are refused (the reader's own limit is far above real ones). */
const MAX_HEADER = 100_000_000;

export async function prefetchedSource(where: string, listing: FolderListing, reader: RangeReader): Promise<FileSource> {
  for (const [file, size] of Object.entries(listing)) {
    if (file === '' || file.startsWith('/') || file.split('/').some((part) => part === '' || part === '.' || part === '..')) {
      throw new InputError(`${where}: listing`, 'file name is not a plain path inside the folder', 'e.g. "unet/config.json"', describe(file));
    }
    if (!Number.isSafeInteger(size) || size < 0) {
      throw new InputError(`${where}: listing.${file}`, 'wrong size', 'a byte count', describe(size));
    }
  }
  /** The bytes held: whole small files, the header prefix of safetensors files. */
  const held = new Map<string, Uint8Array>();
  await Promise.all(Object.entries(listing).map(async ([file, size]) => {
    if (SMALL_FILE.test(file)) held.set(file, await reader(file, 0, size));
    else if (file.endsWith('.safetensors')) {
      let head = await reader(file, 0, Math.min(size, HEADER_GUESS));
      if (head.length >= 8) {
        const n = Number(new DataView(head.buffer, head.byteOffset, 8).getBigUint64(0, true));
        const want = Math.min(size, 8 + Math.min(n, MAX_HEADER));
        if (want > head.length) {
          const rest = await reader(file, head.length, want - head.length);
          const joined = new Uint8Array(want);
          joined.set(head);
          joined.set(rest, head.length);
          head = joined;
        }
      }
      held.set(file, head);
    }
  }));
  const files = Object.keys(listing);
  const isFolder = (relative: string) => relative === '' || files.some((f) => f.startsWith(`${relative}/`));
  return {
    kind: (relative) => (Object.hasOwn(listing, relative) ? 'file' : isFolder(relative) ? 'folder' : undefined),
    list(relative) {
      if (!isFolder(relative)) throw new FileError(Object.hasOwn(listing, relative) ? 'ENOTDIR' : 'ENOENT', `${where}/${relative}`, 'no such folder');
      const prefix = relative === '' ? '' : `${relative}/`;
      return [...new Set(files.filter((f) => f.startsWith(prefix)).map((f) => f.slice(prefix.length).split('/')[0]))];
    },
    size(relative) {
      if (!Object.hasOwn(listing, relative)) throw new FileError('ENOENT', `${where}/${relative}`, 'no such file');
      return listing[relative];
    },
    read(relative, offset, length) {
      const bytes = held.get(relative);
      if (bytes === undefined || offset + length > bytes.length) {
        if (!Object.hasOwn(listing, relative)) throw new FileError('ENOENT', `${where}/${relative}`, 'no such file');
        // Past a header's end means a tensor: those are read asynchronously, when a session needs them.
        throw new FileError('EIO', `${where}/${relative}`, `bytes ${offset}…${offset + length} are not held in memory`);
      }
      return bytes.subarray(offset, offset + length);
    },
    fetch: async (relative, offset, length, signal) => {
      const bytes = await reader(relative, offset, length, signal);
      if (bytes.length !== length) throw new FileError('EIO', `${where}/${relative}`, `${bytes.length} bytes read of ${length} at ${offset}`);
      return bytes;
    },
  };
}

/** A RangeReader over HTTP: one `Range: bytes=a-b` request per read, refusing servers that ignore it. */
export function httpRangeReader(baseUrl: string, fetchFn: typeof fetch = fetch): RangeReader {
  const base = baseUrl.replace(/\/+$/, '');
  return async (relative, offset, length, signal) => {
    if (length === 0) return new Uint8Array(0);
    const url = `${base}/${relative.split('/').map(encodeURIComponent).join('/')}`;
    let response: Response;
    try {
      response = await fetchFn(url, { headers: { Range: `bytes=${offset}-${offset + length - 1}` }, signal });
    } catch (err) {
      checkAborted(signal);
      throw new InputError(url, `cannot be fetched (${(err as Error).message})`);
    }
    if (response.status !== 206 && response.status !== 200) {
      await response.body?.cancel();
      throw new InputError(url, 'cannot be fetched', 'HTTP 206', `HTTP ${response.status}`);
    }
    // Servers of single-page apps answer a missing file with their index page.
    const type = response.headers.get('content-type') ?? '';
    if (/^text\/html\b/i.test(type)) {
      await response.body?.cancel();
      throw new InputError(url, 'the server answered with a web page, not the file (is the folder\'s URL right?)', 'the file\'s bytes', type);
    }
    // 200 is the whole file: fine when that is what was asked for, else the server ignores Range.
    const whole = Number(response.headers.get('content-length') ?? NaN);
    if (response.status === 200 && (offset !== 0 || !(whole <= length))) {
      await response.body?.cancel();
      throw new InputError(url, 'the server ignores Range requests', 'HTTP 206 Partial Content', 'HTTP 200 with the whole file');
    }
    const bytes = new Uint8Array(await response.arrayBuffer());
    if (bytes.length !== length) {
      throw new InputError(url, `the server sent ${bytes.length} bytes for bytes ${offset}–${offset + length - 1} (does the listing give this file's size?)`, `${length} bytes`, `${bytes.length}`);
    }
    return bytes;
  };
}

/** Name of the listing a served model folder carries: `{ "files": { path: size } }`. */
export const LISTING_FILE = 'files.json';

/**
 * Mounts a model folder served over HTTP at its URL, so that loadPipeline(url) reads it; the
 * listing comes from `<url>/files.json` unless given. Returns the function that unmounts it.
 */
export async function mountHttpFolder(url: string, options: { listing?: FolderListing; fetch?: typeof fetch } = {}): Promise<() => void> {
  const root = url.replace(/\/+$/, '');
  const fetchFn = options.fetch ?? fetch;
  let listing = options.listing;
  if (listing === undefined) {
    const where = `${root}/${LISTING_FILE}`;
    let body: unknown;
    try {
      const response = await fetchFn(where);
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      body = await response.json();
    } catch (err) {
      throw new InputError(where, `cannot read the folder's listing (${(err as Error).message})`, '{ "files": { "path": size, … } }');
    }
    const files = (body as { files?: unknown } | null)?.files;
    if (typeof files !== 'object' || files === null || Array.isArray(files)) {
      throw new InputError(`${where}: files`, 'missing or not an object', 'an object of path → size', describe(files));
    }
    listing = files as FolderListing;
  }
  return mountFiles(root, await prefetchedSource(root, listing, httpRangeReader(root, fetchFn)));
}

/** A file a user picked, with its path inside the picked folder (a browser's webkitRelativePath). */
export interface PickedFile {
  path: string;
  file: Blob;
}

/**
 * Mounts files a user picked (a directory picker's File objects) under `root` (e.g. "picked:my-model"),
 * the picked folder's own name stripped from their paths. Returns the function that unmounts it.
 */
export async function mountPickedFiles(root: string, picked: PickedFile[]): Promise<() => void> {
  // webkitRelativePath starts with the picked folder's name: "my-model/unet/config.json".
  const top = new Set(picked.map((p) => p.path.split('/')[0]));
  const strip = top.size === 1 && picked.every((p) => p.path.includes('/'));
  const byPath = new Map(picked.map((p) => [strip ? p.path.slice(p.path.indexOf('/') + 1) : p.path, p.file]));
  const listing = Object.fromEntries([...byPath].map(([p, file]) => [p, file.size]));
  const reader: RangeReader = async (relative, offset, length) =>
    new Uint8Array(await byPath.get(relative)!.slice(offset, offset + length).arrayBuffer());
  return mountFiles(root, await prefetchedSource(root, listing, reader));
}
