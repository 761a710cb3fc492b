/**
 * The threads a service's workers may use. onnxruntime-node cannot share one thread pool between
 * sessions (the C API's global pools are not reachable from it): each of a model's ~70 sessions
 * owns `threads - 1` pool threads (measured: a worker process with the reference model loaded
 * holds 15 threads at --threads 1, 86 at --threads 2). So more threads per session than cores
 * buys nothing and multiplies into thousands of threads: refused. More workers × threads than
 * cores only makes them contend: said once at startup.
 */
import * as os from 'node:os';
import { InputError } from '../errors.ts';

export function checkThreadBudget(workers: number, threads: number, log: (line: string) => void): void {
  const cores = os.availableParallelism();
  if (threads > cores) {
    throw new InputError('--threads', `more threads per session than this machine's ${cores} cores (each of a model's sessions keeps its own pool)`, `at most ${cores}`, `${threads}`);
  }
  if (workers * threads > cores) {
    log(`${workers} workers × ${threads} threads exceed this machine's ${cores} cores: they will contend (fewer workers or --threads keep jobs apart)`);
  }
}
