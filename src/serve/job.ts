/**
 * What `POST /v1/images` accepts, checked field by field before anything is queued: every refusal
 * names the field, what was expected and what was found. The same table is the OpenAPI schema
 * (`requestSchema`), so the document and the checks cannot drift apart.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { requestAccelSpecs } from '../accel/index.ts';
import { InputError, describe } from '../errors.ts';
import { pipelineClasses, pipelineFamily } from '../pipelines/families.ts';
import { REFERENCE_MODELS } from '../pipelines/reference-model.ts';
import { SCHEDULER_NAMES, isSchedulerName, type SchedulerName } from '../schedulers/index.ts';

/** Bounds a service keeps whatever the model allows: a request cannot ask for more work than this. */
export const SERVICE_LIMITS = { promptChars: 2000, size: 2048, steps: 200, batch: 4, guidance: 50, classes: 4, accelChars: 500 };

/** A checked request, ready for a worker. */
export interface ImageJob {
  model: string;
  /** The folder the model name resolved to. */
  folder: string;
  prompt?: string;
  negativePrompt?: string;
  classLabels?: (number | string)[];
  steps?: number;
  guidanceScale?: number;
  width?: number;
  height?: number;
  seed: number;
  batch: number;
  scheduler?: SchedulerName;
  /** The request's `accel` text, as `--accel` takes it ("tgate:gate_step=10 + deepcache"). */
  accel: string[];
}

/** A refusal of a request: the HTTP status and the message body, naming the field. */
export class RequestError extends Error {
  constructor(readonly status: number, readonly field: string, readonly problem: string, readonly expected?: string, readonly found?: string) {
    super(`${field}: ${problem}${expected ? `; expected ${expected}` : ''}${found !== undefined ? `, found ${found}` : ''}`);
  }

  body(): Record<string, unknown> {
    return { error: { field: this.field, message: this.message, expected: this.expected, found: this.found } };
  }
}

/** A body field: its JSON type and bounds, and the library request option it sets (`option`), if named otherwise. */
type FieldSpec = { type: 'string' | 'integer' | 'number'; min?: number; max?: number; maxLength?: number; description: string; enum?: readonly string[]; option?: string };

const FIELDS: Record<string, FieldSpec | { oneOf: true; description: string; option: string }> = {
  model: { type: 'string', maxLength: 200, description: `a folder name in the server's model directory, or ${Object.keys(REFERENCE_MODELS).join(', ')}` },
  prompt: { type: 'string', maxLength: SERVICE_LIMITS.promptChars, description: 'text-to-image models: required ("" draws without one)' },
  negative_prompt: { type: 'string', maxLength: SERVICE_LIMITS.promptChars, description: 'text-to-image models', option: 'negativePrompt' },
  class: { oneOf: true, description: 'DiT: class ids or names (id2label), one image each; required there, refused elsewhere', option: 'classLabels' },
  steps: { type: 'integer', min: 1, max: SERVICE_LIMITS.steps, description: 'default: the pipeline\'s own' },
  width: { type: 'integer', min: 8, max: SERVICE_LIMITS.size, description: 'text-to-image models: a multiple of 8; default: the model\'s size' },
  height: { type: 'integer', min: 8, max: SERVICE_LIMITS.size, description: 'text-to-image models: a multiple of 8; default: the model\'s size' },
  seed: { type: 'integer', min: 0, max: 2 ** 32 - 1, description: 'default: random (the job says which)' },
  batch: { type: 'integer', min: 1, max: SERVICE_LIMITS.batch, description: 'text-to-image models: images per prompt', option: 'imagesPerPrompt' },
  guidance: { type: 'number', min: 0, max: SERVICE_LIMITS.guidance, description: 'CFG scale; default: the pipeline\'s own', option: 'guidanceScale' },
  scheduler: { type: 'string', enum: SCHEDULER_NAMES, description: 'default: the model\'s own' },
  accel: { type: 'string', maxLength: SERVICE_LIMITS.accelChars, description: 'methods as --accel takes them, joined by " + " (e.g. "tgate:gate_step=10 + deepcache"); no files: an attn-reuse schedule as its 0/1 digits' },
};

/** The body field of each library request option a request sets (`negativePrompt` → `negative_prompt`), for the pipeline's messages. */
export const FIELD_OF_OPTION: Readonly<Record<string, string>> = Object.fromEntries(
  Object.entries(FIELDS).filter(([name]) => name !== 'model').map(([name, f]) => [f.option ?? name, name]));

