/**
 * Range requests over keep-alive sockets that each read into one reused buffer (`onread`), for the
 * bodies of pieces. undici allocates a fresh buffer for every socket read, and at hundreds of
 * megabytes a second those buffers, freed only by garbage collections, were most of a pull's peak
 * memory (`bench/read-path.bench.ts`).
 *
 * Only what a piece needs is spoken: one GET at a time per socket, HTTP/1.1, a body with a
 * Content-Length. Anything else (a redirect, a chunked or unsized body, HTTP/1.0) is left to
 * undici: `request()` answers `undefined` and the caller asks again through undici.
 */
import { isIP, type Socket, connect as tcpConnect } from 'node:net'
import { type ConnectionOptions, connect as tlsConnect } from 'node:tls'

/** An answer's status line and headers (names in lower case), as checks read them. */
export interface ResponseHead {
  statusCode: number
  headers: Record<string, string | string[] | undefined>
}

export interface RangeResponse extends ResponseHead {
  /** The body, in views of the socket's read buffer: each one is valid until the next is asked for. */
  body: AsyncIterable<Uint8Array>
  /** Stops reading; the socket goes back to the pool only if its body was read to the end. */
  close(): void
}

export interface RangeSocketsOptions {
  /** Extra certificate authorities for https (tests); the system's otherwise. */
  ca?: string | Buffer
  /** Idle sockets kept per origin. Default 16. */
  maxIdlePerOrigin?: number
  /** An idle socket is closed after this long. Default 10 s. */
  idleTimeoutMs?: number
}

const READ_BUFFER_BYTES = 64 * 1024
const MAX_HEAD_BYTES = 64 * 1024
/** Answers that send the request elsewhere (followed by hand in `HttpSource`). */
export const REDIRECT_STATUSES = new Set([301, 302, 303, 307, 308])

/** A kept-alive socket that failed before any byte of an answer: the server had closed it. */
class StaleSocket extends Error {}

class PooledSocket {
  readonly socket: Socket
  private readonly buffer = Buffer.allocUnsafe(READ_BUFFER_BYTES)
  /** Receives each read while an answer is read; returns false to pause the socket. */
  onBytes: ((bytes: Buffer) => boolean) | undefined
  onFailure: ((error: Error) => void) | undefined
  used = false
  alive = true

  constructor(
    readonly origin: string,
    url: URL,
    ca: string | Buffer | undefined,
  ) {
    const onread = {
      buffer: this.buffer,
      callback: (length: number) => this.received(length),
    }
    const secure = url.protocol === 'https:'
    const host = url.hostname.replace(/^\[|\]$/g, '')
    const port = Number(url.port || (secure ? 443 : 80))
    this.socket = secure
      ? tlsConnect({
          host,
          port,
          onread,
          ALPNProtocols: ['http/1.1'],
          ...(isIP(host) === 0 ? { servername: host } : {}),
          ...(ca === undefined ? {} : { ca }),
          // Node's tls.connect takes `onread` as net.connect does; its types leave it out.
        } as ConnectionOptions)
      : tcpConnect({ host, port, onread })
    this.socket.setNoDelay(true)
    this.socket.on('error', (error) => this.fail(error))
    this.socket.on('end', () => this.fail(new Error('the server closed the connection')))
    this.socket.on('close', () => this.fail(new Error('the connection closed')))
    // Armed only while idle (`setTimeout` in the pool): an idle socket past it is closed.
    this.socket.on('timeout', () => this.destroy())
  }

  private received(length: number): boolean {
    // Bytes nobody asked for (on an idle socket): the socket cannot be trusted any more.
    if (this.onBytes === undefined) {
      this.destroy()
      return false
    }
    return this.onBytes(this.buffer.subarray(0, length))
  }

  private fail(error: Error): void {
    this.alive = false
    const onFailure = this.onFailure
    this.onFailure = undefined
    onFailure?.(error)
  }

  destroy(): void {
    this.alive = false
    this.socket.destroy()
  }
}

