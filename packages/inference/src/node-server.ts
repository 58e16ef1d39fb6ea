/**
 * The node's OpenAI-compatible HTTP server, on Hono: `POST /v1/chat/completions`,
 * `POST /v1/completions` (streaming as server-sent events, or not), `GET /v1/models`,
 * `GET /health` and `GET /metrics`. Embed `fetch` or `listener` in any server, or `listen()`.
 *
 * An answer's status is decided when its first token exists: a busy model, a missing one or an
 * overlong prompt gets a proper HTTP error that a router can act on (try another node), never a
 * 200 followed by an error. A client that goes away cancels its generation at once.
 */
import { randomUUID } from 'node:crypto'
import { createServer, type RequestListener } from 'node:http'
import type { AddressInfo } from 'node:net'
import { getRequestListener } from '@hono/node-server'
import { AbortedError, anySignal, createLogger, LlmeshError, type Logger } from '@llmesh/core'
import { type Context, Hono } from 'hono'
import { bodyLimit } from 'hono/body-limit'
import type { ContentfulStatusCode } from 'hono/utils/http-status'
import { InferenceError } from './errors.js'
import type { Generation, GenerationChunk, GenerationResult } from './generation.js'
import type { ModelPool } from './model-pool.js'
import {
  chatCompletionRequestSchema,
  chatMessages,
  completionRequestSchema,
  invalidRequest,
  type OpenAiErrorBody,
  openAiError,
  samplingOptions,
} from './openai-schemas.js'
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

type Endpoint = 'chat' | 'completion'

