/**
 * @packageDocumentation
 * The ground every llmesh package stands on: one error class with stable codes, namespaced debug
 * logs, AbortSignal and retry helpers, typed progress events and the interfaces packages meet
 * through.
 *
 * @example
 * ```ts
 * import { createLogger, retry, timeoutSignal, LlmeshError } from '@llmesh/core'
 *
 * const log = createLogger('my-app') // enabled with DEBUG=llmesh:*
 * const body = await retry(
 *   async (_attempt, signal) => {
 *     const response = await fetch('https://example.com/model.gguf', { signal })
 *     if (response.status >= 500)
 *       throw new LlmeshError({ code: 'MY_APP_UPSTREAM', message: 'upstream failed', isRetryable: true })
 *     return response.arrayBuffer()
 *   },
 *   { retries: 3, signal: timeoutSignal(30_000) },
 * )
 * log('received %d bytes', body.byteLength)
 * ```
 */
export {
  type AbortOptions,
  abortReason,
  anySignal,
  isAbortError,
  sleep,
  throwIfAborted,
  timeoutSignal,
} from './abort.js'
export {
  type ByteRangeRequest,
  type ByteSource,
  ByteSourceError,
  type ByteSourceFailure,
  type PartialBlob,
  type PartialBlobSink,
} from './byte-source.js'
export {
  AbortedError,
  hasMarker,
  InvalidArgumentError,
  LlmeshError,
  type LlmeshErrorOptions,
} from './errors.js'
export { readBodyWithin, sendJson } from './http.js'
export { createLogger, enableLogging, type Logger } from './logger.js'
export {
  CustomProgressEvent,
  emitProgress,
  type ProgressEvent,
  type ProgressOptions,
} from './progress.js'
export { backoffDelay, isRetryableError, type RetryOptions, retry } from './retry.js'
export { formatIssuePath, parseArgument } from './validation.js'