/** Keep-alive sockets per origin, shared by the HTTP sources of one downloader. */
export class RangeSockets {
  private readonly idle = new Map<string, PooledSocket[]>()
  /** Origins whose answers this path cannot read (unsized bodies): every request goes to undici. */
  private readonly leftToUndici = new Set<string>()
  private closed = false

  constructor(private readonly options: RangeSocketsOptions = {}) {}

  /**
   * GETs `url` with `headers` (a Range among them) and answers once the head has arrived; the
   * body follows through `body`. `undefined` when the answer is one this path leaves to undici.
   */
  async request(
    url: URL,
    headers: Record<string, string>,
    signal?: AbortSignal,
  ): Promise<RangeResponse | undefined> {
    if (this.leftToUndici.has(url.origin)) return undefined
    for (let attempt = 0; ; attempt++) {
      signal?.throwIfAborted()
      if (this.closed) throw new Error('the downloader is closed')
      const pooled = this.take(url.origin) ?? new PooledSocket(url.origin, url, this.options.ca)
      try {
        return await this.exchange(pooled, url, headers, signal)
      } catch (error) {
        // A kept-alive socket the server had closed fails before answering: once more, anew.
        if (error instanceof StaleSocket && attempt === 0) continue
        throw error instanceof StaleSocket ? (error.cause as Error) : error
      }
    }
  }

  /** Closes every idle socket; sockets in use close as their answers end. */
  close(): void {
    this.closed = true
    for (const sockets of this.idle.values()) for (const pooled of sockets) pooled.destroy()
    this.idle.clear()
  }

  private take(origin: string): PooledSocket | undefined {
    const sockets = this.idle.get(origin)
    while (sockets !== undefined && sockets.length > 0) {
      const pooled = sockets.pop()!
      if (!pooled.alive) continue
      pooled.socket.setTimeout(0)
      pooled.socket.ref()
      return pooled
    }
    return undefined
  }

  private release(pooled: PooledSocket): void {
    pooled.onBytes = undefined
    const sockets = this.idle.get(pooled.origin) ?? []
    if (this.closed || !pooled.alive || sockets.length >= (this.options.maxIdlePerOrigin ?? 16)) {
      pooled.destroy()
      return
    }
    pooled.onFailure = () => {
      const index = sockets.indexOf(pooled)
      if (index >= 0) sockets.splice(index, 1)
    }
    pooled.socket.setTimeout(this.options.idleTimeoutMs ?? 10_000)
    pooled.socket.unref()
    // Reading while idle sees the server close the socket (or send what nobody asked for).
    pooled.socket.resume()
    sockets.push(pooled)
    this.idle.set(pooled.origin, sockets)
  }

