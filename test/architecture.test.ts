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
  runtime: ['graph', 'errors', 'io'],
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
