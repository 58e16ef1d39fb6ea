import {
  resolveTinyModelOptions,
  type TinyModelOptions,
  tinyModelPresets,
  writeTinyGguf,
} from '@llmesh/testkit'
import { type Command, Option } from 'commander'
import type { CommandContext } from '../program.js'
import { parseInteger } from './option-parsers.js'

export function registerTestkitCommands(program: Command, context: CommandContext): void {
  const testkit = program.command('testkit').description('test data: tiny real models')
  testkit
    .command('gguf')
    .description('write a deterministic tiny llama GGUF model that llama.cpp loads')
    .argument('<file>', 'where to write the model')
    .addOption(
      new Option('--preset <preset>', 'a ready-made size')
        .choices(Object.keys(tinyModelPresets))
        .default('tiny'),
    )
    .addOption(new Option('--type <type>', 'tensor type').choices(['f32', 'f16', 'q8_0']))
    .option('--seed <number>', 'weights seed: the same seed gives the same bytes', parseInteger)
    .option('--layers <number>', 'transformer blocks', parseInteger)
    .option('--embedding-length <number>', 'model width', parseInteger)
    .option('--vocabulary-size <number>', 'tokens in the vocabulary', parseInteger)
    .option('--context-length <number>', 'trained context length', parseInteger)
    .action(
      async (
        file: string,
        options: { preset: keyof typeof tinyModelPresets } & TinyModelOptions,
      ) => {
        const output = context.output()
        const { preset, ...overrides } = options
        const defined = Object.fromEntries(
          Object.entries(overrides).filter(([, value]) => value !== undefined),
        )
        const resolved = resolveTinyModelOptions({ ...tinyModelPresets[preset], ...defined })
        const model = await writeTinyGguf(file, resolved)
        output.result(
          { path: model.path, size: model.size, sha256: model.sha256, options: model.options },
          `wrote ${model.path}: ${model.size} bytes, sha256 ${model.sha256}\n  ${model.options.type}, ${model.options.layers} layers, width ${model.options.embeddingLength}, vocabulary ${model.options.vocabularySize}`,
        )
      },
    )
}
