import { LlmeshError } from '@llmesh/core'

/** Where a command writes: stdout for results, stderr for progress and messages. */
export interface CommandIo {
  stdout: (text: string) => void
  stderr: (text: string) => void
  /** Whether stderr is a terminal (progress bars only make sense there). */
  interactive: boolean
  /** The terminal stream progress bars draw on, when `interactive`. */
  terminal?: NodeJS.WriteStream
  /** What the person types, for interactive commands (`llmesh chat`). */
  stdin?: NodeJS.ReadableStream
}

export const processIo: CommandIo = {
  stdout: (text) => process.stdout.write(text),
  stderr: (text) => process.stderr.write(text),
  interactive: process.stderr.isTTY === true,
  terminal: process.stderr,
  stdin: process.stdin,
}

/** Prints a command's result: one JSON document with `--json`, else the human text. */
export class Output {
  /** A command that printed its result and then fails (a report of damage) keeps stdout one document. */
  private resultPrinted = false
  /** A command that streams JSON lines ends a failure with one more line. */
  private linesPrinted = false

  constructor(
    readonly io: CommandIo,
    readonly json: boolean,
  ) {}

  result(value: unknown, human: string): void {
    this.resultPrinted = true
    this.io.stdout(this.json ? `${JSON.stringify(value, null, 2)}\n` : `${human}\n`)
  }

  /** One compact JSON line on stdout (`--json` streams of events); nothing in human mode. */
  line(value: unknown): void {
    if (!this.json) return
    this.linesPrinted = true
    this.io.stdout(`${JSON.stringify(value)}\n`)
  }

  /** A message for the person at the terminal; silent in JSON mode so that stdout stays parseable. */
  info(text: string): void {
    if (!this.json) this.io.stderr(`${text}\n`)
  }

  /** Wrong usage (an unknown option, a missing argument...) as a JSON error on stdout, `--json` only. */
  usageError(message: string, commanderCode: string): void {
    if (!this.json) return
    const error = { name: 'UsageError', code: 'LLMESH_USAGE', commanderCode, message }
    this.io.stdout(`${JSON.stringify({ error }, null, 2)}\n`)
  }

  error(error: unknown): void {
    const described = describeError(error)
    if (this.json && this.resultPrinted)
      this.io.stderr(`${JSON.stringify({ error: described }, null, 2)}\n`)
    else if (this.json && this.linesPrinted)
      this.io.stdout(`${JSON.stringify({ error: described })}\n`)
    else if (this.json) this.io.stdout(`${JSON.stringify({ error: described }, null, 2)}\n`)
    else {
      this.io.stderr(`error: ${described.message}\n`)
      const issues = (described as { issues?: Array<{ path: string; message: string }> }).issues
      if (issues !== undefined && issues.length > 1)
        for (const issue of issues) this.io.stderr(`  ${issue.path}: ${issue.message}\n`)
    }
  }
}

function describeError(error: unknown): Record<string, unknown> & { message: string } {
  if (LlmeshError.isInstance(error))
    return error.toJSON() as Record<string, unknown> & { message: string }
  if (error instanceof Error) return { name: error.name, message: error.message }
  return { message: String(error) }
}
