import type { CommandIo } from './output.js'

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
