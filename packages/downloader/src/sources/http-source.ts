import {
  type AbortOptions,
  type ByteRangeRequest,
  type ByteSource,
  ByteSourceError,
  createLogger,
  isAbortError,
} from '@llmesh/core'
import { type Dispatcher, request } from 'undici'
import {
  type RangeResponse,
  type RangeSockets,
  REDIRECT_STATUSES,
  type ResponseHead,
} from './range-sockets.js'

const log = createLogger('downloader:http')

export interface HttpSourceOptions {
  url: string | URL
  /** The connection pool; share one across sources and files (the downloader does). */
  dispatcher?: Dispatcher
  /** A bearer token, sent to the URL's own origin only, never to a redirect target elsewhere. */
  token?: string
  /** Extra headers for the URL's own origin (same rule as the token). */
  headers?: Record<string, string>
  /** The artifact's size when known: a server that reports another size is not serving it. */
  expectedSize?: number
  userAgent?: string
  /** Redirects followed per request. Default 5. */
  maxRedirects?: number
  /**
   * Sockets that read piece bodies into reused buffers (much less memory than undici at high
   * rates); undici still makes every request they leave to it (redirects, unsized bodies, HEAD).
   */
  sockets?: RangeSockets
}

/** What a HEAD request learned about a file: its size and, from a hub, its content digest. */
export interface HttpProbe {
  size: number | undefined
  etag: string | undefined
  /** sha256 the server vouches for (Hugging Face's `X-Linked-Etag` on LFS files). */
  sha256: string | undefined
  url: string
}

const RETRYABLE_STATUSES = new Set([408, 425, 429, 500, 502, 503, 504])

/**
 * A mirror reached over HTTP(S) with undici: byte ranges with strict checks.
 *
 * - A range is accepted only as a 206 whose Content-Range is exactly the one asked for, and whose
 *   total is the artifact's size.
 * - A 200 to a range request is the whole file (its Content-Length must be the artifact's size):
 *   the server ignores Range. The range is cut out of it, and the source turns `sequential`: it
 *   is read front to back from then on, each read taking its range from one answer kept open
 *   between reads, rather than fetching the file from its first byte each time.
 * - An HTML page is never data: a `text/html` answer is a misbehaving mirror, whatever its status.
 * - The first strong ETag is remembered and sent as `If-Match`, so a file that changes upstream
 *   mid-download gives 412 instead of mixed bytes. An ETag that is itself a sha256 must be the
 *   artifact's digest, which is how ETags are checked to agree across mirrors.
 * - Redirects are followed by hand: credentials go to the original origin only, and a redirect
 *   from https to anything else is refused.
 */
export class HttpSource implements ByteSource {
  readonly kind = 'http'
  readonly id: string
  readonly url: URL
  /** The origin's host, for per-host connection caps. */
  readonly host: string
  private readonly options: HttpSourceOptions
  /** Where the last redirect chain ended; asked directly until it fails. */
  private resolved: URL | undefined
  private etag: string | undefined
  /** The server answered a range request with the whole file: it ignores Range. */
  private ignoresRanges = false
  /** The whole-file answer the last read left open (a server that ignores Range). */
  private idleBody: WholeFileBody | undefined

  constructor(options: HttpSourceOptions) {
    this.options = options
    this.url = new URL(options.url)
    if (this.url.protocol !== 'http:' && this.url.protocol !== 'https:')
      throw new TypeError(`HttpSource needs an http(s) URL, not ${this.url.protocol}`)
    if (this.url.username !== '' || this.url.password !== '')
      throw new TypeError('HttpSource URLs must not embed credentials; pass `token` instead')
    // The id names the file, without a query string that may hold a signature.
    this.id = `${this.url.origin}${this.url.pathname}`
    this.host = this.url.host
  }

  /**
   * True once the server has answered a range request with the whole file (a 200, as
   * `python3 -m http.server` does): from then on it is read front to back, each read skipping to
   * its start through one answer kept open between reads (see `ByteSource.sequential`).
   */
  get sequential(): boolean {
    return this.ignoresRanges
  }

