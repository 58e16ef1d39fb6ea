/**
 * An HTTP mirror for tests and benchmarks: serves files with byte ranges and ETags like a CDN,
 * and injects the faults real mirrors have, on demand, while a download runs.
 *
 * Faults are rules: each names what goes wrong and, optionally, which requests it hits (a path,
 * a byte offset the requested range covers, the n-th connection) and how many times. A
 * per-connection rate limit makes a fast local mirror behave like a far one.
 */
import { open, stat } from 'node:fs/promises'
import {
  createServer as createHttpServer,
  type IncomingMessage,
  type ServerResponse,
} from 'node:http'
import { createServer as createHttpsServer } from 'node:https'
import type { Socket } from 'node:net'
import { setTimeout as delay } from 'node:timers/promises'
import { type RunningServer, startServer } from './servers.js'

/** What goes wrong. */
export type MirrorFault =
  /** Destroys the connection after every `everyBytes` body bytes it has carried. */
  | { kind: 'reset'; everyBytes: number }
  /** Accepts the request and never answers (until the client gives up or the mirror closes). */
  | { kind: 'stall-before-headers' }
  /** Sends the headers and `afterBytes` of the body, then goes silent. */
  | { kind: 'stall-mid-body'; afterBytes: number }
  /** Answers with a status, for example 429 or 503, with an optional `Retry-After` in seconds. */
  | { kind: 'status'; status: number; retryAfterSeconds?: number }
  /** Ignores the Range header and sends the whole file with 200. */
  | { kind: 'ignore-range' }
  /** Answers 200 with an HTML error page, as a captive portal or a broken CDN does. */
  | { kind: 'html' }
  /** Flips the bytes in [offset, offset + length) of what it sends. */
  | { kind: 'corrupt'; offset: number; length?: number }
  /** From now on the file has another ETag, as if it changed upstream. */
  | { kind: 'change-etag' }
  /** Redirects to `location` (another origin, or http from https). */
  | { kind: 'redirect'; location: string; status?: 301 | 302 | 307 | 308 }
  /** Destroys the connection without answering. */
  | { kind: 'refuse' }

export interface MirrorFaultRule {
  fault: MirrorFault
  /** Only requests for this path (default: every path). */
  path?: string
  /** Only requests whose byte range covers this offset. */
  coversOffset?: number
  /** Only requests on the n-th connection the mirror accepted (1-based). */
  connection?: number
  /** Only once the mirror has seen this many requests before (0-based count of earlier ones). */
  afterRequests?: number
  /** How many requests it hits before it wears off (default: all of them). */
  times?: number
}

export interface MirrorFile {
  /** The file's bytes, or the path of a file on disk (read per request, never held in memory). */
  data: Uint8Array | string
  contentType?: string
  /** Headers on every answer for this path, redirects included (a hub's `X-Linked-Etag`). */
  headers?: Record<string, string>
}

export interface MirrorOptions {
  /** URL path (starting with `/`) → file. */
  files: Record<string, MirrorFile | Uint8Array | string>
  /** Caps each connection at this many body bytes per second, across all the requests it carries. */
  bytesPerSecondPerConnection?: number
  faults?: MirrorFaultRule[]
  /** Serve https with this key and certificate (see `testTlsKey` / `testTlsCertificate`). */
  tls?: { key: string; cert: string }
  /**
   * Answers 503 (no `Retry-After`) to a request that arrives while this many are being served,
   * as nginx's `limit_conn` does.
   */
  maxConcurrentRequests?: number
}

/** One request the mirror saw, for assertions: what was asked, with which headers, what went out. */
export interface MirrorRequestRecord {
  method: string
  path: string
  range: string | undefined
  headers: Record<string, string | string[] | undefined>
  connection: number
  /** `performance.now()` when the request arrived. */
  receivedAt: number
  status: number | undefined
  bodyBytesSent: number
  faults: MirrorFault['kind'][]
}