/** The request body's JSON schema, for the OpenAPI document. */
export function requestSchema(): Record<string, unknown> {
  const properties: Record<string, unknown> = {};
  for (const [name, f] of Object.entries(FIELDS)) {
    if ('oneOf' in f) {
      const label = { oneOf: [{ type: 'integer', minimum: 0 }, { type: 'string', maxLength: 200 }] };
      properties[name] = { description: f.description, oneOf: [label, { type: 'array', items: label, minItems: 1, maxItems: SERVICE_LIMITS.classes }] };
      continue;
    }
    properties[name] = {
      type: f.type, description: f.description,
      ...(f.min !== undefined ? { minimum: f.min } : {}), ...(f.max !== undefined ? { maximum: f.max } : {}),
      ...(f.maxLength !== undefined ? { maxLength: f.maxLength } : {}), ...(f.enum ? { enum: f.enum } : {}),
    };
  }
  return { type: 'object', required: ['model'], additionalProperties: false, properties };
}

function field(body: Record<string, unknown>, name: string): unknown {
  const value = body[name];
  if (value === undefined || value === null) return undefined;
  const f = FIELDS[name] as FieldSpec;
  if (f.type === 'string') {
    if (typeof value !== 'string') throw new RequestError(400, name, 'wrong type', 'a string', describe(value));
    if (f.maxLength !== undefined && value.length > f.maxLength) throw new RequestError(422, name, 'too long', `at most ${f.maxLength} characters`, `${value.length}`);
    if (f.enum && !f.enum.includes(value)) throw new RequestError(422, name, 'unknown value', f.enum.join(', '), JSON.stringify(value.slice(0, 50)));
    return value;
  }
  if (typeof value !== 'number' || !Number.isFinite(value)) throw new RequestError(400, name, 'wrong type', `a${f.type === 'integer' ? 'n integer' : ' number'}`, describe(value));
  if (f.type === 'integer' && !Number.isInteger(value)) throw new RequestError(422, name, 'not an integer', 'an integer', `${value}`);
  if (value < f.min! || value > f.max!) throw new RequestError(422, name, 'out of range', `from ${f.min} to ${f.max}`, `${value}`);
  return value;
}

/** A model name resolves inside the model directory only: one plain folder name, no paths. */
export function resolveModel(name: string, modelDir: string | undefined): string {
  if (Object.hasOwn(REFERENCE_MODELS, name)) return REFERENCE_MODELS[name];
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(name) || name.includes('..')) {
    throw new RequestError(422, 'model', 'not a model name', 'a folder name (letters, digits, ".", "_", "-")', JSON.stringify(name.slice(0, 100)));
  }
  const folders = modelDir ? modelFolders(modelDir) : [];
  const known = served(folders);
  if (!modelDir || !known.includes(name)) {
    const why = folders.find(([folder]) => folder === name)?.[1];
    if (why) throw new RequestError(422, 'model', `not a model this service runs (${why})`, pipelineClasses().join(', '), JSON.stringify(name));
    throw new RequestError(422, 'model', 'unknown model', [...Object.keys(REFERENCE_MODELS), ...known].join(', '), JSON.stringify(name));
  }
  return path.join(modelDir, name);
}

/** The names a request may give: the embedded reference models, then the model directory's folders. */
export function modelNames(modelDir: string | undefined): string[] {
  return [...Object.keys(REFERENCE_MODELS), ...(modelDir ? listModels(modelDir) : [])];
}

/** The model directory's diffusers folders a pipeline here runs (a model_index.json naming a class it runs). */
export function listModels(modelDir: string): string[] {
  return served(modelFolders(modelDir));
}

/** "models: …" for the operator's start line, then the model directory's folders no pipeline here runs, each with why. */
export function describeModels(modelDir: string | undefined): string {
  const skipped = (modelDir ? modelFolders(modelDir) : []).flatMap(([name, why]) => (why ? [`${name} (${why})`] : []));
  return `models: ${modelNames(modelDir).join(', ')}${skipped.length ? `; not served: ${skipped.join(', ')}` : ''}`;
}

/** The model directory's diffusers folders (those with a model_index.json), sorted, each with why it cannot be served (undefined: it can). */
function modelFolders(modelDir: string): [string, string | undefined][] {
  // Links count: an operator may link models in from elsewhere.
  return fs.readdirSync(modelDir).sort().filter((name) => fs.existsSync(path.join(modelDir, name, 'model_index.json')))
    .map((name) => [name, unservable(path.join(modelDir, name))]);
}

function served(folders: [string, string | undefined][]): string[] {
  return folders.filter(([, why]) => !why).map(([name]) => name);
}

/** A folder's model_index.json `_class_name`, or why it cannot be served (a pipeline here must run the class). */
function servedClass(dir: string): { className: string; why?: undefined } | { why: string } {
  let index: unknown;
  try {
    index = JSON.parse(fs.readFileSync(path.join(dir, 'model_index.json'), 'utf8'));
  } catch (e) {
    // The reason travels to HTTP clients: a code, never the server's paths.
    return { why: e instanceof SyntaxError ? 'model_index.json is not valid JSON' : `model_index.json cannot be read (${(e as NodeJS.ErrnoException).code ?? 'error'})` };
  }
  const className = typeof index === 'object' && index !== null ? (index as Record<string, unknown>)._class_name : undefined;
  if (typeof className !== 'string') return { why: 'model_index.json has no _class_name' };
  return pipelineFamily(className) ? { className } : { why: `${className}: no pipeline here runs it` };
}

