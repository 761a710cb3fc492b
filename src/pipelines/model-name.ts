/** How a model given by path is named in what the tools write (PNG metadata, JSON reports). */
import * as path from 'node:path';

/** A PyTorch checkpoint given as --model (DiT / Skip-DiT `.pt`), not a folder. */
export const isCheckpointFile = (model: string) => /\.pth?$/i.test(model);

/**
 * The model's name for PNGs and JSON reports, never the user's folder layout: the folder's name, "org/name" for
 * a Hugging Face cache snapshot (models--org--name/snapshots/<rev>), a checkpoint's file name,
 * "reference" for the embedded one.
 */
export function modelName(dir: string, given: string | undefined): string {
  if (given === undefined || given === 'reference') return 'reference';
  if (isCheckpointFile(given)) return path.basename(given);
  const hub = /models--([^/\\]+)[/\\]snapshots[/\\][^/\\]+[/\\]?$/.exec(path.resolve(dir));
  return hub ? hub[1].replace(/--/g, '/') : path.basename(path.resolve(dir));
}
