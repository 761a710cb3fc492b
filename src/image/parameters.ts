/**
 * The PNG `parameters` text in AUTOMATIC1111's layout, which image viewers and tools read: the
 * prompt, a negative-prompt line (text-to-image only), then `Key: value` pairs. `generate` and
 * the service write the same text.
 */
export interface ImageParameters {
  subject: string;
  /** Undefined for class-to-image models, which have no negative prompt line. */
  negativePrompt?: string;
  steps: number;
  sampler: string;
  cfgScale: number;
  seed: number;
  width: number;
  height: number;
  model: string;
  /** img2img's strength (A1111 calls it "Denoising strength"). */
  strength?: number;
  /** The accelerations, each as `--accel` takes it. */
  accel: string[];
  /** The latent channels guidance applied to, where not all (the authors' DiT: 3). */
  guidedChannels?: number;
}

export function formatParameters(p: ImageParameters): string {
  return [
    p.subject,
    ...(p.negativePrompt === undefined ? [] : [`Negative prompt: ${p.negativePrompt}`]),
    `Steps: ${p.steps}, Sampler: ${p.sampler}, CFG scale: ${p.cfgScale}, Seed: ${p.seed}, Size: ${p.width}x${p.height}, Model: ${p.model}` +
      (p.strength !== undefined ? `, Denoising strength: ${p.strength}` : '') +
      // quoted, as A1111 quotes values that contain commas
      (p.accel.length ? `, Accel: "${p.accel.join(' + ')}"` : '') +
      (p.guidedChannels === 3 ? ', CFG channels: 0-2 (forward_with_cfg)' : ''),
  ].join('\n');
}