export interface Mirror extends RunningServer {
  /** The URL of one served path. */
  urlOf(path: string): string
  /** Adds a fault rule while the mirror runs. */
  inject(rule: MirrorFaultRule): void
  clearFaults(): void
  setRate(bytesPerSecondPerConnection: number | undefined): void
  /** Every request so far, in arrival order. */
  readonly requests: readonly MirrorRequestRecord[]
  /** Body bytes sent so far across all requests. */
  readonly bodyBytesSent: number
}

interface ServedFile {
  size: number
  headers: Record<string, string>
  contentType: string
  etagGeneration: number
  baseEtag: string
  read(start: number, end: number): AsyncIterable<Uint8Array>
}

const CHUNK_BYTES = 64 * 1024
/** A capped connection may send this much at once after a pause, as TCP would. */
const RATE_BURST_BYTES = 64 * 1024

export async function startMirror(options: MirrorOptions): Promise<Mirror> {
  const files = new Map<string, ServedFile>()
  for (const [path, entry] of Object.entries(options.files)) {
    if (!path.startsWith('/')) throw new TypeError(`mirror path "${path}" must start with /`)
    const file = typeof entry === 'string' || entry instanceof Uint8Array ? { data: entry } : entry
    files.set(path, await servedFile(file))
  }
  let rules: Array<MirrorFaultRule & { remaining: number }> = (options.faults ?? []).map(withCount)
  let rate = options.bytesPerSecondPerConnection
  const requests: MirrorRequestRecord[] = []
  let bodyBytesSent = 0
  let connections = 0
  let serving = 0
  const connectionIds = new WeakMap<Socket, number>()
  const connectionBytes = new WeakMap<Socket, number>()
  /** Per-connection token buckets: the cap holds across all requests a connection carries. */
  const connectionBudgets = new WeakMap<Socket, { tokens: number; at: number }>()
  const pace = async (socket: Socket, bytes: number): Promise<void> => {
    if (rate === undefined) return
    const now = performance.now()
    const budget = connectionBudgets.get(socket) ?? { tokens: RATE_BURST_BYTES, at: now }
    budget.tokens = Math.min(RATE_BURST_BYTES, budget.tokens + ((now - budget.at) / 1000) * rate)
    budget.at = now
    budget.tokens -= bytes
    connectionBudgets.set(socket, budget)
    if (budget.tokens < 0) await delay((-budget.tokens / rate) * 1000)
  }

  const handler = (request: IncomingMessage, response: ServerResponse): void => {
    void serve(request, response).catch(() => response.destroy())
  }
  const server = options.tls
    ? createHttpsServer({ key: options.tls.key, cert: options.tls.cert }, handler)
    : createHttpServer(handler)
  server.keepAliveTimeout = 30_000
  server.on(options.tls ? 'secureConnection' : 'connection', (socket: Socket) => {
    connectionIds.set(socket, ++connections)
  })
  const running = await startServer(server)

  function matching(
    path: string,
    connection: number,
    range: { start: number; end: number },
  ): MirrorFault[] {
    const hits: MirrorFault[] = []
    for (const rule of rules) {
      if (rule.remaining <= 0) continue
      if (rule.path !== undefined && rule.path !== path) continue
      if (rule.connection !== undefined && rule.connection !== connection) continue
      if (rule.afterRequests !== undefined && requests.length - 1 < rule.afterRequests) continue
      if (
        rule.coversOffset !== undefined &&
        (rule.coversOffset < range.start || rule.coversOffset >= range.end)
      )
        continue
      rule.remaining--
      hits.push(rule.fault)
    }
    return hits
  }

  async function serve(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const socket = request.socket
    const connection = connectionIds.get(socket) ?? 0
    const path = new URL(request.url ?? '/', 'http://mirror').pathname
    const rangeHeader = request.headers.range
    const record: MirrorRequestRecord = {
      method: request.method ?? 'GET',
      path,
      range: rangeHeader,
      headers: { ...request.headers },
      connection,
      receivedAt: performance.now(),
      status: undefined,
      bodyBytesSent: 0,
      faults: [],
    }
    requests.push(record)
    const file = files.get(path)
    const answer = (status: number, headers: Record<string, string | number> = {}, body = '') => {
      record.status = status
      response.writeHead(status, {
        'content-length': Buffer.byteLength(body),
        ...file?.headers,
        ...headers,
      })
      response.end(body)
    }
    if (options.maxConcurrentRequests !== undefined) {
      if (serving >= options.maxConcurrentRequests)
        return answer(503, { 'content-type': 'text/plain' }, 'too many requests at once\n')
      serving++
      response.once('close', () => serving--)
    }
    if (file === undefined) return answer(404, { 'content-type': 'text/plain' }, 'not found\n')
    if (request.method !== 'GET' && request.method !== 'HEAD')
      return answer(405, { allow: 'GET, HEAD' })

    const parsed = parseRange(rangeHeader, file.size)
    const requested = parsed ?? { start: 0, end: file.size }
    const faults = matching(path, connection, requested)
    record.faults = faults.map((fault) => fault.kind)
    const has = <Kind extends MirrorFault['kind']>(kind: Kind) =>
      faults.find((fault): fault is Extract<MirrorFault, { kind: Kind }> => fault.kind === kind)

    if (has('change-etag')) file.etagGeneration++
    const etag = `"${file.baseEtag}${file.etagGeneration === 0 ? '' : `-v${file.etagGeneration + 1}`}"`

    if (has('refuse')) return void socket.destroy()
    if (has('stall-before-headers')) return // the response stays open until the client leaves
    const redirect = has('redirect')
    if (redirect) return answer(redirect.status ?? 302, { location: redirect.location })
    const status = has('status')
    if (status)
      return answer(
        status.status,
        {
          'content-type': 'text/plain',
          ...(status.retryAfterSeconds === undefined
            ? {}
            : { 'retry-after': status.retryAfterSeconds }),
        },
        `mirror fault: ${status.status}\n`,
      )
    if (has('html'))
      return answer(
        200,
        { 'content-type': 'text/html; charset=utf-8' },
        '<!doctype html><html><body><h1>Service temporarily unavailable</h1></body></html>\n',
      )
    const ifMatch = request.headers['if-match']
    if (ifMatch !== undefined && ifMatch !== '*' && ifMatch !== etag)
      return answer(412, { 'content-type': 'text/plain', etag }, 'precondition failed\n')
    if (rangeHeader !== undefined && parsed === undefined)
      return answer(416, { 'content-range': `bytes */${file.size}` })

    const ranged = parsed !== undefined && !has('ignore-range')
    const { start, end } = ranged ? requested : { start: 0, end: file.size }
    const headers: Record<string, string | number> = {
      ...file.headers,
      'content-type': file.contentType,
      'content-length': end - start,
      'accept-ranges': 'bytes',
      etag,
    }
    if (ranged) headers['content-range'] = `bytes ${start}-${end - 1}/${file.size}`
    record.status = ranged ? 206 : 200
    response.writeHead(record.status, headers)
    if (request.method === 'HEAD') return void response.end()

    const reset = has('reset')
    const stall = has('stall-mid-body')
    const corrupt = has('corrupt')
    let sent = 0
    for await (const chunk of file.read(start, end)) {
      let bytes = chunk
      if (corrupt) bytes = flipBytes(bytes, start + sent, corrupt.offset, corrupt.length ?? 1)
      if (stall && sent + bytes.byteLength > stall.afterBytes) {
        bytes = bytes.subarray(0, Math.max(0, stall.afterBytes - sent))
        if (bytes.byteLength > 0) await write(response, bytes)
        account(bytes.byteLength)
        return // silent from here on: the socket stays open, nothing more comes
      }
      if (reset) {
        const carried = connectionBytes.get(socket) ?? 0
        const room = reset.everyBytes - (carried % reset.everyBytes)
        if (bytes.byteLength >= room) {
          const head = bytes.subarray(0, room)
          await write(response, head)
          account(head.byteLength)
          socket.destroy()
          return
        }
      }
      await pace(socket, bytes.byteLength)
      if (response.destroyed) return // the client left while the chunk waited for its pace
      await write(response, bytes)
      account(bytes.byteLength)
    }
    response.end()

    function account(count: number): void {
      sent += count
      record.bodyBytesSent += count
      bodyBytesSent += count
      connectionBytes.set(socket, (connectionBytes.get(socket) ?? 0) + count)
    }
  }

  return {
    ...running,
    urlOf: (path) => `${running.url}${path}`,
    inject: (rule) => {
      rules.push(withCount(rule))
    },
    clearFaults: () => {
      rules = []
    },
    setRate: (value) => {
      rate = value
    },
    get requests() {
      return requests
    },
    get bodyBytesSent() {
      return bodyBytesSent
    },
  }
}

