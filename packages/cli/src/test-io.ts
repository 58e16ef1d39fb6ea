import type { CommandIo } from './output.js'
import { run } from './program.js'

/** Captures what a command prints, for in-process tests. */
export function captureIo(): CommandIo & { out: () => string; err: () => string } {
  let stdout = ''
  let stderr = ''
  return {
    stdout: (text) => {
      stdout += text
    },
    stderr: (text) => {
      stderr += text
    },
    interactive: false,
    out: () => stdout,
    err: () => stderr,
  }
}

/** Runs `llmesh` in-process with captured output: its exit code, stdout and stderr. */
export async function llmesh(
  ...argv: string[]
): Promise<{ code: number; out: string; err: string }> {
  const io = captureIo()
  const code = await run(argv, { io })
  return { code, out: io.out(), err: io.err() }
}
