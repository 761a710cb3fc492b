/**
 * Ctrl-C (or SIGTERM) for the long-running commands: the first signal stops taking work and lets
 * the running jobs finish; a second one cancels them. Resolves once `close` has finished.
 */
export function runUntilSignalled(name: string, close: (drain: boolean) => Promise<void>): Promise<void> {
  return new Promise<void>((resolve) => {
    let stopping = false;
    const stop = (signal: NodeJS.Signals) => {
      if (stopping) {
        process.stderr.write(`${name}: ${signal} again: cancelling the running jobs\n`);
        void close(false);
        return;
      }
      stopping = true;
      process.stderr.write(`${name}: ${signal}: no new jobs; finishing the running ones (again to cancel them)\n`);
      void close(true).then(() => {
        for (const s of ['SIGINT', 'SIGTERM'] as const) process.off(s, stop);
        process.stderr.write(`${name}: stopped\n`);
        resolve();
      });
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
}