  async *read(request: ByteRangeRequest): AsyncGenerator<Uint8Array> {
    if (this.ignoresRanges) {
      yield* this.readFromWholeFile(request)
      return
    }
    const { digest, start, end, signal } = request
    const length = end - start
    const headers: Record<string, string> = { range: `bytes=${start}-${end - 1}` }
    if (this.etag !== undefined) headers['if-match'] = this.etag
    const response = await this.openRange(headers, digest, signal)
    const { statusCode } = response
    let finished = false
    try {
      this.checkAnswer(response, digest)
      if (statusCode === 200) {
        // The whole file, from its first byte: this range is cut out of it, and the reads after
        // it go through an answer of their own, kept open between them.
        this.checkWholeFileLength(response, digest)
        if (!this.ignoresRanges) log('%s ignores Range: read front to back from now on', this.id)
        this.ignoresRanges = true
        yield* this.cutRange(new WholeFileBody(response), request)
        return
      }
      this.checkContentRange(response, start, end, digest)
      let received = 0
      for await (const chunk of response.body) {
        if (chunk.byteLength > length - received)
          throw this.error(
            'misbehaved',
            digest,
            `sent more than the ${length} bytes asked for`,
            statusCode,
          )
        received += chunk.byteLength
        yield chunk
      }
      if (received !== length)
        throw this.error(
          'unavailable',
          digest,
          `ended after ${received} of ${length} bytes`,
          statusCode,
        )
      finished = true
    } catch (error) {
      if (isAbortError(error) || ByteSourceError.isInstance(error)) throw error
      throw this.networkError(error, digest)
    } finally {
      // A body read to its end leaves the connection reusable; anything else closes it.
      if (!finished) response.close()
    }
  }

  /**
   * A read from a server that ignores Range: through the whole-file answer left open by the read
   * before when it has not passed this one's start, else through a new one (from the first byte).
   * The answer is kept for the next read once this range is out of it.
   */
  private async *readFromWholeFile(request: ByteRangeRequest): AsyncGenerator<Uint8Array> {
    let body = this.idleBody
    this.idleBody = undefined
    if (body !== undefined && body.position > request.start) {
      body.close()
      body = undefined
    }
    // The answer outlives this read: it stops with its own signal, which this read's aborts only
    // while the read lasts.
    const stop = body?.stop ?? new AbortController()
    const unlink = abortWith(request.signal, stop)
    let keep = false
    try {
      body ??= await this.openWholeFile(request.digest, stop)
      yield* this.cutRange(body, request)
      keep = body.position < (this.options.expectedSize ?? Number.POSITIVE_INFINITY)
    } finally {
      unlink()
      if (keep) this.keepIdle(body!)
      else body?.close()
    }
  }

  /** Asks a server that ignores Range for the whole file: an answer checked as any, and its size. */
  private async openWholeFile(digest: string, stop: AbortController): Promise<WholeFileBody> {
    const headers: Record<string, string> = {}
    if (this.etag !== undefined) headers['if-match'] = this.etag
    const response = await this.openRange(headers, digest, stop.signal)
    try {
      this.checkAnswer(response, digest)
      if (response.statusCode !== 200)
        throw this.error(
          'misbehaved',
          digest,
          `answered ${response.statusCode} to a request for the whole file`,
          response.statusCode,
        )
      this.checkWholeFileLength(response, digest)
    } catch (error) {
      response.close()
      throw error
    }
    return new WholeFileBody(response, stop)
  }

  /** Keeps one whole-file answer open between reads: the one furthest on, since reads come in order. */
  private keepIdle(body: WholeFileBody): void {
    const idle = this.idleBody
    if (idle !== undefined && idle.position >= body.position) {
      body.close()
      return
    }
    idle?.close()
    this.idleBody = body
  }

  /**
   * Bytes [start, end) out of a whole-file answer: what comes before `start` is skipped (with an
   * empty chunk at least once a second, a sign of life for the caller's stall timer), what comes
   * after `end` stays in the body for the next read.
   */
  private async *cutRange(
    body: WholeFileBody,
    { digest, start, end }: ByteRangeRequest,
  ): AsyncGenerator<Uint8Array> {
    try {
      let signOfLifeAt = performance.now()
      while (body.position < start) {
        const chunk = await body.next()
        if (chunk === undefined)
          throw this.error('unavailable', digest, `ended after ${body.position} bytes`, 200)
        const skip = start - body.position
        if (chunk.byteLength > skip) body.unread(chunk.subarray(skip))
        body.position += Math.min(skip, chunk.byteLength)
        if (performance.now() - signOfLifeAt >= 1000) {
          signOfLifeAt = performance.now()
          yield new Uint8Array(0)
        }
      }
      while (body.position < end) {
        const chunk = await body.next()
        if (chunk === undefined)
          throw this.error(
            'unavailable',
            digest,
            `ended after ${body.position - start} of ${end - start} bytes`,
            200,
          )
        const room = end - body.position
        if (chunk.byteLength > room) body.unread(chunk.subarray(room))
        body.position += Math.min(room, chunk.byteLength)
        yield chunk.byteLength > room ? chunk.subarray(0, room) : chunk
      }
    } catch (error) {
      if (isAbortError(error) || ByteSourceError.isInstance(error)) throw error
      throw this.networkError(error, digest)
    }
  }

