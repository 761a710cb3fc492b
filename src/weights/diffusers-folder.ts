/**
 * Layout of a diffusers pipeline folder: model_index.json at the top, one sub-folder per
 * component holding config.json (scheduler_config.json, ...) and safetensors weights,
 * either one file or shards listed by a *.safetensors.index.json.
 */
import { InputError, describe } from '../errors.ts';
import { baseName, dirName, fileKind, isAbsolutePath, joinPath, listFolder as listEntries, resolvePath } from '../io/files.ts';
import { readJsonObject, type Config } from './config.ts';
import { SafetensorsFile, type TensorInfo } from './safetensors.ts';

/** The weights of one component, possibly spread over several shard files. */
export class WeightSet {
  /** Folder (or file) the weights came from, used in error messages. */
  readonly source: string;
  readonly files: readonly SafetensorsFile[];
  private readonly owner = new Map<string, SafetensorsFile>();

  constructor(source: string, files: SafetensorsFile[]) {
    this.source = source;
    this.files = files;
    for (const file of files) {
      for (const name of file.tensors.keys()) {
        const other = this.owner.get(name);
        if (other !== undefined) {
          throw new InputError(source, `tensor "${name}" appears in two weight files`, 'each tensor in one file',
            `${baseName(other.path)} and ${baseName(file.path)}`);
        }
        this.owner.set(name, file);
      }
    }
  }

  has(name: string): boolean {
    return this.owner.has(name);
  }

  info(name: string): TensorInfo {
    return this.fileOf(name).info(name);
  }

  names(): string[] {
    return [...this.owner.keys()];
  }

  /** Bytes the tensors take as float32 (what sessions hold them as, whatever the file stores). */
  float32Bytes(): number {
    let bytes = 0;
    for (const name of this.owner.keys()) bytes += this.info(name).shape.reduce((a, b) => a * b, 4);
    return bytes;
  }

  readFloat32(name: string): Float32Array {
    return this.fileOf(name).readFloat32(name);
  }

  readRaw(name: string): Uint8Array {
    return this.fileOf(name).readRaw(name);
  }

  close(): void {
    for (const file of this.files) file.close();
  }

  private fileOf(name: string): SafetensorsFile {
    const file = this.owner.get(name);
    if (file === undefined) {
      throw new InputError(this.source,
        `tensor "${name}" is missing from the weights (${this.owner.size} tensors present)`);
    }
    return file;
  }
}

/** Opens every file, closing those already opened if a later one fails. */
function openAll(source: string, filePaths: string[]): WeightSet {
  const opened: SafetensorsFile[] = [];
  try {
    for (const p of filePaths) opened.push(SafetensorsFile.open(p));
    return new WeightSet(source, opened);
  } catch (err) {
    for (const f of opened) f.close();
    throw err;
  }
}

/** Opens the shards named by a safetensors index (`{"weight_map": {tensor: shard file}}`). */
export function openShardedWeights(indexPath: string): WeightSet {
  const abs = resolvePath(indexPath);
  const dir = dirName(abs);
  const index = readJsonObject(abs);
  const map = index.weight_map;
  if (typeof map !== 'object' || map === null || Array.isArray(map)) {
    throw new InputError(`${abs}: weight_map`, 'missing or not an object', 'an object of tensor name -> shard file',
      describe(map));
  }
  const shards: string[] = [];
  for (const [name, shard] of Object.entries(map)) {
    if (typeof shard !== 'string' || shard === '' || isAbsolutePath(shard) ||
        shard.split(/[\\/]/).includes('..')) {
      throw new InputError(`${abs}: weight_map.${name}`, 'invalid shard file name',
        'a file name inside the same folder', describe(shard));
    }
    if (!shards.includes(shard)) shards.push(shard);
  }
  const set = openAll(abs, shards.map((s) => joinPath(dir, s)));
  for (const [name, shard] of Object.entries(map as Record<string, string>)) {
    const file = set.files[shards.indexOf(shard)];
    if (!file.tensors.has(name)) {
      set.close();
      throw new InputError(`${abs}: weight_map.${name}`, 'tensor is not in the shard the index names',
        `tensor in ${shard}`, 'no such tensor there');
    }
  }
  return set;
}

