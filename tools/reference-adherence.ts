/**
 * Adherence of the embedded reference model on held-out captions at several guidance scales,
 * beside chance (the same images scored against another prompt's caption).
 *
 *   node --import tsx tools/reference-adherence.ts [--count 24] [--steps 25] [--guidance 1,2,3,5,7.5]
 */
import { parseArgs } from 'node:util';
import { adherence } from '../src/metrics/adherence.ts';
import { REFERENCE_MODEL } from '../src/pipelines/reference-model.ts';
import { loadPipeline } from '../src/pipelines/stable-diffusion.ts';
import { HELD_OUT_PROMPTS, readPromptFile } from '../src/scenes/captions.ts';

const { values } = parseArgs({ options: { count: { type: 'string', default: '24' }, steps: { type: 'string', default: '25' }, guidance: { type: 'string', default: '1,2,3,5,7.5' } } });
const prompts = readPromptFile(HELD_OUT_PROMPTS).slice(0, Number(values.count));
const pipeline = await loadPipeline(REFERENCE_MODEL);
console.log(`reference model, first ${prompts.length} held-out captions, ${values.steps} steps, seed = prompt index`);
console.log('| CFG | adherence | same images scored against another caption (chance) | s/image |\n|---|---|---|---|');
for (const guidance of values.guidance!.split(',').map(Number)) {
  let own = 0;
  let chance = 0;
  const start = performance.now();
  for (const [i, prompt] of prompts.entries()) {
    const image = (await pipeline.generate({ prompt, seed: i, steps: Number(values.steps), guidanceScale: guidance })).images[0];
    own += adherence(image.data, image.width, image.height, prompt).score;
    chance += adherence(image.data, image.width, image.height, prompts[(i + 1) % prompts.length]).score;
  }
  const n = prompts.length;
  console.log(`| ${guidance} | ${(own / n).toFixed(3)} | ${(chance / n).toFixed(3)} | ${((performance.now() - start) / 1000 / n).toFixed(3)} |`);
}
await pipeline.release();
