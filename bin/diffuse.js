#!/usr/bin/env node
// Runs the TypeScript CLI through tsx, so the package works from a clone without a build step.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

// glibc gives every freed block over 32 MB (its largest mmap threshold) back to the kernel, so at
// 1024² each segment's activations are fresh pages to fault in on every run. Measured on two
// PixArt-α blocks at 1024²: 12% of the CPU time in the kernel, runs 11.5–13.2 s → 9.3–9.7 s with
// malloc kept in the heap. glibc reads its tunables only at start, so the CLI restarts itself
// once with them; the user's own GLIBC_TUNABLES are kept, first, and DIFFUSE_USER_GLIBC_TUNABLES
// (set here) marks the restart.
const MALLOC_TUNABLES = 'glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967296';
const userTunables = process.env.GLIBC_TUNABLES ?? '';
const onGlibc = process.platform === 'linux' && Boolean(process.report?.getReport().header.glibcVersionRuntime);

if (onGlibc && process.env.DIFFUSE_USER_GLIBC_TUNABLES === undefined && !userTunables.includes('glibc.malloc.mmap_max')) {
  const env = { ...process.env, DIFFUSE_USER_GLIBC_TUNABLES: userTunables, GLIBC_TUNABLES: [userTunables, MALLOC_TUNABLES].filter(Boolean).join(':') };
  // The child has its own process group, so a terminal's Ctrl-C reaches it once, passed on from
  // here to that group, as does any signal sent to this process (the CLI stops after the current step on the
  // first Ctrl-C and at once on the second).
  const child = spawn(process.execPath, [...process.execArgv, ...process.argv.slice(1)], { stdio: 'inherit', env, detached: true });
  // To its whole group: a script it runs (bench --pytorch's Python) stops with it instead of running on orphaned.
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
    process.on(signal, () => {
      try {
        process.kill(-child.pid, signal);
      } catch {
        child.kill(signal);
      }
    });
  }
  child.on('error', (err) => {
    console.error(`diffuse: could not restart node (${err.message})`);
    process.exit(1);
  });
  child.on('exit', (code, signal) => {
    if (signal) {
      process.removeAllListeners(signal);
      process.kill(process.pid, signal);
    }
    process.exit(code ?? 1);
  });
} else {
  if (process.env.DIFFUSE_USER_GLIBC_TUNABLES !== undefined) {
    // Restarted from above: a parent that vanished without passing a signal on was killed hard
    // (SIGKILL), and so is this process, rather than running on as an orphan.
    const parent = process.ppid;
    setInterval(() => process.ppid !== parent && process.kill(process.pid, 'SIGKILL'), 500).unref();
  }
  const { main } = builtIsCurrent() ? await import('../dist/cli/main.js') : await fromSources();
  process.exitCode = await main(process.argv.slice(2));
}

/** The TypeScript sources through tsx: a clone without a build, or sources edited since the build. */
async function fromSources() {
  const { register } = await import('tsx/esm/api');
  register();
  return import('../src/cli/main.ts');
}

/**
 * The compiled package (`npm run build`, run by `npm ci` and `npm pack`) when no source is newer
 * than it: it starts about 0.2 s sooner than compiling through tsx.
 */
function builtIsCurrent() {
  const built = fs.statSync(new URL('../dist/cli/main.js', import.meta.url), { throwIfNoEntry: false });
  if (!built) return false;
  const src = fileURLToPath(new URL('../src', import.meta.url));
  return fs.readdirSync(src, { recursive: true }).every((name) => fs.statSync(path.join(src, name)).mtimeMs <= built.mtimeMs);
}
