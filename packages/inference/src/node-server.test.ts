import { once } from 'node:events'
import { join } from 'node:path'
import { createTempDir, type TempDir, writeTinyGguf } from '@llmesh/testkit'
import OpenAI, { type APIError } from 'openai'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createInferenceEngine, type InferenceEngine } from './engine.js'
import { validateGguf } from './gguf-validation.js'
import type { GenerationEndEvent } from './loaded-model.js'
import { createModelPool, type ModelPool } from './model-pool.js'
import { createNodeServer, type ListeningServer, type NodeServer } from './node-server.js'

let directory: TempDir
let engine: InferenceEngine
let pool: ModelPool
let server: NodeServer
let listening: ListeningServer
let client: OpenAI
let modelA: string
let modelB: string

beforeAll(async () => {
  directory = await createTempDir()
  engine = await createInferenceEngine({ backend: 'cpu', threads: 1 })
  modelA = (await writeTinyGguf(join(directory.path, 'a.gguf'), { seed: 11 })).path
  modelB = (await writeTinyGguf(join(directory.path, 'b.gguf'), { seed: 12 })).path
  const estimate = await engine.estimateMemory(await validateGguf(modelA), {
    contextSize: 256,
    slots: 2,
  })
  // Room for one model at a time, so that a request for the other can be made to wait.
  pool = createModelPool({
    engine,
    contextSize: 256,
    slots: 2,
    budget: { ramBytes: Math.floor(estimate.ramBytes * 1.5) },
  })
  server = createNodeServer({
    pool,
    models: [modelA, modelB],
    preload: false,
    bodyLimitBytes: 64 * 1024,
  })
  listening = await server.listen()
  client = new OpenAI({ baseURL: `${listening.url}/v1`, apiKey: 'unused', maxRetries: 0 })
})
afterAll(async () => {
  await listening?.close()
  await pool?.close()
  await engine?.dispose()
  await directory?.remove()
})