  /** A whole-file answer must be the artifact's size, when both are known. */
  private checkWholeFileLength(response: ResponseHead, digest: string | undefined): void {
    const length = header(response, 'content-length')
    const expected = this.options.expectedSize
    if (expected !== undefined && length !== undefined && Number(length) !== expected)
      throw this.error(
        'range-not-satisfiable',
        digest,
        `answered 200 with ${length} bytes, not the ${expected} the manifest says`,
        200,
      )
  }

  /** Closes the whole-file answer a read left open, if any. */
  close(): void {
    this.idleBody?.close()
    this.idleBody = undefined
  }

  /** A range request through the reused-buffer sockets when they take it, through undici otherwise. */
  private async openRange(
    headers: Record<string, string>,
    digest: string,
    signal: AbortSignal | undefined,
  ): Promise<RangeResponse> {
    const { sockets } = this.options
    if (sockets !== undefined) {
      const url = this.resolved ?? this.url
      let response: RangeResponse | undefined
      try {
        response = await sockets.request(url, { ...this.headersFor(url), ...headers }, signal)
      } catch (error) {
        if (isAbortError(error) || signal?.aborted) throw error
        throw this.networkError(error, digest)
      }
      if (response !== undefined) {
        try {
          this.checkResolvedStillWorks(url, response, digest)
        } catch (error) {
          response.close()
          throw error
        }
        return response
      }
    }
    const response = await this.send('GET', headers, digest, signal)
    return {
      statusCode: response.statusCode,
      headers: response.headers,
      body: response.body as AsyncIterable<Uint8Array>,
      close: () => closeBody(response),
    }
  }

  /** A cached redirect target (a signed URL, say) that stopped working is forgotten. */
  private checkResolvedStillWorks(url: URL, response: ResponseHead, digest: string | undefined) {
    if (
      url !== this.url &&
      url === this.resolved &&
      [401, 403, 404, 410].includes(response.statusCode)
    ) {
      this.resolved = undefined
      throw this.error(
        'unavailable',
        digest,
        `its redirect target ${url.origin} answered ${response.statusCode}; will ask ${this.url.origin} again`,
        response.statusCode,
      )
    }
  }

  /** Learns the file's size, ETag and, from a hub, its sha256, with one HEAD request. */
  async probe({ signal }: AbortOptions = {}): Promise<HttpProbe> {
    const linked: { sha256?: string; size?: number } = {}
    const response = await this.send('HEAD', {}, undefined, signal, (hop) => {
      const etag = header(hop, 'x-linked-etag')
      const size = header(hop, 'x-linked-size')
      if (etag !== undefined && /^"?[0-9a-f]{64}"?$/.test(etag))
        linked.sha256 = etag.replaceAll('"', '')
      if (size !== undefined && /^\d+$/.test(size)) linked.size = Number(size)
    })
    await response.body.dump().catch(() => {})
    this.checkStatus(response.statusCode, response, undefined)
    const etag = header(response, 'etag')
    const length = header(response, 'content-length')
    const sha256 = linked.sha256 ?? sha256OfEtag(etag)
    return {
      size: linked.size ?? (length === undefined ? undefined : Number(length)),
      etag,
      sha256,
      url: (this.resolved ?? this.url).href,
    }
  }

