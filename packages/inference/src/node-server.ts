/**
 * The node's OpenAI-compatible HTTP server: `POST /v1/chat/completions`, `POST /v1/completions`
 * (streaming as server-sent events, or not), `GET /v1/models`, `GET /health` and `GET /metrics`.
 * Embed `fetch` (Hono, web standard) or `listener` (`node:http`) in any server, or `listen()`.
 * A client that goes away cancels its generation at once.
 */
import { once } from 'node:events'
import {
  createServer,
  type IncomingMessage,
  type RequestListener,
  type ServerResponse,
} from 'node:http'
import type { AddressInfo } from 'node:net'
import { getRequestListener } from '@hono/node-server'
import { createLogger, type Logger, readBodyWithin, sendJson } from '@llmesh/core'
import { Hono } from 'hono'
import { bodyLimit } from 'hono/body-limit'
import type { ContentfulStatusCode } from 'hono/utils/http-status'
import type { ModelPool } from './model-pool.js'
import {
  answerGeneration,
  type Endpoint,
  endpointPaths,
  eventStreamHeaders,
  type GenerationEndpoints,
} from './openai-generation.js'
import { openAiError } from './openai-schemas.js'
import { createServerMetrics } from './server-metrics.js'

export interface NodeServerOptions {
  pool: ModelPool
  /** The model names this server answers for (store references or paths); requests for others get 404. */
  models: string[]
  /** Load every model at start; `/health` answers 503 until done. Default true. */
  preload?: boolean
  /** Largest request body; default 1 MiB. */
  bodyLimitBytes?: number
  /** Tokens a chat completion may generate when the request does not say; default 1024. */
  defaultMaxTokens?: number
  logger?: Logger
}

export interface ListeningServer {
  url: string
  close(): Promise<void>
}

export interface NodeServer {
  /** The Hono app: mount it in another Hono app, or call `app.fetch`. */
  app: Hono
  fetch: (request: Request) => Response | Promise<Response>
  /** A `node:http` request listener. */
  listener: RequestListener
  /** Settles when the models named in `models` are loaded (at once when `preload` is false). */
  ready: Promise<void>
  listen(options?: { port?: number; host?: string }): Promise<ListeningServer>
}

