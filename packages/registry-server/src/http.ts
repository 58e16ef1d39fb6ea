/**
 * The registry's HTTP layer on plain `node:http`: a route table, a request with a size-limited
 * body, and replies. A thousand heartbeats a second made the fetch-style Request/Response objects
 * of a framework the registry's main source of garbage (and of its latency tail), so the two hot
 * routes, and with them all routes, go without.
 */
import type { IncomingMessage, RequestListener, ServerResponse } from 'node:http'
import { readBodyWithin } from '@llmesh/core'

/** What a handler answers. */
export class Reply {
  constructor(
    readonly status: number,
    /**
     * Text, or bytes already encoded: one buffer, or pieces sent in one write (a large answer
     * joined from prepared pieces without copying them into a new buffer).
     */
    readonly body: string | Buffer | readonly Buffer[],
    readonly headers: Record<string, string> = { 'content-type': 'application/json' },
  ) {}

  static json(value: unknown, status = 200): Reply {
    return new Reply(status, JSON.stringify(value))
  }
}

/** One request, as handlers see it. */
export class Exchange {
  readonly method: string
  readonly path: string
  readonly route: string
  readonly params: Record<string, string>
  private readonly search: URLSearchParams
  private readonly bodyText: string | undefined

  constructor(
    private readonly request: IncomingMessage,
    match: { route: string; params: Record<string, string> },
    url: URL,
    body: string | undefined,
  ) {
    this.method = request.method ?? 'GET'
    this.path = url.pathname
    this.route = match.route
    this.params = match.params
    this.search = url.searchParams
    this.bodyText = body
  }

  header(name: string): string | undefined {
    const value = this.request.headers[name]
    return Array.isArray(value) ? value[0] : value
  }

  param(name: string): string {
    return this.params[name] ?? ''
  }

  query(): Record<string, string> {
    return Object.fromEntries(this.search)
  }

  /** The JSON body; throws `SyntaxError` when it is not JSON. */
  json(): unknown {
    return JSON.parse(this.bodyText ?? '')
  }
}

type Handler = (exchange: Exchange) => Reply | Promise<Reply>

interface Route {
  method: string
  route: string
  segments: string[]
  handler: Handler
}

export class Router {
  private readonly routes: Route[] = []

  constructor(
    private readonly options: {
      bodyLimitBytes: number
      onTooLarge: () => Reply
      onNotFound: (method: string, path: string) => Reply
      onError: (error: unknown, method: string, path: string) => Reply
      onDone?: (route: string, status: number, seconds: number) => void
    },
  ) {}

  get(route: string, handler: Handler): void {
    this.add('GET', route, handler)
  }
  post(route: string, handler: Handler): void {
    this.add('POST', route, handler)
  }
  delete(route: string, handler: Handler): void {
    this.add('DELETE', route, handler)
  }

  private add(method: string, route: string, handler: Handler): void {
    this.routes.push({ method, route, segments: route.split('/'), handler })
  }

  private match(
    method: string,
    path: string,
  ): { route: Route; params: Record<string, string> } | undefined {
    const segments = path.split('/')
    for (const route of this.routes) {
      if (route.method !== method || route.segments.length !== segments.length) continue
      const params: Record<string, string> = {}
      let matched = true
      for (let index = 0; index < segments.length && matched; index++) {
        const expected = route.segments[index]!
        const actual = segments[index]!
        if (expected.startsWith(':')) {
          if (actual === '') matched = false
          else params[expected.slice(1)] = decodeURIComponent(actual)
        } else if (expected !== actual) matched = false
      }
      if (matched) return { route, params }
    }
    return undefined
  }

  /** The `node:http` request listener: embed it in any Node HTTP server. */
  readonly listener: RequestListener = (request, response) => {
    const started = performance.now()
    void this.handle(request).then(
      ({ reply, route }) => {
        send(response, reply)
        this.options.onDone?.(route, reply.status, (performance.now() - started) / 1000)
      },
      (error: unknown) =>
        send(response, this.options.onError(error, request.method ?? 'GET', request.url ?? '/')),
    )
  }

  private async handle(request: IncomingMessage): Promise<{ reply: Reply; route: string }> {
    const url = new URL(request.url ?? '/', 'http://registry')
    const method = request.method ?? 'GET'
    const found = this.match(method, url.pathname)
    if (found === undefined) {
      request.resume()
      return { reply: this.options.onNotFound(method, url.pathname), route: 'not-found' }
    }
    let body: string | undefined
    if (method === 'POST') {
      const bytes = await readBodyWithin(request, this.options.bodyLimitBytes)
      if (bytes === undefined) return { reply: this.options.onTooLarge(), route: found.route.route }
      body = bytes.toString('utf8')
    } else request.resume()
    const exchange = new Exchange(
      request,
      { route: found.route.route, params: found.params },
      url,
      body,
    )
    try {
      return { reply: await found.route.handler(exchange), route: found.route.route }
    } catch (error) {
      return { reply: this.options.onError(error, method, url.pathname), route: found.route.route }
    }
  }
}

function send(response: ServerResponse, reply: Reply): void {
  if (response.headersSent) return
  const { body } = reply
  const pieces = typeof body === 'string' || Buffer.isBuffer(body) ? undefined : body
  response.writeHead(reply.status, {
    ...reply.headers,
    'content-length':
      pieces === undefined
        ? Buffer.byteLength(body as string | Buffer)
        : pieces.reduce((total, piece) => total + piece.byteLength, 0),
  })
  if (pieces === undefined) {
    response.end(body)
    return
  }
  // Corked, the pieces leave in one vectored write.
  response.cork()
  for (const piece of pieces) response.write(piece)
  response.uncork()
  response.end()
}
