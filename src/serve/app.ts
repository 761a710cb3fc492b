/**
 * The HTTP API of `diffuse serve` (Hono): jobs in, progress and images out. Every refusal is JSON
 * naming the field, what was expected and what was found (400 wrong type or malformed, 413 too
 * large, 422 wrong value, 401 no token, 429 too many requests); no response carries a stack trace.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createHash, randomInt, timingSafeEqual } from 'node:crypto';
import { Hono, type Context } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import { streamSSE } from 'hono/streaming';
import { getConnInfo } from '@hono/node-server/conninfo';
import { checkJobRequest, modelNames, requestSchema, RequestError } from './job.ts';
import { FINISHED, type JobEvent, type JobQueue, type JobRecord, type JobState, type QueueStats } from './queue.ts';

export interface ServiceOptions {
  queue: JobQueue;
  resultsDir: string;
  modelDir?: string;
  /** Bearer token required on /v1 and /metrics; undefined: none (loopback only, checked by the CLI). */
  token?: string;
  /** Jobs one token (or one address, without tokens) may submit per minute. */
  ratePerMinute: number;
  /** Largest request body, in bytes. */
  maxBodyBytes: number;
}

/** `{job id}.png` is a job's first image, `{job id}-{i}.png` the others. */
const IMAGE_NAME = /^([0-9a-f-]{36})(?:-(\d{1,2}))?\.png$/;

function imageUrl(file: string): string {
  return `/v1/images/${file.replace(/-0\.png$/, '.png')}`;
}

function refuse(c: Context, e: RequestError) {
  if (e.status === 503) c.header('Retry-After', '30');
  return c.json(e.body(), e.status as 400);
}

/** A job as clients see it. */
function view(record: JobRecord, position: number) {
  const seconds = (a?: number, b?: number) => (a !== undefined && b !== undefined ? (b - a) / 1000 : undefined);
  return {
    id: record.id,
    state: record.state,
    model: record.job.model,
    progress: record.progress,
    queue_position: position,
    attempts: record.attempts,
    created_at: new Date(record.createdAt).toISOString(),
    timings: { queued_seconds: seconds(record.createdAt, record.startedAt ?? record.finishedAt), run_seconds: seconds(record.startedAt, record.finishedAt), ...record.outcome?.timings },
    seed: record.job.seed,
    ...(record.estimate ? {
      estimate: { macs: record.estimate.macs, baseline_macs: record.estimate.baselineMacs, speedup: record.estimate.baselineMacs / record.estimate.macs },
    } : {}),
    ...(record.outcome ? {
      steps: record.outcome.steps, guidance: record.outcome.guidanceScale, scheduler: record.outcome.scheduler,
      macs: record.outcome.macs, accel: record.outcome.accel, images: record.outcome.images.map(imageUrl),
      ...(record.outcome.warnings?.length ? { warnings: record.outcome.warnings } : {}),
    } : {}),
    ...(record.error ? { error: record.error } : {}),
  };
}

/** A fixed window per key: enough to stop one client from flooding the queue. Ended windows are dropped once a minute. */
function rateLimiter(perMinute: number) {
  const windows = new Map<string, { start: number; count: number }>();
  let swept = Date.now();
  return (key: string): number | undefined => {
    const now = Date.now();
    if (now - swept >= 60_000) {
      for (const [k, w] of windows) if (now - w.start >= 60_000) windows.delete(k);
      swept = now;
    }
    let w = windows.get(key);
    if (!w || now - w.start >= 60_000) windows.set(key, (w = { start: now, count: 0 }));
    if (++w.count <= perMinute) return undefined;
    return Math.ceil((w.start + 60_000 - now) / 1000);
  };
}

/** The connection's address: a header such as X-Forwarded-For is the client's to write, so one client could be many. */
function clientAddress(c: Context): string {
  try {
    return getConnInfo(c).remote.address ?? 'unknown';
  } catch {
    return 'unknown'; // not served over a socket (app.request in-process)
  }
}

function sameToken(given: string, expected: string): boolean {
  const a = Buffer.from(given);
  const b = Buffer.from(expected);
  return a.length === b.length && timingSafeEqual(a, b);
}

