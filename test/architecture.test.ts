/**
 * The layers of docs/ARCHITECTURE.md, checked on the imports of every source file: models and
 * methods meet only in the protocol below both (src/runtime/), so no model imports a method and no
 * method imports a model; nothing below the pipelines imports a pipeline, the bench or the CLI.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';

const SRC = path.join(import.meta.dirname, '..', 'src');

/** Folders of src/ each folder may import from (besides itself). */
const ALLOWED: Record<string, string[]> = {
  graph: [],
  util: ['errors'],
  errors: [],
  io: ['errors'],
  runtime: ['graph', 'errors', 'util', 'io'],
  weights: ['graph', 'errors', 'util', 'io'],
  models: ['graph', 'runtime', 'weights', 'errors', 'util', 'io'],
  accel: ['graph', 'runtime', 'errors', 'util', 'io'],
};

function importsOf(file: string): string[] {
  const text = fs.readFileSync(file, 'utf8');
  return [...text.matchAll(/^(?:import|export)\b[^;]*?from '(\.[^']+)'/gms)].map((m) => m[1]);
}

test('layers: models import no method, methods no model, the protocol neither', () => {
  let checked = 0;
  for (const folder of fs.readdirSync(SRC)) {
    const dir = path.join(SRC, folder);
    if (!fs.statSync(dir).isDirectory() || !(folder in ALLOWED)) continue;
    for (const name of fs.readdirSync(dir).filter((f) => f.endsWith('.ts'))) {
      for (const spec of importsOf(path.join(dir, name))) {
        const target = path.relative(SRC, path.resolve(dir, spec)).split(path.sep)[0].replace(/\.ts$/, '');
        if (target === folder) continue;
        assert.ok(ALLOWED[folder].includes(target), `src/${folder}/${name} imports ${spec} (src/${target}): ${folder} may import only ${ALLOWED[folder].join(', ') || 'itself'}`);
        checked++;
      }
    }
  }
  assert.ok(checked > 20, `${checked} imports checked`);
});

/** Relative imports that stay in the bundle: `import type` is erased. */
function runtimeImportsOf(file: string): string[] {
  const text = fs.readFileSync(file, 'utf8');
  return [...text.matchAll(/^(?:import|export)(?!\s+type\b)\b[^;]*?from '(\.[^']+)'/gms)].map((m) => m[1]);
}

test('the browser entry reaches no Node-only API: no node: imports, no Buffer, no require, process only for getBuiltinModule', () => {
  const seen = new Set<string>();
  const queue = [path.join(SRC, 'browser.ts')];
  while (queue.length) {
    const file = queue.pop()!;
    if (seen.has(file)) continue;
    seen.add(file);
    for (const spec of runtimeImportsOf(file)) queue.push(path.resolve(path.dirname(file), spec));
  }
  const problems: string[] = [];
  for (const file of seen) {
    const code = fs.readFileSync(file, 'utf8').replace(/\/\*[\s\S]*?\*\/|\/\/.*$/gm, '');
    const name = path.relative(path.join(SRC, '..'), file);
    for (const m of code.matchAll(/^import(?!\s+type\b)[^;]*?from '(node:[^']+|fs|path|os|child_process|worker_threads)'/gm)) problems.push(`${name} imports ${m[1]}`);
    if (/\bBuffer\s*[.(]/.test(code)) problems.push(`${name} uses Buffer`);
    if (/\brequire\s*\(/.test(code)) problems.push(`${name} calls require`);
    for (const m of code.matchAll(/\bprocess\.(\w+)/g)) if (m[1] !== 'getBuiltinModule') problems.push(`${name} uses process.${m[1]}`);
  }
  assert.deepEqual(problems, []);
  assert.ok(seen.size > 30, `${seen.size} modules reached from src/browser.ts`);
});
