/**
 * Proves that llama.cpp runs on a backend before a node trusts it: a child process loads a small
 * model there and decodes a few tokens. A GPU binary that does not fit the machine can abort the
 * whole process from inside llama.cpp, past any JavaScript error handling: node-llama-cpp 3.22.1's
 * CUDA build does so on an H100 with driver 580 at the first decode. In a child, that death
 * becomes a report.
 */
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { AbortedError, createLogger, throwIfAborted } from '@llmesh/core'
import type { Backend } from './engine.js'

export interface CheckBackendOptions {
  /** A GGUF to decode with; the smaller the better (the testkit's `tiny` model loads in milliseconds). */
  modelPath: string
  /** Default `auto`, as `createInferenceEngine`. */
  backend?: 'auto' | Backend
  threads?: number
  /** Tokens to generate; default 8. */
  tokens?: number
  /** Default 120 s: a first run on a GPU may compile kernels. */
  timeoutMs?: number
  /** The child's environment (`CUDA_VISIBLE_DEVICES` and the like); default this process's. */
  env?: NodeJS.ProcessEnv
  signal?: AbortSignal
}

export type BackendCheck = BackendCheckPassed | BackendCheckFailed

export interface BackendCheckPassed {
  ok: true
  backend: Backend
  devices: string[]
  layersOffloaded: number
  tokens: number
  tokensPerSecond: number
  /** The whole check: the child's start, loading and decoding. */
  seconds: number
}

export interface BackendCheckFailed {
  ok: false
  /** What went wrong, in a sentence: a typed error's message, or how the child ended. */
  reason: string
  /** The `LlmeshError` code when the child could report one (for example `LLMESH_GGUF_INVALID`). */
  code: string | undefined
  /** The end of the child's stderr, where llama.cpp writes why it aborted. */
  output: string
  seconds: number
}

/** What the child writes as its last line of stdout. */
export type BackendCheckReport =
  | Omit<BackendCheckPassed, 'seconds'>
  | { ok: false; reason: string; code: string | undefined }

/** The options the child reads from its first argument. */
export interface BackendCheckRequest {
  modelPath: string
  backend: 'auto' | Backend
  threads: number | undefined
  tokens: number
}

const log = createLogger('inference:backend-check')
const outputKept = 4096

/**
 * Runs the check in a child process and resolves with its outcome, passed or failed; rejects only
 * with `AbortedError` when `signal` aborts (the child is killed).
 */
export async function checkBackend(options: CheckBackendOptions): Promise<BackendCheck> {
  throwIfAborted(options.signal)
  const request: BackendCheckRequest = {
    modelPath: options.modelPath,
    backend: options.backend ?? 'auto',
    threads: options.threads,
    tokens: options.tokens ?? 8,
  }
  const timeoutMs = options.timeoutMs ?? 120_000
  // Built next to the package's entry; from `src/` (the package's own tests) the same file.
  const childModule = new URL('../dist/backend-check-child.js', import.meta.url)
  const started = performance.now()
  const seconds = () => (performance.now() - started) / 1000
  log('checking %s with %s', request.backend, request.modelPath)
  return new Promise<BackendCheck>((resolve, reject) => {
    const checker = spawn(process.execPath, [fileURLToPath(childModule), JSON.stringify(request)], {
      env: options.env ?? process.env,
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let stdout = ''
    let stderr = ''
    checker.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      stdout += chunk
    })
    checker.stderr.setEncoding('utf8').on('data', (chunk: string) => {
      stderr = (stderr + chunk).slice(-outputKept)
    })
    let timedOut = false
    const timer = setTimeout(() => {
      timedOut = true
      checker.kill('SIGKILL')
    }, timeoutMs)
    const onAbort = () => checker.kill('SIGKILL')
    options.signal?.addEventListener('abort', onAbort, { once: true })
    let settled = false
    const settle = (outcome: () => BackendCheck) => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      options.signal?.removeEventListener('abort', onAbort)
      if (options.signal?.aborted) {
        reject(new AbortedError({ message: 'The backend check was cancelled.' }))
        return
      }
      const check = outcome()
      log('%s: %s', request.backend, check.ok ? 'passed' : check.reason)
      resolve(check)
    }
    const failed = (reason: string, code?: string): BackendCheckFailed => ({
      ok: false,
      reason,
      code,
      output: stderr,
      seconds: seconds(),
    })
    checker.on('error', (error) =>
      settle(() => failed(`The check process could not start: ${error.message}`)),
    )
    checker.on('close', (exitCode, signal) =>
      settle(() => {
        if (timedOut)
          return failed(
            `The ${request.backend} backend did not load and decode ${request.tokens} tokens within ${timeoutMs / 1000} s.`,
          )
        const report = lastReport(stdout)
        if (report?.ok === true) return { ...report, seconds: seconds() }
        if (report !== undefined) return failed(report.reason, report.code)
        const cause = abortCause(stderr)
        return failed(
          `llama.cpp ended the check process (${signal ?? `exit code ${exitCode}`}) on the ${request.backend} backend${cause === undefined ? '' : `: ${cause}`}`,
        )
      }),
    )
  })
}

function lastReport(stdout: string): BackendCheckReport | undefined {
  const line = stdout.trim().split('\n').at(-1)
  if (line === undefined || !line.startsWith('{')) return undefined
  try {
    return JSON.parse(line) as BackendCheckReport
  } catch {
    return undefined
  }
}

/**
 * llama.cpp's own words for an abort: the first line with an error's text, such as
 * `llama.cpp error: CUDA error: the provided PTX was compiled with an unsupported toolchain.`
 */
function abortCause(stderr: string): string | undefined {
  return stderr
    .split('\n')
    .map((line) => line.trim())
    .find((line) => /error: \S/i.test(line))
    ?.replace(/^llama\.cpp error:\s*/i, '')
}