function withCount(rule: MirrorFaultRule): MirrorFaultRule & { remaining: number } {
  return { ...rule, remaining: rule.times ?? Number.POSITIVE_INFINITY }
}

async function servedFile(file: MirrorFile): Promise<ServedFile> {
  const contentType = file.contentType ?? 'application/octet-stream'
  if (typeof file.data !== 'string') {
    const bytes = file.data
    return {
      size: bytes.byteLength,
      headers: file.headers ?? {},
      contentType,
      etagGeneration: 0,
      baseEtag: `b${bytes.byteLength.toString(16)}`,
      async *read(start, end) {
        for (let at = start; at < end; at += CHUNK_BYTES)
          yield bytes.subarray(at, Math.min(end, at + CHUNK_BYTES))
      },
    }
  }
  const path = file.data
  const { size, mtimeMs } = await stat(path)
  return {
    size,
    headers: file.headers ?? {},
    contentType,
    etagGeneration: 0,
    baseEtag: `${size.toString(16)}-${Math.trunc(mtimeMs).toString(16)}`,
    async *read(start, end) {
      const handle = await open(path, 'r')
      try {
        for (let at = start; at < end; ) {
          const buffer = Buffer.allocUnsafe(Math.min(CHUNK_BYTES * 4, end - at))
          const { bytesRead } = await handle.read(buffer, 0, buffer.byteLength, at)
          if (bytesRead === 0) return
          yield buffer.subarray(0, bytesRead)
          at += bytesRead
        }
      } finally {
        await handle.close()
      }
    },
  }
}