const MODEL_BASES = ['diffusion_pytorch_model', 'model'];

/** File names diffusers / transformers use for a component's weights, best first. */
function candidateNames(variant: string | undefined): { single: string[]; index: string[] } {
  const v = variant === undefined ? '' : `.${variant}`;
  return {
    single: MODEL_BASES.map((b) => `${b}${v}.safetensors`),
    // Current diffusers/transformers put the variant before ".json"; older diffusers before ".index".
    index: MODEL_BASES.flatMap((b) => variant === undefined
      ? [`${b}.safetensors.index.json`]
      : [`${b}.safetensors.index${v}.json`, `${b}.safetensors${v}.index.json`]),
  };
}

const PICKLE_WEIGHTS = /\.(bin|ckpt|pt|pth)$/;
/** The variant in model.fp16.safetensors, model.fp16-00001-of-00002.safetensors, model.safetensors.index.fp16.json. */
const VARIANT_FILE =
  /^(?:diffusion_pytorch_model|model)(?:\.safetensors\.index)?\.([^.-]+)(?:-\d+-of-\d+)?\.(?:safetensors|json)$/;

/**
 * Opens a component's safetensors weights, picking the file name as diffusers does;
 * `variant` (e.g. "fp16") selects `diffusion_pytorch_model.fp16.safetensors` and the like.
 */
export function openComponentWeights(componentDir: string, options: { variant?: string } = {}): WeightSet {
  const dir = resolvePath(componentDir);
  const entries = listFolder(dir);
  const { variant } = options;
  const { single, index } = candidateNames(variant);
  const singleFound = single.find((n) => entries.includes(n));
  if (singleFound !== undefined) return openAll(dir, [joinPath(dir, singleFound)]);
  const indexFound = index.find((n) => entries.includes(n));
  if (indexFound !== undefined) return openShardedWeights(joinPath(dir, indexFound));

  const present = entries.length === 0 ? 'an empty folder' : entries.join(', ');
  const hasSafetensors = entries.some((n) => n.endsWith('.safetensors') || n.endsWith('.index.json'));
  if (!hasSafetensors && entries.some((n) => PICKLE_WEIGHTS.test(n))) {
    throw new InputError(dir, 'only PyTorch pickle weights (.bin/.ckpt/.pt) found; only .safetensors is supported ' +
      '(convert them to safetensors first)', 'a .safetensors file', present);
  }
  const what = variant === undefined ? 'no safetensors weights' : `no "${variant}" variant safetensors weights`;
  const variants = [...new Set(entries.flatMap((n) => VARIANT_FILE.exec(n)?.[1] ?? []))];
  const hint = variants.length > 0 ? ` (variants present: ${variants.join(', ')})` : '';
  throw new InputError(dir, what + hint, [...single, ...index].join(' or '), present);
}

function listFolder(dir: string): string[] {
  try {
    return listEntries(dir).sort();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new InputError(dir, 'folder not found');
    if (code === 'ENOTDIR') throw new InputError(dir, 'not a folder');
    throw new InputError(dir, `cannot list folder (${code ?? (err as Error).message})`);
  }
}

export interface PipelineComponent {
  /** Library that defines the class: "diffusers" or "transformers". */
  library: string;
  className: string;
  /** Absolute path of the component's sub-folder. */
  dir: string;
}

export interface PipelineFolder {
  dir: string;
  className: string;
  diffusersVersion?: string;
  /** null where model_index.json lists the component as [null, null] (not present). */
  components: Record<string, PipelineComponent | null>;
  /** Pipeline settings that are not components, e.g. force_zeros_for_empty_prompt. */
  options: Record<string, unknown>;
}

