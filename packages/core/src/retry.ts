import { type AbortOptions, sleep, throwIfAborted } from './abort.js'
import { LlmeshError } from './errors.js'

export interface RetryOptions extends AbortOptions {
  /** Attempts after the first one. Default 5. */
  retries?: number
  /** Delay before the first retry, in milliseconds. Default 250. */
  minDelay?: number
  /** Upper bound of any delay, in milliseconds. Default 30 000. */
  maxDelay?: number
  /** Growth of the delay per attempt. Default 2. */
  factor?: number
  /**
   * Decides whether an error is worth another attempt. Default: `isRetryable` of an llmesh
   * error; any other error is not retried, since we cannot know that it is transient.
   */
  shouldRetry?: (error: unknown, attempt: number) => boolean
  /** Called before each wait, for logs and progress events. */
  onRetry?: (event: { error: unknown; attempt: number; delay: number }) => void
  /** Random source in [0, 1), replaceable so that tests are deterministic. */
  random?: () => number
}

/**
 * Runs `operation` until it succeeds, with exponential backoff and full jitter (AWS's analysis:
 * full jitter spreads a herd of clients best). An error that carries `retryAfterMs` (from a
 * `Retry-After` header) waits at least that long. The signal stops both the attempt and the wait.
 *
 * Written here rather than taken from `p-retry` because the decision to retry belongs to
 * llmesh's own `isRetryable` and `retryAfterMs` fields, which such libraries do not know.
 */
export async function retry<Result>(
  operation: (attempt: number, signal: AbortSignal | undefined) => Promise<Result>,
  options: RetryOptions = {},
): Promise<Result> {
  const {
    retries = 5,
    minDelay = 250,
    maxDelay = 30_000,
    factor = 2,
    shouldRetry = isRetryableError,
    onRetry,
    random = Math.random,
    signal,
  } = options
  for (let attempt = 0; ; attempt++) {
    throwIfAborted(signal)
    try {
      return await operation(attempt, signal)
    } catch (error) {
      if (signal?.aborted || attempt >= retries || !shouldRetry(error, attempt)) throw error
      const delay = backoffDelay({ attempt, minDelay, maxDelay, factor, random, error })
      onRetry?.({ error, attempt, delay })
      await sleep(delay, { signal })
    }
  }
}

/** The default `shouldRetry`: only errors that say they are retryable. */
export function isRetryableError(error: unknown): boolean {
  return LlmeshError.isInstance(error) && error.isRetryable
}

/** Full-jitter delay for `attempt` (0-based), never shorter than a server's `retryAfterMs`. */
export function backoffDelay({
  attempt,
  minDelay = 250,
  maxDelay = 30_000,
  factor = 2,
  random = Math.random,
  error,
}: {
  attempt: number
  minDelay?: number
  maxDelay?: number
  factor?: number
  random?: () => number
  error?: unknown
}): number {
  const ceiling = Math.min(maxDelay, minDelay * factor ** attempt)
  const jittered = Math.max(minDelay, Math.round(random() * ceiling))
  const retryAfter =
    typeof error === 'object' && error !== null && 'retryAfterMs' in error
      ? Number((error as { retryAfterMs: unknown }).retryAfterMs)
      : 0
  return Math.min(maxDelay, Math.max(jittered, Number.isFinite(retryAfter) ? retryAfter : 0))
}
