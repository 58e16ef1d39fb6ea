/**
 * A llama-server-compatible mock inference node, for testing routers and gateways without a
 * model: `POST /v1/chat/completions` and `POST /v1/completions` (streaming or not), `GET /health`,
 * `GET /v1/models` and `GET /slots`. It has slots and a queue like llama-server (a full queue
 * answers 503), a time to first token that grows with the prompt, deterministic tokens, and
 * faults switched at run time: slow down, a share of 5xx answers, a reset or a stall after k
 * tokens, a hang before the headers, refused connections.
 */
import { createHash } from 'node:crypto'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'

export interface MockNodeFaults {
  /** Every delay is multiplied by this (1 = healthy). */
  slowdown?: number
  /** Share of requests answered 500 before any token, spread evenly (0.25 = every fourth). */
  errorRate?: number
  /** Destroy the connection after this many tokens of a streaming answer. */
  resetAfterTokens?: number
  /** Stop sending (but keep the connection open) after this many tokens. */
  stallAfterTokens?: number
  /** Accept requests and never answer them. */
  hangBeforeHeaders?: boolean
}

export interface MockNodeOptions {
  /** Model ids it serves; default `['mock-model']`. */
  models?: string[]
  /** Requests generating at once; default 4. */
  slots?: number
  /** Requests that may wait for a slot; one more is answered 503. Default 16. */
  maxQueue?: number
  /** Time to first token: this base plus `perPromptTokenMs` per prompt word. Defaults 5 and 0.05. */
  firstTokenMs?: number
  perPromptTokenMs?: number
  /** Between tokens; default 2 ms. */
  tokenIntervalMs?: number
  /** Tokens when the request gives no `max_tokens`; default 16. */
  defaultMaxTokens?: number
  /** A name that shows in answers (`system_fingerprint`) and in `/health`. */
  name?: string
  port?: number
}

export interface MockNodeRecord {
  path: string
  model: string | undefined
  stream: boolean
  status: number
  tokensSent: number
}

export interface MockNode {
  url: string
  port: number
  name: string
  /** Requests it answered (or began to), in order. */
  readonly requests: MockNodeRecord[]
  readonly inFlight: number
  setFaults(faults: MockNodeFaults): void
  clearFaults(): void
  /** Stops listening and drops every connection: callers get connection refused, until `start()`. */
  stop(): Promise<void>
  /** Listens again on the same port. */
  start(): Promise<void>
  close(): Promise<void>
  [Symbol.asyncDispose](): Promise<void>
}

/** The text of token `index` of the answer to `prompt`: the same on every node and every run. */
export function mockToken(prompt: string, index: number): string {
  const digest = createHash('sha256').update(`${prompt}\u0000${index}`).digest()
  return `${mockWords[digest[0]! % mockWords.length]} `
}

const mockWords = [
  'mesh',
  'node',
  'token',
  'model',
  'route',
  'llama',
  'peer',
  'byte',
  'gguf',
  'fast',
]