  private exchange(
    pooled: PooledSocket,
    url: URL,
    headers: Record<string, string>,
    signal: AbortSignal | undefined,
  ): Promise<RangeResponse | undefined> {
    const reused = pooled.used
    pooled.used = true
    return new Promise((resolve, reject) => {
      /** The start of an answer head split across reads (copied out of the reused buffer). */
      let head: Buffer | undefined
      let receivedAny = false
      let answered = false
      let remaining = 0
      let reusable = true
      /** A view of the read buffer the body iterator has not taken yet. */
      let pending: Buffer | undefined
      let failure: unknown
      let wake: (() => void) | undefined
      let settled = false

      const finish = (keep: boolean) => {
        if (settled) return
        settled = true
        signal?.removeEventListener('abort', onAbort)
        pooled.onFailure = undefined
        if (keep && reusable && remaining === 0 && pending === undefined) this.release(pooled)
        else pooled.destroy()
      }
      const fail = (error: unknown) => {
        if (failure !== undefined) return
        failure = error
        if (!answered) {
          finish(false)
          reject(
            reused && !receivedAny && !signal?.aborted
              ? new StaleSocket('stale', { cause: error })
              : error,
          )
        } else wake?.()
      }
      const onAbort = () => fail(signal!.reason)
      signal?.addEventListener('abort', onAbort, { once: true })
      pooled.onFailure = fail

      const deliver = (bytes: Buffer): boolean => {
        if (bytes.byteLength > remaining) {
          // More than the body: nothing was asked for after it, so the socket is not reused.
          reusable = false
          bytes = bytes.subarray(0, remaining)
        }
        remaining -= bytes.byteLength
        if (bytes.byteLength === 0) return true
        pending = bytes
        wake?.()
        return false // paused until the iterator has taken these bytes
      }

      pooled.onBytes = (bytes) => {
        if (answered) return deliver(bytes)
        receivedAny = true
        // Usually the whole head is in one read, followed by the body's first bytes: only the head
        // is turned into text, and the rest stays a view. A head split across reads is copied out
        // of the reused buffer until it is whole.
        const joined = head === undefined ? bytes : Buffer.concat([head, bytes])
        const end = joined.indexOf('\r\n\r\n')
        if (end < 0) {
          if (joined.byteLength > MAX_HEAD_BYTES) fail(new Error('an answer head over 64 KiB'))
          else head = Buffer.from(joined)
          return true
        }
        head = undefined
        const parsed = parseHead(joined.subarray(0, end).toString('latin1'))
        if (parsed === undefined) {
          fail(new Error(`not an HTTP/1.1 answer: ${joined.subarray(0, 60).toString('latin1')}`))
          return false
        }
        const length = parsed.headers['content-length']
        const sized =
          parsed.headers['transfer-encoding'] === undefined &&
          typeof length === 'string' &&
          /^\d+$/.test(length)
        if (parsed.statusCode < 200 || REDIRECT_STATUSES.has(parsed.statusCode) || !sized) {
          // A server that does not size its bodies will not start now: its origin goes to undici.
          if (!sized && !REDIRECT_STATUSES.has(parsed.statusCode)) this.leftToUndici.add(url.origin)
          answered = true
          finish(false)
          resolve(undefined)
          return false
        }
        // A server that closes after each answer is read all the same, on a new socket each time.
        reusable = parsed.keepAlive
        answered = true
        remaining = Number(length)
        resolve({ statusCode: parsed.statusCode, headers: parsed.headers, body: body(), close })
        return deliver(joined.subarray(end + 4))
      }

      function close(): void {
        finish(remaining === 0 && pending === undefined)
      }

      async function* body(): AsyncGenerator<Uint8Array> {
        try {
          for (;;) {
            if (pending !== undefined) {
              const chunk = pending
              yield chunk
              // Taken: the read buffer may be filled again.
              pending = undefined
              if (remaining > 0) pooled.socket.resume()
              continue
            }
            if (remaining === 0) return
            if (failure !== undefined) throw failure
            await new Promise<void>((resume) => {
              wake = resume
            })
            wake = undefined
          }
        } finally {
          finish(remaining === 0 && pending === undefined && failure === undefined)
        }
      }

      const path = `${url.pathname}${url.search}`
      const lines = [`GET ${path} HTTP/1.1`, `host: ${url.host}`]
      for (const [name, value] of Object.entries(headers)) lines.push(`${name}: ${value}`)
      pooled.socket.write(`${lines.join('\r\n')}\r\n\r\n`)
    })
  }
}

function parseHead(
  text: string,
):
  | { statusCode: number; keepAlive: boolean; headers: Record<string, string | undefined> }
  | undefined {
  const lines = text.split('\r\n')
  const status = /^HTTP\/1\.([01]) (\d{3})/.exec(lines[0] ?? '')
  if (status === null) return undefined
  const headers: Record<string, string | undefined> = {}
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(':')
    if (colon <= 0) continue
    const name = line.slice(0, colon).trim().toLowerCase()
    headers[name] ??= line.slice(colon + 1).trim()
  }
  return {
    statusCode: Number(status[2]),
    keepAlive: status[1] === '1' && !/\bclose\b/i.test(headers.connection ?? ''),
    headers,
  }
}