describe('node server, through the official openai client', () => {
  it('completes a chat, not streaming, with usage and finish reason', async () => {
    const completion = await client.chat.completions.create({
      model: modelA,
      messages: [{ role: 'user', content: 'hello mesh' }],
      max_tokens: 10,
      temperature: 0,
    })
    expect(completion.object).toBe('chat.completion')
    expect(completion.model).toBe(modelA)
    expect(completion.choices).toHaveLength(1)
    expect(completion.choices[0]!.message.role).toBe('assistant')
    expect(completion.choices[0]!.message.content!.length).toBeGreaterThan(0)
    expect(completion.choices[0]!.finish_reason).toBe('length')
    expect(completion.usage!.completion_tokens).toBe(10)
    expect(completion.usage!.total_tokens).toBe(completion.usage!.prompt_tokens + 10)
  })

  it('streams a chat as server-sent events that add up to the same answer', async () => {
    const request = {
      model: modelA,
      messages: [{ role: 'user' as const, content: 'hello stream' }],
      max_tokens: 12,
      temperature: 0,
    }
    const whole = await client.chat.completions.create(request)
    const stream = await client.chat.completions.create({
      ...request,
      stream: true,
      stream_options: { include_usage: true },
    })
    let text = ''
    let contentChunks = 0
    let finishReason: string | null = null
    let usage: OpenAI.CompletionUsage | undefined | null
    for await (const chunk of stream) {
      expect(chunk.object).toBe('chat.completion.chunk')
      const choice = chunk.choices[0]
      if (choice?.delta.content) {
        text += choice.delta.content
        contentChunks++
      }
      if (choice?.finish_reason) finishReason = choice.finish_reason
      if (chunk.usage) usage = chunk.usage
    }
    expect(contentChunks).toBeGreaterThan(1)
    expect(text).toBe(whole.choices[0]!.message.content)
    expect(finishReason).toBe('length')
    expect(usage).toEqual(whole.usage)
  })

  it('completes text, streaming and not', async () => {
    const completion = await client.completions.create({
      model: modelA,
      prompt: 'the node',
      max_tokens: 8,
      temperature: 0,
    })
    expect(completion.object).toBe('text_completion')
    expect(completion.usage!.completion_tokens).toBe(8)
    const stream = await client.completions.create({
      model: modelA,
      prompt: 'the node',
      max_tokens: 8,
      temperature: 0,
      stream: true,
    })
    let text = ''
    for await (const chunk of stream) text += chunk.choices[0]?.text ?? ''
    expect(text).toBe(completion.choices[0]!.text)
  })

  it('lists the models it serves', async () => {
    const models = []
    for await (const model of client.models.list()) models.push(model)
    expect(models.map((model) => model.id)).toEqual([modelA, modelB])
    expect(models[0]!.object).toBe('model')
  })

  it('answers a bad request with a 400 that names the field', async () => {
    const missing = await client.chat.completions
      .create({ model: modelA } as unknown as OpenAI.ChatCompletionCreateParamsNonStreaming)
      .catch((error: unknown) => error)
    expect(missing).toBeInstanceOf(OpenAI.BadRequestError)
    expect((missing as APIError).param).toBe('messages')
    expect((missing as APIError).message).toContain("'messages'")

    const outOfRange = await client.chat.completions
      .create({ model: modelA, messages: [{ role: 'user', content: 'x' }], temperature: 7 })
      .catch((error: unknown) => error)
    expect(outOfRange).toBeInstanceOf(OpenAI.BadRequestError)
    expect((outOfRange as APIError).param).toBe('temperature')

    const badRole = await client.chat.completions
      .create({
        model: modelA,
        messages: [{ role: 'robot', content: 'x' }],
      } as unknown as OpenAI.ChatCompletionCreateParamsNonStreaming)
      .catch((error: unknown) => error)
    expect((badRole as APIError).param).toBe('messages.0.role')

    const response = await fetch(`${listening.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: '{"model": ',
    })
    expect(response.status).toBe(400)
    expect(
      ((await response.json()) as { error: { type: string; message: string } }).error.type,
    ).toBe('invalid_request_error')
  })

  it('answers 404 for a model it does not serve, and 400 for a prompt past the context', async () => {
    const unknown = await client.chat.completions
      .create({ model: '/etc/passwd', messages: [{ role: 'user', content: 'x' }] })
      .catch((error: unknown) => error)
    expect(unknown).toBeInstanceOf(OpenAI.NotFoundError)
    expect((unknown as APIError).code).toBe('model_not_found')

    const tooLong = await client.completions
      .create({ model: modelA, prompt: 'hello world '.repeat(200), max_tokens: 4 })
      .catch((error: unknown) => error)
    expect(tooLong).toBeInstanceOf(OpenAI.BadRequestError)
    expect((tooLong as APIError).code).toBe('context_length_exceeded')
  })

  it('refuses a body over the limit with 413 and keeps serving', async () => {
    const response = await fetch(`${listening.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        model: modelA,
        messages: [{ role: 'user', content: 'x'.repeat(100 * 1024) }],
      }),
    })
    expect(response.status).toBe(413)
    expect(
      ((await response.json()) as { error: { type: string; message: string } }).error.message,
    ).toContain('65536 bytes')
    const after = await client.completions.create({ model: modelA, prompt: 'a', max_tokens: 2 })
    expect(after.usage!.completion_tokens).toBe(2)
  })

  it('answers 503 busy, before any byte of an answer, when the model cannot be fitted now', async () => {
    const lease = await pool.acquire(modelA)
    try {
      const busy = await client.chat.completions
        .create({ model: modelB, messages: [{ role: 'user', content: 'x' }], stream: true })
        .catch((error: unknown) => error)
      expect(busy).toBeInstanceOf(OpenAI.InternalServerError)
      expect((busy as APIError).status).toBe(503)
      expect((busy as APIError).code).toBe('LLMESH_INFERENCE_BUSY')
      expect((busy as APIError).headers?.get('retry-after')).toBe('1')
    } finally {
      lease.release()
    }
    const served = await client.chat.completions.create({
      model: modelB,
      messages: [{ role: 'user', content: 'x' }],
      max_tokens: 2,
    })
    expect(served.usage!.completion_tokens).toBe(2)
  })

  it('cancels the generation when the client disconnects mid-stream', async () => {
    const lease = await pool.acquire(modelA)
    const ended = once(lease.model.events, 'generation-end') as Promise<[GenerationEndEvent]>
    lease.release()
    const controller = new AbortController()
    const response = await fetch(`${listening.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        model: modelA,
        messages: [{ role: 'user', content: 'go on' }],
        max_tokens: 220,
        stream: true,
      }),
      signal: controller.signal,
    })
    expect(response.status).toBe(200)
    const reader = response.body!.getReader()
    await reader.read()
    controller.abort()
    const [event] = await ended
    expect(event.outcome).toBe('aborted')
    expect(event.completionTokens).toBeLessThan(220)
    const metrics = await (await fetch(`${listening.url}/metrics`)).text()
    expect(metrics).toMatch(/llmesh_inference_cancelled_total\{model="[^"]+a\.gguf"\} 1/)
  })

  it('reports health, and Prometheus metrics of requests, tokens and loaded models', async () => {
    const health = await fetch(`${listening.url}/health`)
    expect(health.status).toBe(200)
    expect(((await health.json()) as { status: string }).status).toBe('ok')
    const metrics = await (await fetch(`${listening.url}/metrics`)).text()
    expect(metrics).toMatch(
      /llmesh_inference_requests_total\{endpoint="\/v1\/chat\/completions",model="[^"]+a\.gguf",status="200"\} [1-9]/,
    )
    expect(metrics).toMatch(/llmesh_inference_tokens_generated_total\{model="[^"]+a\.gguf"\} [1-9]/)
    expect(metrics).toMatch(/llmesh_inference_loaded_models 1/)
    expect(metrics).toMatch(/llmesh_inference_queue_depth\{model="[^"]+"\} 0/)
    expect(metrics).toMatch(/llmesh_inference_model_load_seconds_count\{model="[^"]+"\} [1-9]/)
    expect(metrics).toMatch(/llmesh_inference_time_to_first_token_seconds_count/)
    expect(metrics).toMatch(/llmesh_inference_tokens_per_second_count/)
  })

  it('answers the same through its web-standard fetch handler, for embedding in other servers', async () => {
    const body = {
      model: modelA,
      messages: [{ role: 'user', content: 'hello fetch' }],
      max_tokens: 6,
      temperature: 0,
    }
    const viaNode = await client.chat.completions.create({
      ...body,
      messages: [{ role: 'user', content: 'hello fetch' }],
    })
    const response = await server.fetch(
      new Request('http://node/v1/chat/completions', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ ...body, stream: true }),
      }),
    )
    expect(response.headers.get('content-type')).toContain('text/event-stream')
    const events = (await response.text()).split('\n\n').filter(Boolean)
    expect(events.at(-1)).toBe('data: [DONE]')
    const text = events
      .slice(0, -1)
      .map((event) => JSON.parse(event.slice('data: '.length)))
      .map((chunk) => chunk.choices[0]?.delta?.content ?? '')
      .join('')
    expect(text).toBe(viaNode.choices[0]!.message.content)

    const invalid = await server.fetch(
      new Request('http://node/v1/completions', { method: 'POST', body: '{}' }),
    )
    expect(invalid.status).toBe(400)
  })

  it('answers /health with 503 while its models load, like llama-server', async () => {
    const starting = createNodeServer({ pool, models: [modelA] })
    const during = await starting.fetch(new Request('http://node/health'))
    expect(during.status).toBe(503)
    expect(await during.json()).toEqual({ status: 'loading' })
    await starting.ready
    expect((await starting.fetch(new Request('http://node/health'))).status).toBe(200)
  })
})
