import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { writeFileAtomically } from '../src/util/files.ts';
import { tempDir } from './helpers/files.ts';

test('writeFileAtomically writes whole files and leaves nothing behind when the rename fails', (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'out.json');
  writeFileAtomically(file, '{"a": 1}');
  writeFileAtomically(file, new Uint8Array([123, 125]));
  assert.equal(fs.readFileSync(file, 'utf8'), '{}');
  const folder = path.join(dir, 'taken');
  fs.mkdirSync(path.join(folder, 'inside'), { recursive: true });
  assert.throws(() => writeFileAtomically(folder, 'x'));
  assert.deepEqual(fs.readdirSync(dir).sort(), ['out.json', 'taken']);
});