/** Parses a single `bytes=a-b`, `bytes=a-` or `bytes=-n` range; undefined when absent or unsatisfiable. */
function parseRange(
  header: string | undefined,
  size: number,
): { start: number; end: number } | undefined {
  if (header === undefined) return undefined
  const match = /^bytes=(\d*)-(\d*)$/.exec(header.trim())
  if (match === null) return undefined
  const [, first = '', last = ''] = match
  if (first === '' && last === '') return undefined
  if (first === '') {
    const length = Math.min(size, Number(last))
    return length > 0 ? { start: size - length, end: size } : undefined
  }
  const start = Number(first)
  const end = last === '' ? size : Math.min(size, Number(last) + 1)
  return start < size && start < end ? { start, end } : undefined
}

function flipBytes(chunk: Uint8Array, chunkStart: number, offset: number, length: number) {
  const from = Math.max(offset, chunkStart)
  const to = Math.min(offset + length, chunkStart + chunk.byteLength)
  if (from >= to) return chunk
  const copy = Uint8Array.from(chunk)
  for (let at = from; at < to; at++) copy[at - chunkStart]! ^= 0xff
  return copy
}

/** Writes a chunk; waits for a full buffer to drain, and rejects once the connection is gone. */
function write(response: ServerResponse, bytes: Uint8Array): Promise<void> {
  return new Promise((resolve, reject) => {
    // A destroyed response takes no more bytes and emits no drain: its close may have passed too.
    if (response.destroyed) reject(new Error('connection closed'))
    else if (response.write(bytes)) resolve()
    else {
      const cleanup = () => {
        response.off('drain', onDrain)
        response.off('close', onClose)
      }
      const onDrain = () => {
        cleanup()
        resolve()
      }
      const onClose = () => {
        cleanup()
        reject(new Error('connection closed'))
      }
      response.once('drain', onDrain)
      response.once('close', onClose)
    }
  })
}
