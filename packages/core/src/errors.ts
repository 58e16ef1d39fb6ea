/**
 * One error base class for every llmesh package.
 *
 * Each error carries a stable `code` (for programs), a message that says what was wrong, where,
 * and what to do (for people), `isRetryable` (for retry loops and routers) and structured fields.
 * `instanceof` breaks when two copies of a package are installed, so every class also has an
 * `isInstance()` that checks a `Symbol.for` marker, as the AI SDK does.
 */

const baseMarker = Symbol.for('llmesh.error')

export interface LlmeshErrorOptions {
  /** Stable machine-readable code, for example `LLMESH_CHECKSUM_MISMATCH`. */
  code: string
  message: string
  cause?: unknown
  /** True when the same operation may succeed if tried again (later, or elsewhere). */
  isRetryable?: boolean
}

export class LlmeshError extends Error {
  protected readonly [baseMarker] = true
  readonly code: string
  readonly isRetryable: boolean

  constructor({ code, message, cause, isRetryable = false }: LlmeshErrorOptions) {
    super(message, cause === undefined ? undefined : { cause })
    this.name = 'LlmeshError'
    this.code = code
    this.isRetryable = isRetryable
  }

  static isInstance(error: unknown): error is LlmeshError {
    return hasMarker(error, baseMarker)
  }

  /** A plain object for logs and `--json` output; the cause chain is flattened to messages. */
  toJSON(): Record<string, unknown> {
    const fields: Record<string, unknown> = {}
    for (const [key, value] of Object.entries(this)) {
      if (key !== 'cause') fields[key] = value
    }
    return {
      name: this.name,
      code: this.code,
      message: this.message,
      isRetryable: this.isRetryable,
      ...fields,
      ...(this.cause === undefined ? {} : { cause: describeCause(this.cause) }),
    }
  }
}

/** True when `error` carries `marker`; works across copies of a package because markers are global symbols. */
export function hasMarker(error: unknown, marker: symbol): boolean {
  return typeof error === 'object' && error !== null && marker in error
}

function describeCause(cause: unknown): unknown {
  if (LlmeshError.isInstance(cause)) return cause.toJSON()
  if (cause instanceof Error) return { name: cause.name, message: cause.message }
  return String(cause)
}

const invalidArgumentMarker = Symbol.for('llmesh.error.InvalidArgumentError')

/** An argument of a public function failed validation. `argument` names it, with a path inside it. */
export class InvalidArgumentError extends LlmeshError {
  protected readonly [invalidArgumentMarker] = true
  readonly argument: string

  constructor({
    argument,
    message,
    cause,
  }: { argument: string; message: string; cause?: unknown }) {
    super({
      code: 'LLMESH_INVALID_ARGUMENT',
      message: `Invalid argument ${argument}: ${message}`,
      cause,
    })
    this.name = 'InvalidArgumentError'
    this.argument = argument
  }

  static override isInstance(error: unknown): error is InvalidArgumentError {
    return hasMarker(error, invalidArgumentMarker)
  }
}

const abortedMarker = Symbol.for('llmesh.error.AbortedError')

/** An operation stopped because its AbortSignal fired; `reason` is the signal's reason. */
export class AbortedError extends LlmeshError {
  protected readonly [abortedMarker] = true

  constructor({
    message = 'The operation was aborted',
    cause,
  }: { message?: string; cause?: unknown } = {}) {
    super({ code: 'LLMESH_ABORTED', message, cause })
    this.name = 'AbortError'
  }

  static override isInstance(error: unknown): error is AbortedError {
    return hasMarker(error, abortedMarker)
  }
}
