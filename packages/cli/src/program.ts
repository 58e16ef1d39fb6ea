import { enableLogging } from '@llmesh/core'
import { Command, CommanderError } from 'commander'
import { registerGatewayCommands } from './commands/gateway.js'
import { registerInferenceCommands } from './commands/inference.js'
import { registerKeyCommands } from './commands/keys.js'
import { registerManifestCommands } from './commands/manifest.js'
import { registerNodeCommands } from './commands/node.js'
import { registerPeerCommands } from './commands/peers.js'
import { registerRegistryCommands } from './commands/registry.js'
import { registerStoreCommands } from './commands/store.js'
import { registerTestkitCommands } from './commands/testkit.js'
import { exitCodeFor, exitCodes } from './exit-codes.js'
import { type CommandIo, Output, processIo } from './output.js'

export const version = __PACKAGE_VERSION__

/** What every command receives: its IO, the global options and a signal for Ctrl-C. */
export interface CommandContext {
  io: CommandIo
  signal: AbortSignal
  output(): Output
}

/** Builds the `llmesh` command tree. Later packages add their commands here. */
export function createProgram(context: CommandContext): Command {
  const program = new Command('llmesh')
    .description(
      'Get local LLM model files to the machines that run them, prove they work, and route requests to them.',
    )
    .version(version, '-V, --version', 'print the version')
    .option('--json', 'print results as JSON on stdout (errors too), for scripts')
    .option('--debug [namespaces]', 'print debug logs on stderr (default llmesh:*)')
    .showHelpAfterError('(run with --help for usage)')
    .configureOutput({ writeOut: context.io.stdout, writeErr: context.io.stderr })
    .exitOverride()
    .hook('preAction', (command) => {
      const { debug } = command.optsWithGlobals() as { debug?: string | true }
      if (debug !== undefined) enableLogging(debug === true ? 'llmesh:*' : debug)
    })
  registerManifestCommands(program, context)
  registerKeyCommands(program, context)
  registerStoreCommands(program, context)
  registerRegistryCommands(program, context)
  registerInferenceCommands(program, context)
  registerGatewayCommands(program, context)
  registerPeerCommands(program, context)
  registerNodeCommands(program, context)
  registerTestkitCommands(program, context)
  for (const command of allCommands(program))
    command
      .exitOverride()
      .configureOutput({ writeOut: context.io.stdout, writeErr: context.io.stderr })
  return program
}

function allCommands(command: Command): Command[] {
  return command.commands.flatMap((child) => [child, ...allCommands(child)])
}

/**
 * Runs `llmesh` with `argv` (without node and script) and returns the exit code; never calls
 * `process.exit`, so tests and embedding apps can run it in-process.
 */
export async function run(
  argv: string[],
  {
    io = processIo,
    signal = new AbortController().signal,
  }: { io?: CommandIo; signal?: AbortSignal } = {},
): Promise<number> {
  const json = argv.includes('--json')
  const output = new Output(io, json)
  const program = createProgram({ io, signal, output: () => output })
  try {
    await program.parseAsync(argv, { from: 'user' })
    return exitCodes.success
  } catch (error) {
    if (error instanceof CommanderError) {
      if (error.exitCode === 0) return exitCodes.success
      // Commander has told the person at the terminal on stderr; a script reads stdout.
      if (json) output.usageError(error.message.replace(/^error: /, ''), error.code)
      return exitCodes.usage
    }
    output.error(error)
    return exitCodeFor(error)
  }
}