export function createNodeServer(options: NodeServerOptions): NodeServer {
  const { pool } = options
  const log = options.logger ?? createLogger('inference:server')
  const served = new Set(options.models)
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

  app.post('/v1/chat/completions', (context) => generate(context, 'chat'))
  app.post('/v1/completions', (context) => generate(context, 'completion'))

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

  async function generate(context: Context, endpoint: Endpoint): Promise<Response> {
    const path = endpoint === 'chat' ? '/v1/chat/completions' : '/v1/completions'
    let body: unknown
    try {
      body = await context.req.json()
    } catch {
      return context.json(
        openAiError('The request body is not valid JSON.', 'invalid_request_error'),
        400,
      )
    }
    const parsed =
      endpoint === 'chat'
        ? chatCompletionRequestSchema.safeParse(body)
        : completionRequestSchema.safeParse(body)
    if (!parsed.success) {
      metrics.requests.inc({ endpoint: path, model: '', status: '400' })
      return context.json(invalidRequest(parsed.error), 400)
    }
    const request = parsed.data
    const model = request.model
    if (!served.has(model)) {
      metrics.requests.inc({ endpoint: path, model: '', status: '404' })
      return context.json(
        openAiError(
          `The model '${model}' is not served here; GET /v1/models lists those that are.`,
          'invalid_request_error',
          'model',
          'model_not_found',
        ),
        404,
      )
    }

    // The client going away (the request's signal) or the stream being cancelled stops generation.
    const cancel = new AbortController()
    const signal = anySignal(context.req.raw.signal, cancel.signal)
    const sampling = samplingOptions(
      request,
      endpoint === 'chat' ? (options.defaultMaxTokens ?? 1024) : 16,
      signal,
    )
    const started = performance.now()
    let generation: Generation
    let iterator: AsyncIterator<GenerationChunk>
    let first: IteratorResult<GenerationChunk>
    try {
      generation =
        'messages' in request
          ? await pool.chat(model, chatMessages(request), sampling)
          : await pool.complete(
              model,
              typeof request.prompt === 'string' ? request.prompt : request.prompt[0]!,
              sampling,
            )
      iterator = generation[Symbol.asyncIterator]()
      first = await iterator.next()
    } catch (error) {
      const { status, body: errorBody, headers } = errorResponse(error, model)
      metrics.requests.inc({ endpoint: path, model, status: String(status) })
      if (AbortedError.isInstance(error)) metrics.cancelled.inc({ model })
      return context.json(errorBody, status, headers)
    }
    metrics.timeToFirstToken.observe({ model }, (performance.now() - started) / 1000)

    const id = `${endpoint === 'chat' ? 'chatcmpl' : 'cmpl'}-${randomUUID()}`
    const record = (result: GenerationResult) => {
      metrics.requests.inc({ endpoint: path, model, status: '200' })
      metrics.completionTokens.inc({ model }, result.usage.completionTokens)
      metrics.promptTokens.inc({ model }, result.usage.promptTokens)
      if (result.timings.tokensPerSecond > 0)
        metrics.tokensPerSecond.observe({ model }, result.timings.tokensPerSecond)
    }

    if (request.stream !== true) {
      try {
        let next = first
        while (!next.done) next = await iterator.next()
        const result = await generation.result
        record(result)
        return context.json(
          endpoint === 'chat'
            ? {
                id,
                object: 'chat.completion',
                created: now(),
                model,
                choices: [
                  {
                    index: 0,
                    message: { role: 'assistant', content: result.text },
                    finish_reason: result.finishReason,
                    logprobs: null,
                  },
                ],
                usage: usageBody(result),
              }
            : {
                id,
                object: 'text_completion',
                created: now(),
                model,
                choices: [
                  {
                    index: 0,
                    text: result.text,
                    finish_reason: result.finishReason,
                    logprobs: null,
                  },
                ],
                usage: usageBody(result),
              },
        )
      } catch (error) {
        const { status, body: errorBody, headers } = errorResponse(error, model)
        metrics.requests.inc({ endpoint: path, model, status: String(status) })
        if (AbortedError.isInstance(error)) metrics.cancelled.inc({ model })
        return context.json(errorBody, status, headers)
      }
    }

    const includeUsage = request.stream_options?.include_usage === true
    const createdAt = now()
    const chunk = (choice: Record<string, unknown>, extra: Record<string, unknown> = {}) =>
      `data: ${JSON.stringify({
        id,
        object: endpoint === 'chat' ? 'chat.completion.chunk' : 'text_completion',
        created: createdAt,
        model,
        choices: choice === undefined ? [] : [{ index: 0, ...choice }],
        ...extra,
      })}\n\n`
    const textChoice = (text: string) =>
      endpoint === 'chat'
        ? { delta: { content: text }, finish_reason: null }
        : { text, finish_reason: null }
    const encoder = new TextEncoder()
    let pending: IteratorResult<GenerationChunk> | undefined = first
    const stream = new ReadableStream<Uint8Array>({
      start(controller) {
        if (endpoint === 'chat')
          controller.enqueue(
            encoder.encode(
              chunk({ delta: { role: 'assistant', content: '' }, finish_reason: null }),
            ),
          )
      },
      async pull(controller) {
        try {
          const next = pending ?? (await iterator.next())
          pending = undefined
          if (!next.done) {
            controller.enqueue(encoder.encode(chunk(textChoice(next.value.text))))
            return
          }
          const result = await generation.result
          record(result)
          let tail = chunk(
            endpoint === 'chat'
              ? { delta: {}, finish_reason: result.finishReason }
              : { text: '', finish_reason: result.finishReason },
          )
          if (includeUsage)
            tail += `data: ${JSON.stringify({
              id,
              object: endpoint === 'chat' ? 'chat.completion.chunk' : 'text_completion',
              created: createdAt,
              model,
              choices: [],
              usage: usageBody(result),
            })}\n\n`
          controller.enqueue(encoder.encode(`${tail}data: [DONE]\n\n`))
          controller.close()
        } catch (error) {
          if (AbortedError.isInstance(error)) {
            metrics.cancelled.inc({ model })
            metrics.requests.inc({ endpoint: path, model, status: '499' })
          } else {
            // Headers are sent: the error becomes an event, and the stream ends without [DONE].
            const { status, body: errorBody } = errorResponse(error, model)
            metrics.requests.inc({ endpoint: path, model, status: String(status) })
            controller.enqueue(encoder.encode(`data: ${JSON.stringify(errorBody)}\n\n`))
          }
          controller.close()
        }
      },
      cancel() {
        cancel.abort(new AbortedError({ message: 'The client closed the stream.' }))
      },
    })
    return new Response(stream, {
      headers: {
        'content-type': 'text/event-stream; charset=utf-8',
        'cache-control': 'no-cache',
        'x-accel-buffering': 'no',
      },
    })
  }

  const fetch = app.fetch
  const listener = getRequestListener(fetch) as RequestListener
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

function now(): number {
  return Math.floor(Date.now() / 1000)
}

function usageBody(result: GenerationResult) {
  return {
    prompt_tokens: result.usage.promptTokens,
    completion_tokens: result.usage.completionTokens,
    total_tokens: result.usage.totalTokens,
  }
}

/** An error before the first byte, as the HTTP answer an OpenAI client (and a router) understands. */
function errorResponse(
  error: unknown,
  model: string,
): { status: ContentfulStatusCode; body: OpenAiErrorBody; headers?: Record<string, string> } {
  if (InferenceError.isInstance(error)) {
    switch (error.code) {
      case 'LLMESH_INFERENCE_BUSY':
      case 'LLMESH_INFERENCE_CLOSED':
        return {
          status: 503,
          body: openAiError(error.message, 'server_error', null, error.code),
          headers: { 'retry-after': '1' },
        }
      case 'LLMESH_CONTEXT_OVERFLOW':
        return {
          status: 400,
          body: openAiError(
            error.message,
            'invalid_request_error',
            'messages',
            'context_length_exceeded',
          ),
        }
      case 'LLMESH_MODEL_NOT_FOUND':
      case 'LLMESH_MODEL_UNAVAILABLE':
        return {
          status: 404,
          body: openAiError(error.message, 'invalid_request_error', 'model', 'model_not_found'),
        }
      case 'LLMESH_MODEL_TOO_LARGE':
        return { status: 503, body: openAiError(error.message, 'server_error', null, error.code) }
      default:
        return { status: 500, body: openAiError(error.message, 'server_error', null, error.code) }
    }
  }
  if (AbortedError.isInstance(error))
    return { status: 499 as ContentfulStatusCode, body: openAiError(error.message, 'cancelled') }
  const code = LlmeshError.isInstance(error) ? error.code : null
  return {
    status: 500,
    body: openAiError(`Generation with ${model} failed.`, 'server_error', null, code),
  }
}