export async function startMockNode(options: MockNodeOptions = {}): Promise<MockNode> {
  const models = options.models ?? ['mock-model']
  const slots = options.slots ?? 4
  const maxQueue = options.maxQueue ?? 16
  const name = options.name ?? 'mock-node'
  let faults: MockNodeFaults = {}
  let running = 0
  let errorCredit = 0
  const waiting: Array<() => void> = []
  const requests: MockNodeRecord[] = []
  const sockets = new Set<Socket>()

  const delay = (milliseconds: number, signal: AbortSignal) =>
    new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, milliseconds * (faults.slowdown ?? 1))
      signal.addEventListener('abort', () => {
        clearTimeout(timer)
        resolve()
      })
    })

  const json = (response: ServerResponse, status: number, body: unknown) => {
    const text = JSON.stringify(body)
    response.writeHead(status, {
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(text),
    })
    response.end(text)
  }

  async function generate(request: IncomingMessage, response: ServerResponse, path: string) {
    const chunks: Buffer[] = []
    for await (const chunk of request) chunks.push(chunk as Buffer)
    let body: {
      model?: string
      stream?: boolean
      max_tokens?: number
      messages?: Array<{ content?: string }>
      prompt?: string
    }
    try {
      body = JSON.parse(Buffer.concat(chunks).toString('utf8'))
    } catch {
      return json(response, 400, { error: { message: 'not JSON', type: 'invalid_request_error' } })
    }
    const record: MockNodeRecord = {
      path,
      model: body.model,
      stream: body.stream === true,
      status: 200,
      tokensSent: 0,
    }
    requests.push(record)
    if (faults.hangBeforeHeaders) return
    if (body.model === undefined || !models.includes(body.model)) {
      record.status = 404
      return json(response, 404, {
        error: {
          message: `no model ${body.model}`,
          type: 'invalid_request_error',
          code: 'model_not_found',
        },
      })
    }
    errorCredit += faults.errorRate ?? 0
    if (errorCredit >= 1) {
      errorCredit -= 1
      record.status = 500
      return json(response, 500, { error: { message: 'injected failure', type: 'server_error' } })
    }
    if (running >= slots && waiting.length >= maxQueue) {
      record.status = 503
      response.setHeader('retry-after', '1')
      return json(response, 503, {
        error: {
          message: 'all slots are busy',
          type: 'server_error',
          code: 'LLMESH_INFERENCE_BUSY',
        },
      })
    }
    const gone = new AbortController()
    response.once('close', () => gone.abort())
    if (running >= slots) await new Promise<void>((resolve) => waiting.push(resolve))
    running++
    try {
      const prompt =
        body.prompt ?? (body.messages ?? []).map((message) => message.content ?? '').join('\n')
      const promptTokens = prompt.split(/\s+/).filter(Boolean).length
      const maxTokens = body.max_tokens ?? options.defaultMaxTokens ?? 16
      const chat = path === '/v1/chat/completions'
      const id = `mock-${requests.length}`
      const created = Math.floor(Date.now() / 1000)
      const envelope = { id, created, model: body.model, system_fingerprint: name }
      await delay(
        (options.firstTokenMs ?? 5) + promptTokens * (options.perPromptTokenMs ?? 0.05),
        gone.signal,
      )
      const usage = {
        prompt_tokens: promptTokens,
        completion_tokens: maxTokens,
        total_tokens: promptTokens + maxTokens,
      }
      if (!record.stream) {
        let text = ''
        for (let index = 0; index < maxTokens && !gone.signal.aborted; index++) {
          if (index > 0) await delay(options.tokenIntervalMs ?? 2, gone.signal)
          text += mockToken(prompt, index)
        }
        record.tokensSent = maxTokens
        return json(response, 200, {
          ...envelope,
          object: chat ? 'chat.completion' : 'text_completion',
          choices: [
            chat
              ? { index: 0, message: { role: 'assistant', content: text }, finish_reason: 'length' }
              : { index: 0, text, finish_reason: 'length' },
          ],
          usage,
        })
      }
      response.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' })
      const object = chat ? 'chat.completion.chunk' : 'text_completion'
      const frame = (choice: Record<string, unknown>, extra: Record<string, unknown> = {}) =>
        `data: ${JSON.stringify({ ...envelope, object, choices: [{ index: 0, ...choice }], ...extra })}\n\n`
      for (let index = 0; index < maxTokens; index++) {
        if (gone.signal.aborted) return
        if (index > 0) await delay(options.tokenIntervalMs ?? 2, gone.signal)
        if (faults.resetAfterTokens !== undefined && index >= faults.resetAfterTokens) {
          response.socket?.destroy()
          return
        }
        if (faults.stallAfterTokens !== undefined && index >= faults.stallAfterTokens) return
        const text = mockToken(prompt, index)
        response.write(
          frame(
            chat
              ? {
                  delta: index === 0 ? { role: 'assistant', content: text } : { content: text },
                  finish_reason: null,
                }
              : { text, finish_reason: null },
          ),
        )
        record.tokensSent = index + 1
      }
      response.end(
        `${frame(chat ? { delta: {}, finish_reason: 'length' } : { text: '', finish_reason: 'length' }, { usage })}data: [DONE]\n\n`,
      )
    } finally {
      running--
      waiting.shift()?.()
    }
  }

  const server: Server = createServer((request, response) => {
    const path = (request.url ?? '/').split('?')[0]!
    if (request.method === 'GET' && path === '/health') {
      request.resume()
      if (faults.hangBeforeHeaders) return
      return json(response, 200, { status: 'ok', name })
    }
    if (request.method === 'GET' && path === '/v1/models') {
      request.resume()
      return json(response, 200, {
        object: 'list',
        data: models.map((id) => ({ id, object: 'model', created: 0, owned_by: name })),
      })
    }
    if (request.method === 'GET' && path === '/slots') {
      request.resume()
      return json(
        response,
        200,
        Array.from({ length: slots }, (_, id) => ({ id, is_processing: id < running })),
      )
    }
    if (
      request.method === 'POST' &&
      (path === '/v1/chat/completions' || path === '/v1/completions')
    ) {
      generate(request, response, path).catch(() => response.destroy())
      return
    }
    request.resume()
    json(response, 404, { error: { message: `no ${path}`, type: 'invalid_request_error' } })
  })
  server.on('connection', (socket) => {
    sockets.add(socket)
    socket.once('close', () => sockets.delete(socket))
  })

  const listen = (port: number) =>
    new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(port, '127.0.0.1', () => {
        server.off('error', reject)
        resolve()
      })
    })
  const stop = () =>
    new Promise<void>((resolve) => {
      if (!server.listening) return resolve()
      server.close(() => resolve())
      for (const socket of sockets) socket.destroy()
    })

  await listen(options.port ?? 0)
  const port = (server.address() as AddressInfo).port
  const close = async () => {
    await stop()
    for (const release of waiting.splice(0)) release()
  }
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    name,
    requests,
    get inFlight() {
      return running
    },
    setFaults(next) {
      faults = { ...next }
      errorCredit = 0
    },
    clearFaults() {
      faults = {}
      errorCredit = 0
    },
    stop,
    start: () => (server.listening ? Promise.resolve() : listen(port)),
    close,
    [Symbol.asyncDispose]: close,
  }
}