  private async send(
    method: 'GET' | 'HEAD',
    headers: Record<string, string>,
    digest: string | undefined,
    signal: AbortSignal | undefined,
    onHop?: (response: Dispatcher.ResponseData) => void,
  ): Promise<Dispatcher.ResponseData> {
    const maxRedirects = this.options.maxRedirects ?? 5
    const cached = this.resolved
    let url = cached ?? this.url
    for (let hop = 0; hop <= maxRedirects; hop++) {
      let response: Dispatcher.ResponseData
      try {
        response = await request(url, {
          method,
          signal,
          dispatcher: this.options.dispatcher,
          headers: { ...this.headersFor(url), ...headers },
        })
      } catch (error) {
        if (isAbortError(error)) throw error
        throw this.networkError(error, digest)
      }
      onHop?.(response)
      if (!REDIRECT_STATUSES.has(response.statusCode)) {
        // A cached signed URL that stopped working: forget it and go through the origin again.
        if (url === cached) {
          try {
            this.checkResolvedStillWorks(url, response, digest)
          } catch (error) {
            await response.body.dump().catch(() => {})
            throw error
          }
        }
        if (url !== this.url) this.resolved = url
        return response
      }
      await response.body.dump().catch(() => {})
      const location = header(response, 'location')
      if (location === undefined)
        throw this.error(
          'misbehaved',
          digest,
          `answered ${response.statusCode} without a Location`,
          response.statusCode,
        )
      const next = new URL(location, url)
      if (url.protocol === 'https:' && next.protocol !== 'https:')
        throw this.error(
          'forbidden',
          digest,
          `redirected from https to ${next.protocol.slice(0, -1)} (${next.origin}); refused, since that would expose the download`,
          response.statusCode,
        )
      if (next.protocol !== 'https:' && next.protocol !== 'http:')
        throw this.error(
          'forbidden',
          digest,
          `redirected to an unsupported ${next.protocol} URL`,
          response.statusCode,
        )
      log('%s redirected to %s', this.id, next.origin)
      url = next
    }
    throw this.error('misbehaved', digest, `redirected more than ${maxRedirects} times`)
  }

  /** Credentials belong to the configured origin: a redirect elsewhere gets none. */
  private headersFor(url: URL): Record<string, string> {
    const headers: Record<string, string> = {
      'user-agent': this.options.userAgent ?? `llmesh-downloader/${__PACKAGE_VERSION__}`,
    }
    if (url.origin !== this.url.origin) return headers
    Object.assign(headers, this.options.headers)
    if (this.options.token !== undefined) headers.authorization = `Bearer ${this.options.token}`
    return headers
  }

  /** What every answer to a read must pass: its status, that it is no HTML page, its ETag. */
  private checkAnswer(response: ResponseHead, digest: string | undefined): void {
    this.checkStatus(response.statusCode, response, digest)
    this.checkContentType(response, digest)
    this.checkEtag(response, digest)
  }

  private checkStatus(
    statusCode: number,
    response: ResponseHead,
    digest: string | undefined,
  ): void {
    if (statusCode === 200 || statusCode === 206) return
    const retryAfterMs = parseRetryAfter(header(response, 'retry-after'))
    if (statusCode === 404 || statusCode === 410)
      throw this.error(
        'not-found',
        digest,
        `answered ${statusCode}: it does not have the file`,
        statusCode,
      )
    if (statusCode === 401 || statusCode === 403)
      throw this.error(
        'forbidden',
        digest,
        `answered ${statusCode}: check the token or the mirror's access rules`,
        statusCode,
      )
    if (statusCode === 412)
      throw this.error(
        'misbehaved',
        digest,
        `answered 412: the file changed upstream (its ETag is no longer ${this.etag})`,
        statusCode,
      )
    if (statusCode === 416)
      throw this.error(
        'range-not-satisfiable',
        digest,
        'answered 416: it holds a file of another size',
        statusCode,
      )
    // A 429 or 503 that names no time to wait is a server at its cap on requests at once (nginx's
    // limit_conn answers 503): it serves fewer, with no pause.
    if ((statusCode === 429 || statusCode === 503) && retryAfterMs === undefined)
      throw this.error(
        'busy',
        digest,
        `answered ${statusCode}: too many requests at once`,
        statusCode,
      )
    if (RETRYABLE_STATUSES.has(statusCode) || statusCode >= 500)
      throw this.error(
        'unavailable',
        digest,
        `answered ${statusCode}${retryAfterMs === undefined ? '' : ` (retry after ${retryAfterMs} ms)`}`,
        statusCode,
        retryAfterMs,
      )
    throw this.error('misbehaved', digest, `answered an unexpected ${statusCode}`, statusCode)
  }

  private checkContentType(response: ResponseHead, digest: string | undefined): void {
    const type = header(response, 'content-type')
    if (type !== undefined && /^\s*text\/html\b/i.test(type))
      throw this.error(
        'misbehaved',
        digest,
        `answered ${response.statusCode} with an HTML page instead of the file`,
        response.statusCode,
      )
  }

  private checkEtag(response: ResponseHead, digest: string | undefined): void {
    const etag = header(response, 'etag')
    if (etag === undefined || etag.startsWith('W/')) return
    if (this.etag !== undefined && etag !== this.etag)
      throw this.error(
        'misbehaved',
        digest,
        `changed its ETag from ${this.etag} to ${etag}: the file changed upstream`,
        response.statusCode,
      )
    const contentDigest = sha256OfEtag(etag)
    if (digest !== undefined && contentDigest !== undefined && contentDigest !== digest)
      throw this.error(
        'misbehaved',
        digest,
        `serves sha256 ${contentDigest} (its ETag), not ${digest}`,
        response.statusCode,
      )
    this.etag = etag
  }

