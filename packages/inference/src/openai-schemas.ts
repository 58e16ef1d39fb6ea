/**
 * The OpenAI request bodies the node server accepts, as zod schemas, and the error body it
 * answers with. Fields a client may send that the server does not use (`user`, `logprobs`...)
 * are ignored, as llama-server does, so that existing clients and frameworks work unchanged.
 */
import { z } from 'zod'
import type { ChatMessage, SamplingOptions } from './loaded-model.js'

const textPartSchema = z.object({ type: z.literal('text'), text: z.string() })

const messageSchema = z.object({
  // `developer` is the newer name of `system` in OpenAI's API.
  role: z.enum(['system', 'developer', 'user', 'assistant']),
  content: z.union([
    z.string(),
    z.array(textPartSchema).min(1, { message: 'must hold at least one text part' }),
  ]),
})

const stopSchema = z
  .union([z.string().min(1), z.array(z.string().min(1)).max(4)])
  .nullish()
  .transform((stop) => (stop == null ? [] : typeof stop === 'string' ? [stop] : stop))

const samplingFields = {
  model: z.string().min(1),
  stream: z.boolean().nullish(),
  stream_options: z.object({ include_usage: z.boolean().optional() }).nullish(),
  temperature: z.number().min(0).max(2).nullish(),
  top_p: z.number().gt(0).max(1).nullish(),
  /** llama-server's extensions, which many local clients send. */
  top_k: z.number().int().min(0).nullish(),
  min_p: z.number().min(0).max(1).nullish(),
  seed: z.number().int().nullish(),
  stop: stopSchema,
  n: z.literal(1, { message: 'only 1 choice is supported' }).nullish(),
}

export const chatCompletionRequestSchema = z.object({
  ...samplingFields,
  messages: z.array(messageSchema).min(1, { message: 'must hold at least one message' }),
  max_tokens: z.number().int().min(1).nullish(),
  max_completion_tokens: z.number().int().min(1).nullish(),
})

export const completionRequestSchema = z.object({
  ...samplingFields,
  prompt: z.union([
    z.string(),
    z.array(z.string()).length(1, { message: 'only one prompt per request is supported' }),
  ]),
  max_tokens: z.number().int().min(1).nullish(),
})

export type ChatCompletionRequest = z.output<typeof chatCompletionRequestSchema>
export type CompletionRequest = z.output<typeof completionRequestSchema>

export function chatMessages(request: ChatCompletionRequest): ChatMessage[] {
  return request.messages.map((message) => ({
    role: message.role === 'developer' ? 'system' : message.role,
    content:
      typeof message.content === 'string'
        ? message.content
        : message.content.map((part) => part.text).join(''),
  }))
}

/** OpenAI's defaults: 1 for temperature; completions stop at 16 tokens when not told. */
export function samplingOptions(
  request: ChatCompletionRequest | CompletionRequest,
  defaultMaxTokens: number,
  signal: AbortSignal,
): SamplingOptions {
  const maxTokens =
    ('max_completion_tokens' in request ? request.max_completion_tokens : undefined) ??
    request.max_tokens ??
    defaultMaxTokens
  return {
    maxTokens,
    temperature: request.temperature ?? 1,
    ...(request.top_p == null ? {} : { topP: request.top_p }),
    ...(request.top_k == null ? {} : { topK: request.top_k }),
    ...(request.min_p == null ? {} : { minP: request.min_p }),
    ...(request.seed == null ? {} : { seed: request.seed }),
    stop: request.stop,
    signal,
  }
}

export interface OpenAiErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null }
}

export function openAiError(
  message: string,
  type: string,
  param: string | null = null,
  code: string | null = null,
): OpenAiErrorBody {
  return { error: { message, type, param, code } }
}

/** The first problem of a failed parse, with the field it is about, as OpenAI words it. */
export function invalidRequest(error: z.ZodError): OpenAiErrorBody {
  const issue = error.issues[0]!
  const param = issue.path.length === 0 ? null : issue.path.map(String).join('.')
  const message =
    issue.code === 'invalid_type' && issue.input === undefined
      ? `Missing required parameter: '${param}'.`
      : `Invalid value for '${param ?? 'body'}': ${issue.message}.`
  return openAiError(message, 'invalid_request_error', param)
}