export function readPipelineFolder(dir: string): PipelineFolder {
  const abs = resolvePath(dir);
  let kind: ReturnType<typeof fileKind>;
  try {
    kind = fileKind(abs);
  } catch {
    kind = undefined;
  }
  if (kind === undefined) throw new InputError(abs, 'model folder not found');
  if (kind !== 'folder') throw new InputError(abs, 'not a folder', 'a diffusers model folder');
  const indexPath = joinPath(abs, 'model_index.json');
  if (fileKind(indexPath) === undefined) {
    throw new InputError(indexPath, 'missing model_index.json: not a diffusers pipeline folder');
  }
  const index = readJsonObject(indexPath);

  const className = index._class_name;
  if (typeof className !== 'string' || className === '') {
    throw new InputError(`${indexPath}: _class_name`, 'missing or invalid pipeline class name', 'a string',
      describe(className));
  }
  const version = index._diffusers_version;
  if (version !== undefined && typeof version !== 'string') {
    throw new InputError(`${indexPath}: _diffusers_version`, 'invalid version', 'a string', describe(version));
  }

  const components: Record<string, PipelineComponent | null> = {};
  const options: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(index)) {
    if (key.startsWith('_')) continue;
    // Non-list values (booleans, null) are pipeline settings, not components.
    if (!Array.isArray(value)) {
      options[key] = value;
      continue;
    }
    if (value.length === 2 && value[0] === null && value[1] === null) {
      components[key] = null;
      continue;
    }
    if (value.length !== 2 || typeof value[0] !== 'string' || typeof value[1] !== 'string' ||
        value[0] === '' || value[1] === '') {
      throw new InputError(`${indexPath}: ${key}`, 'malformed component entry',
        '["library", "ClassName"] or [null, null]', describe(value));
    }
    if (key.includes('/') || key.includes('\\') || key === '.' || key === '..') {
      throw new InputError(`${indexPath}: ${key}`, 'component name is not a plain folder name');
    }
    components[key] = { library: value[0], className: value[1], dir: joinPath(abs, key) };
  }
  const result: PipelineFolder = { dir: abs, className, components, options };
  if (version !== undefined) result.diffusersVersion = version;
  return result;
}

/** The component's config file name: schedulers, tokenizers and image processors use their own. */
function configFileName(component: PipelineComponent): string {
  if (component.className.endsWith('Scheduler')) return 'scheduler_config.json';
  if (component.className.includes('Tokenizer')) return 'tokenizer_config.json';
  if (component.className.endsWith('ImageProcessor') || component.className.endsWith('FeatureExtractor')) {
    return 'preprocessor_config.json';
  }
  return 'config.json';
}

/** Looks a component up in the pipeline, failing if it is unknown or listed as absent. */
export function getComponent(folder: PipelineFolder, component: string): PipelineComponent {
  const where = `${joinPath(folder.dir, 'model_index.json')}: ${component}`;
  if (!Object.prototype.hasOwnProperty.call(folder.components, component)) {
    throw new InputError(where, 'pipeline has no such component', `one of ${Object.keys(folder.components).join(', ')}`,
      'nothing');
  }
  const entry = folder.components[component];
  if (entry === null) throw new InputError(where, 'component is absent from this pipeline ([null, null])');
  return entry;
}

export function readComponentConfig(folder: PipelineFolder, component: string): { config: Config; where: string } {
  const entry = getComponent(folder, component);
  const where = joinPath(entry.dir, configFileName(entry));
  return { config: readJsonObject(where), where };
}

/**
 * DiTPipeline's label table: every comma-separated name of id2label, stripped, to its id; a name
 * listed under several ids keeps the last one in the file's key order, which diffusers writes
 * sorted as strings ("0", "1", "10", …) — JSON.parse would order integer keys numerically.
 */
export function labelTable(id2label: unknown, where: string): Map<string, number> {
  if (typeof id2label !== 'object' || id2label === null || Array.isArray(id2label)) {
    throw new InputError(`${where}: id2label`, 'has the wrong type', 'an object of class id → names', describe(id2label));
  }
  const labels = new Map<string, number>();
  for (const id of Object.keys(id2label).sort()) {
    const names = (id2label as Record<string, unknown>)[id];
    if (!/^\d+$/.test(id) || typeof names !== 'string') {
      throw new InputError(`${where}: id2label.${id}`, 'is not a class', 'a numeric id mapped to comma-separated names', describe(names));
    }
    for (const name of names.split(',')) labels.set(name.trim(), Number(id));
  }
  return labels;
}