  private checkContentRange(
    response: ResponseHead,
    start: number,
    end: number,
    digest: string | undefined,
  ): void {
    const value = header(response, 'content-range')
    const match = value === undefined ? null : /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(value.trim())
    if (match === null)
      throw this.error(
        'misbehaved',
        digest,
        `answered 206 with Content-Range "${value ?? ''}", not bytes ${start}-${end - 1}/<size>`,
        206,
      )
    const [, first, last, total] = match
    if (Number(first) !== start || Number(last) !== end - 1)
      throw this.error(
        'misbehaved',
        digest,
        `answered bytes ${first}-${last} to a request for ${start}-${end - 1}`,
        206,
      )
    const expected = this.options.expectedSize
    if (expected !== undefined && total !== '*' && Number(total) !== expected)
      throw this.error(
        'range-not-satisfiable',
        digest,
        `holds ${total} bytes, not the ${expected} the manifest says`,
        206,
      )
  }

  private networkError(error: unknown, digest: string | undefined): ByteSourceError {
    const message = error instanceof Error ? error.message : String(error)
    return new ByteSourceError({
      failure: 'unavailable',
      source: this.id,
      digest,
      message: `${this.id}: ${message}`,
      cause: error,
    })
  }

  private error(
    failure: ConstructorParameters<typeof ByteSourceError>[0]['failure'],
    digest: string | undefined,
    what: string,
    statusCode?: number,
    retryAfterMs?: number,
  ): ByteSourceError {
    return new ByteSourceError({
      failure,
      source: this.id,
      digest,
      statusCode,
      retryAfterMs,
      message: `${this.id} ${what}`,
    })
  }
}

/**
 * A whole-file answer (200) read across range requests: it knows where it stands in the file, and
 * what is left of the chunk a range ended in (valid until the body is read on).
 */
class WholeFileBody {
  /** Where in the file the next byte the body gives lies. */
  position = 0
  private readonly chunks: AsyncIterator<Uint8Array>
  private rest: Uint8Array | undefined

  constructor(
    private readonly response: RangeResponse,
    /** Stops the answer (its own signal), when it has one that outlives a read. */
    readonly stop?: AbortController,
  ) {
    this.chunks = response.body[Symbol.asyncIterator]()
  }

  /** The next bytes, or undefined at the end of the answer. */
  async next(): Promise<Uint8Array | undefined> {
    const rest = this.rest
    if (rest !== undefined) {
      this.rest = undefined
      return rest
    }
    const { done, value } = await this.chunks.next()
    return done ? undefined : value
  }

  /** Gives back bytes taken but not used: `next()` returns them first. */
  unread(bytes: Uint8Array): void {
    this.rest = bytes
  }

  close(): void {
    this.rest = undefined
    this.response.close()
  }
}

/** Aborts `controller` when `signal` aborts, until the returned function is called. */
function abortWith(signal: AbortSignal | undefined, controller: AbortController | undefined) {
  if (signal === undefined || controller === undefined) return () => {}
  const onAbort = () => controller.abort(signal.reason)
  if (signal.aborted) onAbort()
  else signal.addEventListener('abort', onAbort, { once: true })
  return () => signal.removeEventListener('abort', onAbort)
}

/** Closes a body not read to its end; the error undici then raises has nobody left to hear it. */
function closeBody(response: Dispatcher.ResponseData): void {
  response.body.on('error', () => {})
  response.body.destroy()
}

function header(response: ResponseHead, name: string): string | undefined {
  const value = response.headers[name]
  return Array.isArray(value) ? value[0] : value
}

/** A strong ETag that is a bare sha256 (as hubs and some object stores use) names the content. */
function sha256OfEtag(etag: string | undefined): string | undefined {
  const match = etag === undefined ? null : /^"?([0-9a-f]{64})"?$/.exec(etag)
  return match?.[1]
}

/** `Retry-After` in seconds or as an HTTP date, in milliseconds from now. */
export function parseRetryAfter(value: string | undefined, now = Date.now()): number | undefined {
  if (value === undefined) return undefined
  if (/^\d+$/.test(value.trim())) return Number(value.trim()) * 1000
  const date = Date.parse(value)
  return Number.isNaN(date) ? undefined : Math.max(0, date - now)
}
