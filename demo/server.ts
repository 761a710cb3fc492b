/**
 * Serves the built demo page (dist-demo/) and the embedded models on loopback: static files with
 * Range support, each model folder's listing at /models/<name>/files.json, and the COOP/COEP
 * headers that make the page cross-origin isolated (onnxruntime-web needs it for threads).
 *
 *   npm run demo          (builds, then serves on 127.0.0.1:$PORT, default 8173)
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { listFilesRecursively } from '../src/io/files.ts';
import { LISTING_FILE } from '../src/io/prefetched-source.ts';

const ROOT = path.resolve(import.meta.dirname, '..');
const PAGE = path.join(ROOT, 'dist-demo');
const MODELS = path.join(ROOT, 'assets');
const SERVED_MODELS = ['reference-model', 'reference-dit', 'reference-skip-dit'];

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.mjs': 'text/javascript', '.wasm': 'application/wasm',
  '.json': 'application/json', '.txt': 'text/plain; charset=utf-8', '.css': 'text/css',
};

/** The file a URL path names, or undefined when it is outside what is served. */
function fileFor(urlPath: string): string | undefined {
  const parts = urlPath.split('/').filter(Boolean);
  if (parts.some((p) => p === '..' || p.includes('\\'))) return undefined;
  if (parts[0] === 'models') return SERVED_MODELS.includes(parts[1]) ? path.join(MODELS, ...parts.slice(1)) : undefined;
  return path.join(PAGE, ...(parts.length ? parts : ['index.html']));
}

/** Answers one request: the page, a model file (Range requests honoured) or a model folder's listing. */
export function demoRequestHandler(req: http.IncomingMessage, res: http.ServerResponse): void {
  res.setHeader('Cross-Origin-Opener-Policy', 'same-origin');
  res.setHeader('Cross-Origin-Embedder-Policy', 'require-corp');
  res.setHeader('Cross-Origin-Resource-Policy', 'same-origin');
  let urlPath: string;
  try {
    urlPath = decodeURIComponent(new URL(req.url ?? '/', 'http://localhost').pathname);
  } catch {
    res.writeHead(400).end('bad path');
    return;
  }
  const parts = urlPath.split('/').filter(Boolean);
  if (parts[0] === 'models' && parts.length === 3 && parts[2] === LISTING_FILE && SERVED_MODELS.includes(parts[1])) {
    res.setHeader('Content-Type', TYPES['.json']);
    res.end(JSON.stringify({ files: listFilesRecursively(path.join(MODELS, parts[1])) }));
    return;
  }
  const file = fileFor(urlPath);
  const stat = file && fs.statSync(file, { throwIfNoEntry: false });
  if (!file || !stat || !stat.isFile()) {
    res.writeHead(404).end('not found');
    return;
  }
  res.setHeader('Content-Type', TYPES[path.extname(file)] ?? 'application/octet-stream');
  res.setHeader('Accept-Ranges', 'bytes');
  const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
  let [start, end] = [0, stat.size - 1];
  if (range) {
    start = Number(range[1]);
    end = range[2] === '' ? stat.size - 1 : Math.min(Number(range[2]), stat.size - 1);
    if (start > end) {
      res.writeHead(416, { 'Content-Range': `bytes */${stat.size}` }).end();
      return;
    }
    res.writeHead(206, { 'Content-Range': `bytes ${start}-${end}/${stat.size}`, 'Content-Length': end - start + 1 });
  } else {
    res.writeHead(200, { 'Content-Length': stat.size });
  }
  if (req.method === 'HEAD') res.end();
  else fs.createReadStream(file, { start, end }).pipe(res);
}

export function createDemoServer(): http.Server {
  return http.createServer(demoRequestHandler);
}

if (process.argv[1] === import.meta.filename) {
  const port = Number(process.env.PORT ?? 8173);
  if (!/^\d+$/.test(process.env.PORT ?? '8173') || port > 65535) {
    console.error(`error: PORT: expected a port number from 0 to 65535, found ${JSON.stringify(process.env.PORT)}`);
    process.exit(1);
  }
  if (!fs.existsSync(path.join(PAGE, 'index.html'))) {
    console.error('error: dist-demo/ is not built; run `npm run demo` (it builds first)');
    process.exit(1);
  }
  const server = createDemoServer();
  server.on('error', (err: NodeJS.ErrnoException) => {
    console.error(`error: cannot listen on 127.0.0.1:${port} (${err.code ?? err.message}); set PORT to another port`);
    process.exit(1);
  });
  server.listen(port, '127.0.0.1', () => {
    const { port: bound } = server.address() as { port: number };
    console.log(`diffusion.ts demo: http://127.0.0.1:${bound}/  (PORT=${bound}; Ctrl-C stops)`);
  });
}
