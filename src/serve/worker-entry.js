// A worker thread's first module: registers tsx (as bin/diffuse.js does for the main thread; a
// worker does not inherit it), then runs the TypeScript worker.
import { register } from 'tsx/esm/api';

register();
await import('./worker.ts');
