/**
 * The Vulkan drivers through which onnxruntime-node's WebGPU finds an adapter on a machine without a
 * GPU, as environment variables for a child process: Chromium's SwiftShader (apt-get install chromium
 * libvulkan1; no shader-f16) and Mesa 25's lavapipe, which has float16 shaders (bash tools/lavapipe.sh).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

const LAVAPIPE_DIR = path.join(import.meta.dirname, '..', '.cache', 'lavapipe');
export const SWIFTSHADER = { VK_ICD_FILENAMES: '/usr/lib/chromium/vk_swiftshader_icd.json' };
export const LAVAPIPE = { VK_ICD_FILENAMES: path.join(LAVAPIPE_DIR, 'icd.json'), LD_LIBRARY_PATH: path.join(LAVAPIPE_DIR, 'lib') };
const LOADERS = ['/usr/lib/x86_64-linux-gnu/libvulkan.so.1', '/usr/lib/aarch64-linux-gnu/libvulkan.so.1'];

/** Whether the Vulkan loader and this driver's manifest are both on the machine. */
export function installed(driver: { VK_ICD_FILENAMES: string }): boolean {
  return fs.existsSync(driver.VK_ICD_FILENAMES) && LOADERS.some((f) => fs.existsSync(f));
}