export function createNodeServer(options: NodeServerOptions): NodeServer {
  const { pool } = options
  const log = options.logger ?? createLogger('inference:server')
  const metrics = createServerMetrics(pool)
  const created = Math.floor(Date.now() / 1000)
  let starting = options.preload !== false
  const ready = starting
    ? Promise.allSettled(options.models.map((model) => pool.preload(model))).then((outcomes) => {
        starting = false
        for (const [index, outcome] of outcomes.entries())
          if (outcome.status === 'rejected')
            log('%s: could not preload: %s', options.models[index], String(outcome.reason))
      })
    : Promise.resolve()

  const app = new Hono()
  app.use(
    '/v1/*',
    bodyLimit({
      maxSize: options.bodyLimitBytes ?? 1024 * 1024,
      onError: (context) =>
        context.json(
          openAiError(
            `The request body is larger than ${options.bodyLimitBytes ?? 1024 * 1024} bytes.`,
            'invalid_request_error',
          ),
          413,
        ),
    }),
  )

  app.get('/health', (context) => {
    if (starting) return context.json({ status: 'loading' }, 503)
    return context.json({
      status: 'ok',
      models: pool.loaded().map(({ name, slots, inFlight, queued }) => ({
        name,
        slots,
        inFlight,
        queued,
      })),
    })
  })

  app.get('/metrics', async (context) =>
    context.body(await metrics.registry.metrics(), 200, {
      'content-type': metrics.registry.contentType,
    }),
  )

  app.get('/v1/models', (context) =>
    context.json({
      object: 'list',
      data: options.models.map((id) => ({ id, object: 'model', created, owned_by: 'llmesh' })),
    }),
  )

  const endpoints = {
    pool,
    served: new Set(options.models),
    metrics,
    defaultMaxTokens: options.defaultMaxTokens ?? 1024,
  }
  for (const endpoint of ['chat', 'completion'] as const)
    app.post(endpointPaths[endpoint], async (context) => {
      let body: unknown
      try {
        body = await context.req.json()
      } catch {
        return context.json(notJson, 400)
      }
      const answer = await answerGeneration(endpoints, endpoint, body, context.req.raw.signal)
      if (answer.kind === 'json')
        return context.json(answer.body, answer.status as ContentfulStatusCode, answer.headers)
      const frames = answer.frames
      const encoder = new TextEncoder()
      return new Response(
        new ReadableStream<Uint8Array>({
          async pull(controller) {
            const next = await frames.next()
            if (next.done) controller.close()
            else controller.enqueue(encoder.encode(next.value))
          },
          async cancel() {
            await frames.return()
          },
        }),
        { headers: eventStreamHeaders },
      )
    })

  app.notFound((context) =>
    context.json(
      openAiError(
        `There is no ${context.req.method} ${context.req.path} here.`,
        'invalid_request_error',
      ),
      404,
    ),
  )
  app.onError((error, context) => {
    log('unexpected error on %s: %O', context.req.path, error)
    return context.json(openAiError('The server failed to answer.', 'server_error'), 500)
  })

  const fetch = app.fetch
  const honoListener = getRequestListener(fetch) as RequestListener
  const bodyLimitBytes = options.bodyLimitBytes ?? 1024 * 1024
  const fastPaths = new Map<string, Endpoint>([
    [endpointPaths.chat, 'chat'],
    [endpointPaths.completion, 'completion'],
  ])
  // The generation endpoints straight on node:http: no Request, Response or web stream per
  // request, which took about a millisecond off the time to first token. Everything else goes
  // through Hono.
  const listener: RequestListener = (request, response) => {
    const endpoint = request.method === 'POST' ? fastPaths.get(request.url ?? '') : undefined
    if (endpoint === undefined) {
      honoListener(request, response)
      return
    }
    void serveGeneration(endpoints, endpoint, request, response, bodyLimitBytes).catch(
      (error: unknown) => {
        log('unexpected error on %s: %O', request.url, error)
        if (!response.headersSent)
          sendJson(response, 500, openAiError('The server failed to answer.', 'server_error'))
        else response.destroy()
      },
    )
  }
  return {
    app,
    fetch,
    listener,
    ready,
    async listen({ port = 0, host = '127.0.0.1' } = {}) {
      const server = createServer({ keepAliveTimeout: 30_000 }, listener)
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject)
        server.listen(port, host, () => resolve())
      })
      const address = server.address() as AddressInfo
      const shownHost = address.family === 'IPv6' ? `[${address.address}]` : address.address
      return {
        url: `http://${shownHost}:${address.port}`,
        close: () =>
          new Promise<void>((resolve) => {
            server.close(() => resolve())
            server.closeAllConnections()
          }),
      }
    },
  }
}

const notJson = openAiError('The request body is not valid JSON.', 'invalid_request_error')

async function serveGeneration(
  endpoints: GenerationEndpoints,
  endpoint: Endpoint,
  request: IncomingMessage,
  response: ServerResponse,
  bodyLimitBytes: number,
): Promise<void> {
  const bytes = await readBodyWithin(request, bodyLimitBytes)
  if (bytes === undefined)
    return sendJson(
      response,
      413,
      openAiError(
        `The request body is larger than ${bodyLimitBytes} bytes.`,
        'invalid_request_error',
      ),
      { connection: 'close' },
    )
  let body: unknown
  try {
    body = JSON.parse(bytes.toString('utf8'))
  } catch {
    return sendJson(response, 400, notJson)
  }
  const clientGone = new AbortController()
  const onClose = () => {
    if (!response.writableFinished) clientGone.abort()
  }
  response.once('close', onClose)
  const answer = await answerGeneration(endpoints, endpoint, body, clientGone.signal)
  if (answer.kind === 'json') return sendJson(response, answer.status, answer.body, answer.headers)
  response.writeHead(200, eventStreamHeaders)
  try {
    for await (const frame of answer.frames) {
      if (clientGone.signal.aborted) break
      if (!response.write(frame)) await once(response, 'drain', { signal: clientGone.signal })
    }
  } catch (error) {
    if (!clientGone.signal.aborted) throw error
  } finally {
    response.off('close', onClose)
    response.end()
  }
}
