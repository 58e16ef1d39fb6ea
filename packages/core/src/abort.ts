import { setTimeout as delay } from 'node:timers/promises'
import { AbortedError, LlmeshError } from './errors.js'

/** The `signal` option every async public method takes. */
export interface AbortOptions {
  signal?: AbortSignal | undefined
}

/** Combines any number of optional signals: aborts when the first of them does. */
export function anySignal(...signals: Array<AbortSignal | undefined>): AbortSignal {
  const present = signals.filter((signal): signal is AbortSignal => signal !== undefined)
  if (present.length === 1) return present[0]!
  return AbortSignal.any(present)
}

/**
 * A signal that aborts after `milliseconds` with a `TimeoutError`, or earlier when `signal` does.
 * Pass `undefined` or `Infinity` to apply no timeout.
 */
export function timeoutSignal(milliseconds: number | undefined, signal?: AbortSignal): AbortSignal {
  if (milliseconds === undefined || !Number.isFinite(milliseconds)) return anySignal(signal)
  return anySignal(signal, AbortSignal.timeout(milliseconds))
}

/**
 * True for every way an operation reports cancellation: DOM `AbortError` and `TimeoutError`,
 * Node's `ABORT_ERR`, and llmesh's `LLMESH_ABORTED`.
 */
export function isAbortError(error: unknown): boolean {
  if (typeof error !== 'object' || error === null) return false
  const { name, code } = error as { name?: unknown; code?: unknown }
  return (
    name === 'AbortError' ||
    name === 'TimeoutError' ||
    code === 'ABORT_ERR' ||
    code === 'LLMESH_ABORTED' ||
    (LlmeshError.isInstance(error) && isAbortError(error.cause))
  )
}

/** Throws the signal's reason when it has fired, wrapped so that callers always get an error. */
export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw abortReason(signal)
}

/** The signal's reason as an Error: the reason itself when it is one, else an `AbortedError`. */
export function abortReason(signal: AbortSignal): Error {
  const reason: unknown = signal.reason
  return reason instanceof Error ? reason : new AbortedError({ cause: reason })
}

/** Waits `milliseconds`, rejecting with the signal's reason as soon as it aborts. */
export async function sleep(milliseconds: number, options: AbortOptions = {}): Promise<void> {
  throwIfAborted(options.signal)
  try {
    await delay(milliseconds, undefined, { signal: options.signal })
  } catch (error) {
    if (options.signal?.aborted) throw abortReason(options.signal)
    throw error
  }
}
