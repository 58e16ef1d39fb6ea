/**
 * @packageDocumentation
 * The `llmesh` command. Its program can also run in-process, for tests and embedding.
 *
 * @example
 * ```ts
 * import { run } from '@llmesh/cli'
 *
 * const exitCode = await run(['testkit', 'gguf', 'tiny.gguf', '--json'])
 * ```
 */

export { exitCodeFor, exitCodes } from './exit-codes.js'
export { type CommandIo, Output, processIo } from './output.js'
export { type CommandContext, createProgram, run, version } from './program.js'
