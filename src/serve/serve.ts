/**
 * `diffuse serve`: the HTTP API (src/serve/app.ts) over the embedded queue (src/serve/queue.ts) on
 * one machine. Ctrl-C (or SIGTERM) stops taking jobs, lets the running ones finish and exits; a
 * second one cancels them.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { isIP } from 'node:net';
import { serve as listen } from '@hono/node-server';
import { InputError } from '../errors.ts';
import { createApp } from './app.ts';
import { listModels } from './job.ts';
import { EmbeddedQueue } from './embedded-queue.ts';
import type { JobQueue } from './queue.ts';

export interface ServeOptions {
  host: string;
  port: number;
  modelDir?: string;
  results: string;
  workers: number;
  threads: number;
  token?: string;
  rate: number;
}

const MAX_BODY_BYTES = 64 * 1024;

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || (isIP(host) === 4 && host.startsWith('127.'));
}

export interface Service {
  port: number;
  queue: JobQueue;
  /** Stops taking requests; `drain`: lets running jobs finish (else cancels them). */
  close(drain: boolean): Promise<void>;
}

/** Checks the options and starts the service; throws InputError naming the flag for bad ones. */
export async function startService(o: ServeOptions): Promise<Service> {
  const token = o.token ?? (process.env.DIFFUSE_TOKEN || undefined);
  if (token !== undefined && token.length < 16) throw new InputError('--token', 'too short', 'at least 16 characters', `${token.length}`);
  if (!isLoopback(o.host) && token === undefined) {
    throw new InputError('--token', `required when listening beyond loopback (--host ${o.host})`, 'a bearer token (--token or DIFFUSE_TOKEN)');
  }
  if (o.modelDir !== undefined) {
    if (!fs.statSync(o.modelDir, { throwIfNoEntry: false })?.isDirectory()) throw new InputError('--model-dir', 'not a folder', 'a folder of diffusers model folders', o.modelDir);
  }
  fs.mkdirSync(o.results, { recursive: true });
  const resultsDir = path.resolve(o.results);

  const queue = new EmbeddedQueue(o.workers, { resultsDir, threads: o.threads });
  const app = createApp({ queue, resultsDir, modelDir: o.modelDir && path.resolve(o.modelDir), token, ratePerMinute: o.rate, maxBodyBytes: MAX_BODY_BYTES });
  const server = listen({ fetch: app.fetch, hostname: o.host, port: o.port });
  await new Promise<void>((resolve, reject) => {
    server.once('listening', resolve);
    server.once('error', (err: NodeJS.ErrnoException) => reject(new InputError('--port', `cannot listen on ${o.host}:${o.port} (${err.code ?? err.message})`, 'a free port')));
  }).catch(async (err) => {
    await queue.close(false);
    throw err;
  });
  const address = server.address();
  return {
    port: typeof address === 'object' && address ? address.port : o.port,
    queue,
    close: async (drain) => {
      server.close();
      await queue.close(drain);
    },
  };
}

/** `diffuse serve`: starts the service and serves until a signal; resolves once it has stopped. */
export async function serve(o: ServeOptions): Promise<void> {
  const service = await startService(o);
  const models = ['reference', 'reference-dit', 'reference-skip-dit', ...(o.modelDir ? listModels(o.modelDir) : [])];
  process.stderr.write(`diffuse serve: http://${o.host.includes(':') ? `[${o.host}]` : o.host}:${service.port}/ ` +
    `(${o.workers} worker${o.workers > 1 ? 's' : ''}; models: ${models.join(', ')}; images in ${path.resolve(o.results)}; API at /openapi.json)\n`);

  await new Promise<void>((resolve) => {
    let stopping = false;
    const stop = (signal: NodeJS.Signals) => {
      if (stopping) {
        process.stderr.write(`diffuse serve: ${signal} again: cancelling the running jobs\n`);
        void service.queue.close(false);
        return;
      }
      stopping = true;
      process.stderr.write(`diffuse serve: ${signal}: no new jobs; finishing the running ones (again to cancel them)\n`);
      void service.close(true).then(() => {
        for (const s of ['SIGINT', 'SIGTERM'] as const) process.off(s, stop);
        resolve();
      });
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
  process.stderr.write('diffuse serve: stopped\n');
}