export function createApp(o: ServiceOptions): Hono {
  const app = new Hono();
  const limited = rateLimiter(o.ratePerMinute);

  app.onError((err, c) => {
    if (err instanceof RequestError) return refuse(c, err);
    process.stderr.write(`diffuse serve: ${err.stack ?? err.message}\n`);
    return c.json({ error: { message: 'internal error' } }, 500);
  });
  app.notFound((c) => c.json({ error: { field: 'path', message: `no such endpoint: ${c.req.method} ${c.req.path}` } }, 404));

  const requireToken = async (c: Context, next: () => Promise<void>) => {
    const given = /^Bearer (.+)$/.exec(c.req.header('authorization') ?? '')?.[1];
    if (o.token !== undefined && (given === undefined || !sameToken(given, o.token))) {
      return c.json({ error: { field: 'Authorization', message: 'Authorization: a bearer token is required', expected: 'Bearer <token>' } }, 401);
    }
    await next();
  };
  app.use('/v1/*', requireToken);
  app.use('/metrics', requireToken);
  // It lists the model directory's folders, which are as private as the jobs.
  app.use('/openapi.json', requireToken);

  app.post('/v1/images', bodyLimit({
    maxSize: o.maxBodyBytes,
    onError: (c) => c.json({ error: { field: 'body', message: `body: too large; expected at most ${o.maxBodyBytes} bytes` } }, 413),
  }), async (c) => {
    const client = o.token !== undefined ? 'token' : clientAddress(c);
    const wait = limited(client);
    if (wait !== undefined) {
      c.header('Retry-After', `${wait}`);
      return c.json({ error: { field: 'rate', message: `too many jobs; expected at most ${o.ratePerMinute} per minute`, retry_after_seconds: wait } }, 429);
    }
    const type = c.req.header('content-type') ?? '';
    if (!type.startsWith('application/json')) throw new RequestError(400, 'Content-Type', 'wrong media type', 'application/json', JSON.stringify(type.slice(0, 100)));
    let body: unknown;
    try {
      body = JSON.parse(await c.req.text());
    } catch {
      throw new RequestError(400, 'body', 'not valid JSON', 'a JSON object');
    }
    const key = c.req.header('idempotency-key');
    if (key !== undefined && (key.length === 0 || key.length > 200)) throw new RequestError(400, 'Idempotency-Key', 'wrong length', '1 to 200 characters', `${key.length}`);
    const job = checkJobRequest(body, o.modelDir, () => randomInt(0, 2 ** 32 - 1));
    const idempotency = key === undefined ? undefined : { key, body: createHash('sha256').update(sortedJson(body)).digest('hex') };
    const { record } = await o.queue.submit(job, idempotency);
    c.header('Location', `/v1/jobs/${record.id}`);
    return c.json(view(record, await o.queue.position(record.id)), 202);
  });

  const jobOr404 = async (c: Context): Promise<JobRecord> => {
    const record = await o.queue.get(c.req.param('id') ?? '');
    if (!record) throw new RequestError(404, 'id', 'no such job', undefined, JSON.stringify((c.req.param('id') ?? '').slice(0, 100)));
    return record;
  };

  app.get('/v1/jobs/:id', async (c) => {
    const record = await jobOr404(c);
    return c.json(view(record, await o.queue.position(record.id)));
  });

  app.delete('/v1/jobs/:id', async (c) => {
    const record = await jobOr404(c);
    if (!await o.queue.cancel(record.id)) throw new RequestError(409, 'id', `the job is already ${record.state}`);
    const now = await o.queue.get(record.id) ?? record;
    return c.json(view(now, await o.queue.position(now.id)), 202);
  });

  app.get('/v1/jobs/:id/events', async (c) => {
    const record = await jobOr404(c);
    return streamSSE(c, async (stream) => {
      const send = async (type: string, r: JobRecord) => stream.writeSSE({ event: type, data: JSON.stringify(view(r, await o.queue.position(r.id))) });
      // Listening starts before the job is read again, so no event falls between the two; events
      // are written in order, and the stream ends only after the last one is written.
      let written = Promise.resolve();
      let stop = () => {};
      const ended = new Promise<void>((resolve) => {
        const listener = (e: JobEvent) => {
          if (e.id !== record.id) return;
          written = written.then(() => send(e.type, e.record));
          if (FINISHED.has(e.type as JobState)) stop();
        };
        stop = () => {
          o.queue.off('job', listener);
          void written.then(resolve);
        };
        o.queue.on('job', listener);
        stream.onAbort(stop);
      });
      const now = await o.queue.get(record.id) ?? record;
      written = written.then(() => send(FINISHED.has(now.state) ? now.state : now.state === 'running' ? 'started' : 'queued', now));
      if (FINISHED.has(now.state)) stop();
      await ended;
    });
  });

  app.get('/v1/images/:name', (c) => {
    const name = c.req.param('name');
    const m = IMAGE_NAME.exec(name);
    if (!m) throw new RequestError(404, 'name', 'no such image', 'a name from a job\'s images', JSON.stringify(name.slice(0, 100)));
    const file = path.join(o.resultsDir, `${m[1]}-${m[2] ?? 0}.png`);
    if (!fs.existsSync(file)) throw new RequestError(404, 'name', 'no such image', undefined, JSON.stringify(name));
    return c.body(fs.readFileSync(file), 200, { 'Content-Type': 'image/png' });
  });

  app.get('/healthz', async (c) => c.json({ ok: true, ...countsOf(await o.queue.stats()) }));

  app.get('/metrics', async (c) => c.text(metrics(await o.queue.stats()), 200, { 'Content-Type': 'text/plain; version=0.0.4' }));

  app.get('/openapi.json', (c) => c.json(openApi(o)));
  return app;
}

