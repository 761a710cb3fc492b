/** Runs a tools/reference/ Python script inside a reference environment (../shared/reference/). */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { InputError, Interrupted } from '../errors.ts';

/** Refuses a --pytorch env.sh that is not there, before any timing (the comparison runs last). */
export function checkReferenceEnv(envScript: string): void {
  if (!fs.statSync(envScript, { throwIfNoEntry: false })?.isFile()) {
    throw new InputError('--pytorch', 'no such file', 'a reference environment\'s env.sh (../shared/reference/setup.sh makes one)', envScript);
  }
}

/**
 * Sources `envScript`, runs `tools/reference/<script>` with `args` and returns the JSON objects it
 * printed one per line. PyTorch runs with the environment the user gave us: the malloc tunables
 * bin/diffuse.js adds for our own process are taken back out.
 */
export function runReferenceScript<T = Record<string, unknown>>(envScript: string, script: string, args: string[]): T[] {
  const file = path.resolve(import.meta.dirname, '../../tools/reference', script);
  const command = `source ${JSON.stringify(path.resolve(envScript))} && python ${[file, ...args].map((a) => JSON.stringify(a)).join(' ')}`;
  const env = { ...process.env };
  if (env.DIFFUSE_USER_GLIBC_TUNABLES !== undefined) {
    if (env.DIFFUSE_USER_GLIBC_TUNABLES) env.GLIBC_TUNABLES = env.DIFFUSE_USER_GLIBC_TUNABLES;
    else delete env.GLIBC_TUNABLES;
    delete env.DIFFUSE_USER_GLIBC_TUNABLES;
  }
  const run = spawnSync('bash', ['-c', command], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], env });
  // Ctrl-C reaches the script too (bin/diffuse.js signals the process group): stopped, not failed.
  if (run.signal === 'SIGINT' || run.signal === 'SIGTERM') throw new Interrupted(run.signal);
  if (run.status === 130 || run.status === 143) throw new Interrupted(run.status === 130 ? 'SIGINT' : 'SIGTERM');
  if (run.status !== 0) throw new InputError('--pytorch', `the reference script ${script} failed (exit ${run.status})`, 'a working reference env.sh');
  return run.stdout.trim().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as T);
}
