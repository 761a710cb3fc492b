/** Text chunks (tEXt / iTXt) of a PNG, read directly from its chunk list. */
export function pngText(bytes: Uint8Array): Record<string, string> {
  const view = new DataView(bytes.buffer, bytes.byteOffset);
  const text: Record<string, string> = {};
  for (let offset = 8; offset < bytes.length;) {
    const length = view.getUint32(offset);
    const type = new TextDecoder().decode(bytes.subarray(offset + 4, offset + 8));
    const body = bytes.subarray(offset + 8, offset + 8 + length);
    if (type === 'iTXt') {
      const keyEnd = body.indexOf(0);
      const key = new TextDecoder().decode(body.subarray(0, keyEnd));
      // keyword\0 compression-flag compression-method language\0 translated-keyword\0 text
      let p = keyEnd + 3;
      p = body.indexOf(0, p) + 1;
      p = body.indexOf(0, p) + 1;
      text[key] = new TextDecoder().decode(body.subarray(p));
    }
    offset += 12 + length;
  }
  return text;
}