/** Why a folder with a model_index.json cannot be served; undefined when a pipeline here runs its class. */
function unservable(dir: string): string | undefined {
  return servedClass(dir).why;
}

/** The fields only text-to-image models read; a class-to-image model (DiT) reads `class` instead. */
const TEXT_FIELDS = ['prompt', 'negative_prompt', 'width', 'height', 'batch'];

/**
 * A field the model's pipeline does not read would do nothing: refused, as is a missing prompt
 * (text-to-image) or class (DiT).
 */
function checkFamilyFields(b: Record<string, unknown>, model: string, folder: string): void {
  const served = servedClass(folder);
  // resolveModel checked the folder; it can change on disk since.
  if (served.why !== undefined) throw new RequestError(422, 'model', `not a model this service runs (${served.why})`, pipelineClasses().join(', '), JSON.stringify(model));
  const { className } = served;
  const classConditional = pipelineFamily(className) === 'dit';
  // null stands for absent, as everywhere in a request.
  const given = (key: string) => b[key] !== undefined && b[key] !== null;
  for (const key of classConditional ? TEXT_FIELDS : ['class']) {
    if (given(key)) {
      throw new RequestError(422, key, `not read by ${model} (a ${className}), so it would do nothing`,
        classConditional ? 'class (a DiT draws classes, at its own size)' : 'prompt (classes are for DiT models)');
    }
  }
  if (classConditional && !given('class')) throw new RequestError(422, 'class', 'missing', `class ids or names for ${model} (a ${className})`);
  if (!classConditional && !given('prompt')) throw new RequestError(422, 'prompt', 'missing', `a prompt for ${model} (a ${className}); "" draws without one`);
}

/** Checks a parsed JSON body; throws RequestError (400 wrong type, 422 wrong value). */
export function checkJobRequest(body: unknown, modelDir: string | undefined, randomSeed: () => number): ImageJob {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new RequestError(400, 'body', 'not a JSON object', 'an object with at least "model"', describe(body));
  const b = body as Record<string, unknown>;
  for (const key of Object.keys(b)) {
    if (!Object.hasOwn(FIELDS, key)) throw new RequestError(422, key, 'unknown field', Object.keys(FIELDS).join(', '));
  }
  const model = field(b, 'model') as string | undefined;
  if (model === undefined) throw new RequestError(422, 'model', 'missing', 'a model name');
  const folder = resolveModel(model, modelDir);
  checkFamilyFields(b, model, folder);
  const width = field(b, 'width') as number | undefined;
  const height = field(b, 'height') as number | undefined;
  for (const [name, v] of [['width', width], ['height', height]] as const) {
    if (v !== undefined && v % 8 !== 0) throw new RequestError(422, name, 'not a multiple of 8', 'a multiple of 8', `${v}`);
  }
  const scheduler = field(b, 'scheduler') as string | undefined;
  const accelText = field(b, 'accel') as string | undefined;
  const accel = accelText === undefined || accelText.trim() === '' ? [] : accelText.split('+').map((s) => s.trim());
  // Checked here to refuse a bad method, knob or combination before it is queued; the worker checks it again.
  try {
    requestAccelSpecs(accel);
  } catch (err) {
    // The library's message names `accel` (and the method's knob) first: the field, then the rest.
    if (err instanceof InputError) throw new RequestError(422, 'accel', err.message.replace(/^accel:? ?/, ''));
    throw err;
  }
  return {
    model, folder,
    prompt: field(b, 'prompt') as string | undefined,
    negativePrompt: field(b, 'negative_prompt') as string | undefined,
    classLabels: classLabels(b.class),
    steps: field(b, 'steps') as number | undefined,
    guidanceScale: field(b, 'guidance') as number | undefined,
    width, height,
    seed: (field(b, 'seed') as number | undefined) ?? randomSeed(),
    batch: (field(b, 'batch') as number | undefined) ?? 1,
    scheduler: scheduler !== undefined && isSchedulerName(scheduler) ? scheduler : undefined,
    accel,
  };
}

function classLabels(value: unknown): (number | string)[] | undefined {
  if (value === undefined || value === null) return undefined;
  const list = Array.isArray(value) ? value : [value];
  if (list.length === 0 || list.length > SERVICE_LIMITS.classes) throw new RequestError(422, 'class', 'wrong count', `1 to ${SERVICE_LIMITS.classes} labels`, `${list.length}`);
  for (const label of list) {
    const ok = (typeof label === 'number' && Number.isSafeInteger(label) && label >= 0) || (typeof label === 'string' && label.length > 0 && label.length <= 200);
    if (!ok) throw new RequestError(400, 'class', 'wrong label', 'class ids (integers ≥ 0) or names', describe(label));
  }
  return list as (number | string)[];
}
