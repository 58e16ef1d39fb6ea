import { hasMarker, LlmeshError } from '@llmesh/core'

const downloadMarker = Symbol.for('llmesh.error.DownloadError')

export type DownloadErrorCode =
  /** The finished file's sha256 (or size) is not the manifest's. */
  | 'LLMESH_CHECKSUM_MISMATCH'
  /** Not enough free space for what is left to download; nothing was started. */
  | 'LLMESH_INSUFFICIENT_SPACE'
  /** The disk filled up during the download; verified pieces are kept for a resume. */
  | 'LLMESH_DISK_FULL'
  /** No source was given or none is usable (all filtered out by the allow-list, for example). */
  | 'LLMESH_NO_SOURCES'
  /** Every source failed or was dropped; `failures` says why, per source. */
  | 'LLMESH_SOURCES_EXHAUSTED'
  /** A source's host is not on the allow-list of approved mirrors. */
  | 'LLMESH_HOST_NOT_ALLOWED'
  /** The size of the file could not be learned (no manifest size, no source told it). */
  | 'LLMESH_SIZE_UNKNOWN'
  /** A catalog could not be fetched from any endpoint, or failed verification. */
  | 'LLMESH_CATALOG_UNAVAILABLE'
  /** Pre-caching finished with failures; `failures` names each model. */
  | 'LLMESH_PRECACHE_FAILED'

export interface SourceFailure {
  source: string
  code: string
  message: string
}

/** A download could not finish. `code` says why; `failures` lists what each source did. */
export class DownloadError extends LlmeshError {
  protected readonly [downloadMarker] = true
  override readonly code: DownloadErrorCode
  readonly digest: string | undefined
  readonly path: string | undefined
  readonly failures: SourceFailure[]

  constructor(options: {
    code: DownloadErrorCode
    message: string
    digest?: string
    path?: string
    failures?: SourceFailure[]
    isRetryable?: boolean
    cause?: unknown
  }) {
    super({
      code: options.code,
      message: options.message,
      cause: options.cause,
      isRetryable: options.isRetryable ?? false,
    })
    this.name = 'DownloadError'
    this.code = options.code
    this.digest = options.digest
    this.path = options.path
    this.failures = options.failures ?? []
  }

  static override isInstance(error: unknown): error is DownloadError {
    return hasMarker(error, downloadMarker)
  }
}

const storeMarker = Symbol.for('llmesh.error.StoreError')

export type StoreErrorCode =
  | 'LLMESH_MODEL_NOT_FOUND'
  | 'LLMESH_MODEL_PINNED'
  | 'LLMESH_MODEL_IN_USE'
  | 'LLMESH_STORE_INVALID'

/** A store operation was refused: an unknown model, a pinned or in-use one, a damaged store. */
export class StoreError extends LlmeshError {
  protected readonly [storeMarker] = true
  override readonly code: StoreErrorCode
  readonly model: string | undefined

  constructor(options: { code: StoreErrorCode; message: string; model?: string; cause?: unknown }) {
    super({ code: options.code, message: options.message, cause: options.cause })
    this.name = 'StoreError'
    this.code = options.code
    this.model = options.model
  }

  static override isInstance(error: unknown): error is StoreError {
    return hasMarker(error, storeMarker)
  }
}

/** Node's error code (`ENOSPC`, `ENOENT`...) of a system error, if it is one. */
export function systemErrorCode(error: unknown): string | undefined {
  return typeof error === 'object' && error !== null && 'code' in error
    ? String((error as { code: unknown }).code)
    : undefined
}
