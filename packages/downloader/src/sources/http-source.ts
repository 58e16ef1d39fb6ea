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
 *   total is the artifact's size. A 200 to a range request is used only when the range starts
 *   at 0 (the body's start is then the range); otherwise it is refused without keeping a byte.
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

  async *read({ digest, start, end, signal }: ByteRangeRequest): AsyncGenerator<Uint8Array> {
    const length = end - start
    const headers: Record<string, string> = { range: `bytes=${start}-${end - 1}` }
    if (this.etag !== undefined) headers['if-match'] = this.etag
    const response = await this.openRange(headers, digest, signal)
    const { statusCode } = response
    let finished = false
    try {
      this.checkStatus(statusCode, response, digest)
      this.checkContentType(response, digest)
      this.checkEtag(response, digest)
      if (statusCode === 206) this.checkContentRange(response, start, end, digest)
      else if (start !== 0)
        throw this.error(
          'misbehaved',
          digest,
          `answered 200 to a range request for bytes ${start}-${end - 1}: it ignores Range`,
          statusCode,
        )

      let received = 0
      for await (const chunk of response.body) {
        const room = length - received
        if (chunk.byteLength > room) {
          if (statusCode === 206)
            throw this.error(
              'misbehaved',
              digest,
              `sent more than the ${length} bytes asked for`,
              statusCode,
            )
          // A 200 carries the whole file: its first `length` bytes are the range; drop the rest.
          if (room > 0) yield chunk.subarray(0, room)
          received = length
          return
        }
        received += chunk.byteLength
        yield chunk
        // A 206 is read to its natural end, so the connection goes back to the pool.
        if (received === length && statusCode === 200) return
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
