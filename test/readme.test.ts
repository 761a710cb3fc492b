/**
 * README's code blocks, run as a user would: every `sh` line (but `npm ci` and `npm test`, which CI
 * itself runs to get here) and every `ts` block, in a fresh folder. `path/to/…` folders stand for
 * the tiny seeded fixtures of the same kind.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { readImage } from '../src/image/read.ts';
import { tempDir } from './helpers/files.ts';

const ROOT = path.join(import.meta.dirname, '..');
const FIXTURES = path.join(ROOT, 'test', 'fixtures');
const PLACEHOLDERS: Record<string, string> = {
  'path/to/stable-diffusion-v1-5': path.join(FIXTURES, 'tiny-sd1'),
  'path/to/PixArt-XL-2-512x512': path.join(FIXTURES, 'tiny-pixart-alpha'),
  'path/to/DiT-XL-2-256': path.join(FIXTURES, 'tiny-dit'),
  'path/to/skip-dit-xl-2-256.pt': path.join(FIXTURES, 'skip-dit', 'tiny-skip-dit.pt'),
  'path/to/sd-vae-ft-ema': path.join(FIXTURES, 'tiny-dit', 'vae'),
};
/** What the CI run does itself before any test. */
const SETUP = new Set(['npm ci', 'npm test']);

const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');
const blocks = [...readme.matchAll(/^```(\w+)\n([\s\S]*?)^```$/gm)].map((m) => ({ lang: m[1], code: m[2] }));

function withFixtures(text: string): string {
  let out = text;
  for (const [placeholder, fixture] of Object.entries(PLACEHOLDERS)) out = out.split(placeholder).join(fixture);
  return out;
}

test('README: every code block is sh or ts, and the folders it names exist here', () => {
  assert.ok(blocks.length >= 6);
  for (const b of blocks) assert.ok(b.lang === 'sh' || b.lang === 'ts', `a ${b.lang} block`);
  for (const placeholder of readme.match(/path\/to\/[\w.-]+/g) ?? []) assert.ok(PLACEHOLDERS[placeholder], `${placeholder} stands for a fixture`);
});

/** A block that starts `diffuse serve` is a session: one script, the service in the background. */
const isService = (b: { code: string }) => /^npx diffuse serve\b/m.test(b.code);

test('README: every shell command runs (exit 0)', (t) => {
  const cwd = tempDir(t);
  const commands = blocks.filter((b) => b.lang === 'sh' && !isService(b))
    .flatMap((b) => b.code.replace(/\\\n\s*/g, ' ').split('\n'))
    .map((line) => line.replace(/\s+#\s.*$/, '').trim())
    .filter((line) => line !== '' && !SETUP.has(line));
  assert.ok(commands.length >= 10);
  for (const command of commands) {
    assert.match(command, /^npx diffuse /, 'README shell lines are diffuse commands');
    const shell = withFixtures(command).replace(/^npx diffuse /, `${JSON.stringify(process.execPath)} ${JSON.stringify(path.join(ROOT, 'bin', 'diffuse.js'))} `);
    const run = spawnSync('bash', ['-c', shell], { cwd, encoding: 'utf8', timeout: 300_000 });
    assert.equal(run.status, 0, `${command}\n${run.stderr}`);
    t.diagnostic(`ok: ${command}`);
  }
  assert.ok(fs.existsSync(path.join(cwd, 'red.png')) && fs.existsSync(path.join(cwd, 'circles-2.png')) && fs.existsSync(path.join(cwd, 'dog-1.png')));
});

function freePort(): Promise<number> {
  return new Promise<number>((resolve) => {
    const probe = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = probe.address() as net.AddressInfo;
      probe.close(() => resolve(port));
    });
  });
}

/** Runs a service session: free ports instead of the default ones, in case something holds them. */
async function runSession(code: string, cwd: string, redisPort?: number) {
  const port = await freePort();
  const script = code
    .replace(/^npx diffuse serve/m, `npx diffuse serve --port ${port}`)
    .replace(/^npx diffuse (serve|worker)/gm, `npx diffuse $1 --results ${JSON.stringify(path.join(cwd, 'results'))}`)
    .replaceAll('localhost:8174', `localhost:${port}`)
    .replaceAll('redis://127.0.0.1:6379', `redis://127.0.0.1:${redisPort}`)
    .replace(/^npx diffuse /gm, `${JSON.stringify(process.execPath)} ${JSON.stringify(path.join(ROOT, 'bin', 'diffuse.js'))} `);
  const run = spawnSync('bash', ['-c', `set -euo pipefail\n${script}\nwait`], { cwd, encoding: 'utf8', timeout: 300_000 });
  assert.equal(run.status, 0, `${run.stdout}\n${run.stderr}`);
  assert.match(run.stdout, /^event: done$/m, run.stdout);
  assert.match(run.stderr, /diffuse serve: stopped/);
  return run;
}

const sessions = blocks.filter((b) => b.lang === 'sh' && isService(b));

test('README: the service session runs as written (serve in the background, curl, the image fetched, kill)', async (t) => {
  const cwd = tempDir(t);
  assert.equal(sessions.length, 2);
  await runSession(sessions[0].code, cwd);
  const image = readImage(path.join(cwd, 'served.png'));
  assert.equal(image.width, 64);
});

const REDIS_SERVER = '/usr/bin/redis-server';
test('README: the Redis session runs as written (serve --redis, a worker, curl, kill)', {
  skip: fs.existsSync(REDIS_SERVER) || process.env.CI ? false : `${REDIS_SERVER} is missing (apt-get install redis-server)`,
}, async (t) => {
  const cwd = tempDir(t);
  const redisPort = await freePort();
  const redis = spawn(REDIS_SERVER, ['--port', `${redisPort}`, '--bind', '127.0.0.1', '--dir', cwd, '--save', ''], { stdio: 'ignore' });
  try {
    const run = await runSession(sessions[1].code, cwd, redisPort);
    assert.match(run.stderr, /diffuse worker: stopped/);
    assert.equal(fs.readdirSync(path.join(cwd, 'results')).length, 1);
  } finally {
    redis.kill();
  }
});

test('README: every TypeScript example runs as written (imports from the package)', (t) => {
  const cwd = tempDir(t);
  for (const [i, b] of blocks.filter((x) => x.lang === 'ts').entries()) {
    // .mts: an ES module, as in a project with "type": "module".
    const file = path.join(cwd, `example-${i}.mts`);
    fs.writeFileSync(file, withFixtures(b.code).replace(/from 'diffusion\.ts'/g, `from ${JSON.stringify(path.join(ROOT, 'src', 'index.ts'))}`));
    const run = spawnSync(process.execPath, ['--import', import.meta.resolve('tsx'), file], { cwd, encoding: 'utf8', timeout: 300_000 });
    assert.equal(run.status, 0, `example ${i}:\n${run.stderr}`);
  }
  assert.ok(fs.readdirSync(cwd).some((f) => /^red-\d+\.png$/.test(f)));
});