function countsOf(s: QueueStats) {
  return { queued: s.queued, running: s.running, done: s.done, failed: s.failed, cancelled: s.cancelled };
}

/** Prometheus text exposition. */
function metrics(s: QueueStats): string {
  const lines: string[] = [];
  const metric = (name: string, type: string, help: string, value: number) => lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`, `${name} ${value}`);
  metric('diffusion_queue_depth', 'gauge', 'Jobs waiting for a worker.', s.queued);
  metric('diffusion_jobs_running', 'gauge', 'Jobs being generated.', s.running);
  metric('diffusion_jobs_done_total', 'counter', 'Jobs finished with images.', s.done);
  metric('diffusion_jobs_failed_total', 'counter', 'Jobs that failed.', s.failed);
  metric('diffusion_jobs_cancelled_total', 'counter', 'Jobs cancelled.', s.cancelled);
  metric('diffusion_step_seconds_sum', 'counter', 'Seconds spent in denoising steps.', s.stepSeconds);
  metric('diffusion_step_seconds_count', 'counter', 'Denoising steps run.', s.steps);
  metric('diffusion_images_per_minute', 'gauge', 'Images finished in the last minute.', s.imagesLastMinute);
  return `${lines.join('\n')}\n`;
}

function openApi(o: ServiceOptions): Record<string, unknown> {
  const error = { type: 'object', properties: { error: { type: 'object', properties: { field: { type: 'string' }, message: { type: 'string' }, expected: { type: 'string' }, found: { type: 'string' } } } } };
  const job = { type: 'object', properties: { id: { type: 'string' }, state: { enum: ['queued', 'running', 'done', 'failed', 'cancelled'] }, progress: { type: 'object' }, queue_position: { type: 'integer' }, estimate: { type: 'object', properties: { macs: { type: 'number' }, baseline_macs: { type: 'number' }, speedup: { type: 'number' } } }, macs: { type: 'number' }, images: { type: 'array', items: { type: 'string' } }, warnings: { type: 'array', items: { type: 'string' } }, error: { type: 'string' } } };
  const json = (schema: unknown) => ({ content: { 'application/json': { schema } } });
  const id = [{ name: 'id', in: 'path', required: true, schema: { type: 'string' } }];
  return {
    openapi: '3.1.0',
    info: { title: 'diffusion.ts image service', version: '1', description: `Models: ${modelNames(o.modelDir).join(', ')}.` },
    ...(o.token !== undefined ? { security: [{ bearer: [] }], components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } } } : {}),
    paths: {
      '/v1/images': { post: {
        summary: 'Queue an image job', parameters: [{ name: 'Idempotency-Key', in: 'header', schema: { type: 'string', maxLength: 200 } }],
        requestBody: { required: true, ...json(requestSchema()) },
        responses: { 202: { description: 'queued', ...json(job) }, 400: { description: 'malformed', ...json(error) }, 413: { description: 'too large', ...json(error) }, 422: { description: 'wrong value, or an Idempotency-Key used for another body', ...json(error) }, 429: { description: 'too many jobs', ...json(error) }, 503: { description: 'queue full (Retry-After)', ...json(error) } },
      } },
      '/v1/jobs/{id}': {
        get: { summary: 'A job\'s state, progress, timings and images', parameters: id, responses: { 200: { description: 'the job', ...json(job) }, 404: { description: 'no such job', ...json(error) } } },
        delete: { summary: 'Cancel a queued or running job', parameters: id, responses: { 202: { description: 'cancelling', ...json(job) }, 409: { description: 'already finished', ...json(error) } } },
      },
      '/v1/jobs/{id}/events': { get: { summary: 'Server-Sent Events: queued, started, step, done, failed, cancelled', parameters: id, responses: { 200: { description: 'text/event-stream' } } } },
      '/v1/images/{name}': { get: { summary: 'A finished image (PNG with its parameters)', parameters: [{ name: 'name', in: 'path', required: true, schema: { type: 'string' } }], responses: { 200: { description: 'image/png' } } } },
      '/healthz': { get: { summary: 'Liveness and queue counts', responses: { 200: { description: 'ok' } } } },
      '/metrics': { get: { summary: 'Prometheus metrics', responses: { 200: { description: 'text/plain' } } } },
    },
  };
}

/** JSON with every object's keys in order: the same request with its fields in another order digests the same. */
function sortedJson(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) => (v !== null && typeof v === 'object' && !Array.isArray(v)
    ? Object.fromEntries(Object.entries(v).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) : v));
}
