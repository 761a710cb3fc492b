// Builds the demo page (demo/index.html) into dist-demo/: the engine's browser entry with
// onnxruntime-web in place of onnxruntime-node (its wasm and WebGPU backends share the API), as
// package.json's "browser" field maps it for any bundler that reads it (Vite, webpack, esbuild).
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vite';

export default defineConfig({
  root: fileURLToPath(new URL('.', import.meta.url)),
  logLevel: 'warn',
  build: { outDir: fileURLToPath(new URL('../dist-demo', import.meta.url)), emptyOutDir: true, target: 'esnext', chunkSizeWarningLimit: 30_000 },
});
