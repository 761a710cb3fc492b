import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { makeFolder, writeFileAtomically } from '../src/util/files.ts';
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

test('makeFolder makes nested folders, accepts an existing one, and fails at once where it cannot (a file in the way, /proc)', (t) => {
  const dir = tempDir(t);
  makeFolder(path.join(dir, 'a', 'b', 'c'));
  assert.ok(fs.statSync(path.join(dir, 'a', 'b', 'c')).isDirectory());
  makeFolder(path.join(dir, 'a', 'b'));
  fs.writeFileSync(path.join(dir, 'file'), '');
  assert.throws(() => makeFolder(path.join(dir, 'file')), { code: 'EEXIST' });
  assert.throws(() => makeFolder(path.join(dir, 'file', 'x')), { code: 'ENOTDIR' });
  // Node 20's fs.mkdirSync(…, { recursive: true }) never returns here.
  assert.throws(() => makeFolder('/proc/diffusion-ts/x'), { code: 'ENOENT' });
});
