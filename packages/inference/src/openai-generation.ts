/**
 * The two generation endpoints, independent of any HTTP framework: a parsed JSON body in, an
 * answer out (a JSON reply, or a stream of server-sent-event frames). The node server plays the
 * answer on `node:http` directly (the fast path, for time to first token) or through Hono.
 *
 * The status is decided when the first token exists: a busy model, a missing one or an overlong
 * prompt gets a proper HTTP error that a router can act on, never a 200 followed by an error.
 */
import { randomUUID } from 'node:crypto'
import { AbortedError, LlmeshError } from '@llmesh/core'
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
import type { ServerMetrics } from './server-metrics.js'

export type Endpoint = 'chat' | 'completion'

export const endpointPaths: Record<Endpoint, string> = {
  chat: '/v1/chat/completions',
  completion: '/v1/completions',
}

export type GenerationAnswer =
  | { kind: 'json'; status: number; body: unknown; headers?: Record<string, string> }
  /** Server-sent-event frames; ending the iteration early (`return()`) cancels the generation. */
  | { kind: 'stream'; frames: AsyncGenerator<string, void, undefined> }

export const eventStreamHeaders = {
  'content-type': 'text/event-stream; charset=utf-8',
  'cache-control': 'no-cache',
  'x-accel-buffering': 'no',
}

export interface GenerationEndpoints {
  pool: ModelPool
  served: ReadonlySet<string>
  metrics: ServerMetrics
  defaultMaxTokens: number
}

/** Answers one request; `signal` aborts when the client goes away. Never throws. */
export async function answerGeneration(
  { pool, served, metrics, defaultMaxTokens }: GenerationEndpoints,
  endpoint: Endpoint,
  body: unknown,
  clientGone: AbortSignal,
): Promise<GenerationAnswer> {
  const path = endpointPaths[endpoint]
  const parsed =
    endpoint === 'chat'
      ? chatCompletionRequestSchema.safeParse(body)
      : completionRequestSchema.safeParse(body)
  if (!parsed.success) {
    metrics.requests.inc({ endpoint: path, model: '', status: '400' })
    return { kind: 'json', status: 400, body: invalidRequest(parsed.error) }
  }
  const request = parsed.data
  const model = request.model
  if (!served.has(model)) {
    metrics.requests.inc({ endpoint: path, model: '', status: '404' })
    return {
      kind: 'json',
      status: 404,
      body: openAiError(
        `The model '${model}' is not served here; GET /v1/models lists those that are.`,
        'invalid_request_error',
        'model',
        'model_not_found',
      ),
    }
  }

  const cancel = new AbortController()
  const signal = AbortSignal.any([clientGone, cancel.signal])
  const sampling = samplingOptions(request, endpoint === 'chat' ? defaultMaxTokens : 16, signal)
  const started = performance.now()
  const failed = (error: unknown): GenerationAnswer => {
    const answer = errorAnswer(error, model)
    metrics.requests.inc({ endpoint: path, model, status: String(answer.status) })
    if (AbortedError.isInstance(error)) metrics.cancelled.inc({ model })
    return { kind: 'json', ...answer }
  }
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
    return failed(error)
  }
  metrics.timeToFirstToken.observe({ model }, (performance.now() - started) / 1000)

  const id = `${endpoint === 'chat' ? 'chatcmpl' : 'cmpl'}-${randomUUID()}`
  const object = endpoint === 'chat' ? 'chat.completion.chunk' : 'text_completion'
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
      const choice =
        endpoint === 'chat'
          ? { index: 0, message: { role: 'assistant', content: result.text } }
          : { index: 0, text: result.text }
      return {
        kind: 'json',
        status: 200,
        body: {
          id,
          object: endpoint === 'chat' ? 'chat.completion' : 'text_completion',
          created: now(),
          model,
          choices: [{ ...choice, finish_reason: result.finishReason, logprobs: null }],
          usage: usageBody(result),
        },
      }
    } catch (error) {
      return failed(error)
    }
  }

  const includeUsage = request.stream_options?.include_usage === true
  const created = now()
  const frame = (choices: unknown[], extra?: Record<string, unknown>) =>
    `data: ${JSON.stringify({ id, object, created, model, choices, ...extra })}\n\n`
  const textFrame = (text: string) =>
    frame([
      endpoint === 'chat'
        ? { index: 0, delta: { content: text }, finish_reason: null }
        : { index: 0, text, finish_reason: null },
    ])

  async function* frames(): AsyncGenerator<string, void, undefined> {
    let completed = false
    try {
      let next = first
      let head =
        endpoint === 'chat'
          ? frame([{ index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null }])
          : ''
      while (!next.done) {
        yield head + textFrame(next.value.text)
        head = ''
        next = await iterator.next()
      }
      const result = await generation.result
      record(result)
      let tail = frame([
        endpoint === 'chat'
          ? { index: 0, delta: {}, finish_reason: result.finishReason }
          : { index: 0, text: '', finish_reason: result.finishReason },
      ])
      if (includeUsage) tail += frame([], { usage: usageBody(result) })
      completed = true
      yield `${head}${tail}data: [DONE]\n\n`
    } catch (error) {
      if (AbortedError.isInstance(error)) {
        metrics.cancelled.inc({ model })
        metrics.requests.inc({ endpoint: path, model, status: '499' })
        return
      }
      // The headers are sent: the error becomes an event, and the stream ends without [DONE].
      const answer = errorAnswer(error, model)
      metrics.requests.inc({ endpoint: path, model, status: String(answer.status) })
      yield `data: ${JSON.stringify(answer.body)}\n\n`
    } finally {
      // Stopped early by the consumer (the client went away): free the slot now.
      if (!completed) cancel.abort(new AbortedError({ message: 'The client closed the stream.' }))
      await generation.result.catch(() => {})
    }
  }
  return { kind: 'stream', frames: frames() }
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
function errorAnswer(
  error: unknown,
  model: string,
): { status: number; body: OpenAiErrorBody; headers?: Record<string, string> } {
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
  // Nobody reads it (the client is gone), but the metrics count it as nginx does.
  if (AbortedError.isInstance(error))
    return { status: 499, body: openAiError(error.message, 'cancelled') }
  const code = LlmeshError.isInstance(error) ? error.code : null
  return {
    status: 500,
    body: openAiError(`Generation with ${model} failed.`, 'server_error', null, code),
  }
}
