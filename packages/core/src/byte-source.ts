import type { AbortOptions } from './abort.js'
import { hasMarker, LlmeshError } from './errors.js'

/**
 * Where a blob's bytes can come from: an HTTP mirror, a local file, a libp2p peer. The downloader
 * asks any mix of sources for ranges of one blob and verifies every piece itself, so a source
 * only has to deliver bytes; it never decides what is right.
 */
export interface ByteSource {
  /** Stable id for statistics and blame, for example `https://mirror.example/x.gguf` or a peer id. */
  readonly id: string
  /** What kind of source this is, for logs and per-kind policies. */
  readonly kind: 'http' | 'file' | 'peer' | (string & {})
  /**
   * Streams bytes [start, end) of the blob whose sha256 is `digest` (64 lowercase hex).
   * Yields exactly `end - start` bytes in order or throws a `ByteSourceError`. It may also yield
   * empty chunks, signs of life while it works toward `start` (a `sequential` source skipping).
   */
  read(request: ByteRangeRequest): AsyncIterable<Uint8Array>
  /** Whether this source can serve `digest`, when it can tell cheaply (a peer's piece list). */
  has?(digest: string, options?: AbortOptions): Promise<boolean>
  /**
   * Whether this source holds bytes [start, end) of `digest` now, where it can tell without
   * asking anyone (a peer's piece list it watches). The downloader hands such a source only the
   * pieces it holds; a source without this method is taken to hold every byte.
   */
  holds?(digest: string, start: number, end: number): boolean
  /**
   * Whether anyone behind this source takes part in `digest` now, holding it or fetching it (a
   * peer that answered about it), where it can tell without asking. Beside a source that does, a
   * mirror is asked for pieces at random, so that nodes that pull together fetch different ones;
   * beside one that does not, in order, so that the whole-file digest keeps up without reading
   * pieces back. A source with `holds()` but without this method is taken to take part.
   */
  takesPart?(digest: string): boolean
  /**
   * True when the source can only be read front to back (a mirror that ignores Range answers
   * every request with the whole file): a read skips the bytes before its start, and one that
   * starts before where the last read ended starts over from the first byte. The downloader then
   * gives it one request at a time and its pieces in order. It may turn true during a download.
   */
  readonly sequential?: boolean
  /** Lets go of what the source keeps open (a peer's piece list it watches); called once it is done. */
  close?(): Promise<void> | void
}

/**
 * A blob still downloading, whose pieces can be served as soon as they are verified: the
 * downloader hands one to its `sharePartial` hook (a peer node serves them), so that nodes that
 * pull the same model at the same time feed each other instead of the mirror alone.
 */
export interface PartialBlob {
  readonly sha256: string
  readonly size: number
  /** Pieces are `pieceSize` bytes (the last one shorter), verified one by one against a piece index. */
  readonly pieceSize: number
  /** The partial file: each verified piece lies at its place in it. */
  readonly path: string
}

/** Where a download reports its pieces while it runs: the other side of `PartialBlob`. */
export interface PartialBlobSink {
  /** Piece `index` is verified, and its bytes are written to the partial file. */
  pieceVerified(index: number): void
  /** The download ended (done or failed): the partial file is about to move or stay unfinished. */
  end(): void
}

export interface ByteRangeRequest extends AbortOptions {
  digest: string
  /** First byte, inclusive. */
  start: number
  /** Last byte, exclusive. */
  end: number
}

/** Why a source could not deliver, and so what the caller should do next. */
export type ByteSourceFailure =
  /** The source does not have this blob: ask another one, not this one. */
  | 'not-found'
  /** Temporary trouble (network, 5xx, a 429 with Retry-After): this source may work later, others now. */
  | 'unavailable'
  /**
   * The source works but is at its cap on requests at once (a peer at its cap on uploads, a 503
   * or 429 without Retry-After): while it serves other requests of the caller, that many is what
   * it takes now; with none of the caller's, it is as `unavailable`.
   */
  | 'busy'
  /** The range lies outside the blob: a caller bug or wrong size; nobody will serve it. */
  | 'range-not-satisfiable'
  /** The source answered with something that is not the blob (wrong size, HTML page, bad bytes). */
  | 'misbehaved'
  /** The source refuses this client (401, 403, banned): retrying here will not help. */
  | 'forbidden'

const byteSourceMarker = Symbol.for('llmesh.error.ByteSourceError')

const codes: Record<ByteSourceFailure, string> = {
  'not-found': 'LLMESH_SOURCE_NOT_FOUND',
  unavailable: 'LLMESH_SOURCE_UNAVAILABLE',
  busy: 'LLMESH_SOURCE_BUSY',
  'range-not-satisfiable': 'LLMESH_RANGE_NOT_SATISFIABLE',
  misbehaved: 'LLMESH_SOURCE_MISBEHAVED',
  forbidden: 'LLMESH_SOURCE_FORBIDDEN',
}

/**
 * A byte source failed. `isRetryable` says whether this same source may succeed later;
 * `tryElsewhere` says whether another source may succeed now.
 */
export class ByteSourceError extends LlmeshError {
  protected readonly [byteSourceMarker] = true
  readonly failure: ByteSourceFailure
  readonly source: string
  readonly digest: string | undefined
  readonly statusCode: number | undefined
  readonly tryElsewhere: boolean
  /** A delay the source asked for (HTTP `Retry-After`), honoured by `retry()`. */
  readonly retryAfterMs: number | undefined

  constructor(options: {
    failure: ByteSourceFailure
    source: string
    message: string
    digest?: string
    statusCode?: number
    retryAfterMs?: number
    cause?: unknown
  }) {
    super({
      code: codes[options.failure],
      message: options.message,
      cause: options.cause,
      isRetryable: options.failure === 'unavailable' || options.failure === 'busy',
    })
    this.name = 'ByteSourceError'
    this.failure = options.failure
    this.source = options.source
    this.digest = options.digest
    this.statusCode = options.statusCode
    this.retryAfterMs = options.retryAfterMs
    this.tryElsewhere = options.failure !== 'range-not-satisfiable'
  }

  static override isInstance(error: unknown): error is ByteSourceError {
    return hasMarker(error, byteSourceMarker)
  }
}
