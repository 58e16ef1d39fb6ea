/**
 * The OpenAI-compatible gateway: picks a node for each request, forwards it, streams the answer
 * back byte for byte, and fails over.
 *
 * - Before the first byte reaches the client, a connection error, a 5xx, a busy or loading
 *   node, a node without the model, or no first byte within `firstTokenTimeoutMs` sends the
 *   request to another node at once, while the retry budget allows.
 * - After bytes were sent, a broken or idle (`idleTimeoutMs`) stream ends with an SSE error event
 *   that says the answer is incomplete, never with a silent truncation or a hang.
 * - A client that goes away aborts the upstream request, which cancels the generation.
 * - Server-sent events pass through as the node wrote them; the router only watches them for the
 *   usage counts.
 */
import {
  createServer,
  type IncomingMessage,
  type RequestListener,
  type ServerResponse,
} from 'node:http'
import type { AddressInfo } from 'node:net'
import { createLogger, type Logger, readBodyWithin, sendJson } from '@llmesh/core'
import { Agent } from 'undici'
import { Balancer, type BalancerOptions, type Choice } from './balancer.js'
import { createGatewayMetrics, type GatewayMetrics } from './metrics.js'
import {
  type ModelPolicy,
  type ModelPolicyInput,
  modelPolicySchema,
  resolveModel,
} from './model-policy.js'
import type { NodeHealthView } from './node-health.js'
import type { NodeSource, RouterNode } from './node-source.js'
import { RetryBudget, type RetryBudgetOptions } from './retry-budget.js'

export interface GatewayOptions {
  nodes: NodeSource
  policy?: ModelPolicyInput
  balancer?: BalancerOptions
  retryBudget?: RetryBudgetOptions
  /** No first byte from a node within this long: try another. Default 30 s. */
  firstTokenTimeoutMs?: number
  /** No byte between two within this long, mid-stream: end the stream with an error. Default 30 s. */
  idleTimeoutMs?: number
  /** Attempts per request, the first included; default 3. */
  maxAttempts?: number
  /** Largest request body; default 1 MiB. */
  bodyLimitBytes?: number
  /** How often ejected nodes are probed when their time is up; default 500 ms. */
  probeIntervalMs?: number
  logger?: Logger
}

export interface NodeUsage {
  node: string
  model: string
  requests: number
  promptTokens: number
  completionTokens: number
  latencySecondsTotal: number
  cost: number
}

export interface RouterState {
  nodes: Array<{ id: string; url: string } & NodeHealthView>
  retryBudget: { requests: number; retries: number; allowed: number }
  usage: NodeUsage[]
}

export interface Gateway {
  /** The `node:http` request listener: embed it in any Node HTTP server. */
  listener: RequestListener
  balancer: Balancer
  state(): RouterState
  listen(options?: {
    port?: number
    host?: string
  }): Promise<{ url: string; close(): Promise<void> }>
  close(): Promise<void>
}

/** Why an attempt failed before the first byte; `node` failures count towards ejection, `load` ones do not. */
type Failure = { reason: string; blame: 'node' | 'load' }

const generationPaths = new Set(['/v1/chat/completions', '/v1/completions'])
const passedHeaders = ['content-type', 'cache-control', 'retry-after']

export function createGateway(options: GatewayOptions): Gateway {
  const log = options.logger ?? createLogger('router')
  const policy: ModelPolicy = modelPolicySchema.parse(options.policy ?? {})
  const balancer = new Balancer(options.balancer)
  const budget = new RetryBudget(options.retryBudget)
  const metrics: GatewayMetrics = createGatewayMetrics(() => state())
  const firstTokenTimeoutMs = options.firstTokenTimeoutMs ?? 30_000
  const idleTimeoutMs = options.idleTimeoutMs ?? 30_000
  const maxAttempts = options.maxAttempts ?? 3
  const bodyLimitBytes = options.bodyLimitBytes ?? 1024 * 1024
  const agent = new Agent({ keepAliveTimeout: 30_000, connections: 256 })
  const usage = new Map<string, NodeUsage>()
  const urls = new Map<string, string>()

  const probeTimer = setInterval(() => void probeEjected(), options.probeIntervalMs ?? 500)
  probeTimer.unref()

  async function probeEjected(): Promise<void> {
    const now = balancer.now()
    for (const node of options.nodes.nodes()) {
      const health = balancer.health(node.id)
      if (!health.probeDue(now)) continue
      health.probing = true
      try {
        const response = await agent.request({
          origin: node.url,
          path: '/health',
          method: 'GET',
          headersTimeout: 1_000,
          bodyTimeout: 1_000,
        })
        await response.body.dump()
        if (response.statusCode === 200) {
          health.restored()
          log('%s: probe answered, back in rotation', node.id)
        } else health.eject(`probe answered ${response.statusCode}`, balancer.now())
      } catch (error) {
        health.eject(`probe failed: ${describe(error)}`, balancer.now())
      }
    }
  }

  function state(): RouterState {
    const now = balancer.now()
    const nodes = []
    for (const node of options.nodes.nodes()) urls.set(node.id, node.url)
    for (const [id, health] of balancer.entries())
      nodes.push({ id, url: urls.get(id) ?? '', ...health.view(now) })
    return { nodes, retryBudget: budget.view(), usage: [...usage.values()] }
  }

  const listener: RequestListener = (request, response) => {
    const path = (request.url ?? '/').split('?')[0]!
    if (request.method === 'POST' && generationPaths.has(path)) {
      void proxy(request, response, path).catch((error: unknown) => {
        log('unexpected error: %O', error)
        if (!response.headersSent) sendError(response, 500, 'The gateway failed.', 'server_error')
        else response.destroy()
      })
      return
    }
    request.resume()
    if (request.method === 'GET' && path === '/v1/models') {
      const models = new Set<string>()
      for (const node of options.nodes.nodes())
        for (const model of node.models) models.add(model.id)
      for (const alias of Object.keys(policy.aliases)) models.add(alias)
      return sendJson(response, 200, {
        object: 'list',
        data: [...models].map((id) => ({ id, object: 'model', created: 0, owned_by: 'llmesh' })),
      })
    }
    if (request.method === 'GET' && path === '/v1/router/state')
      return sendJson(response, 200, state())
    if (request.method === 'GET' && path === '/health')
      return sendJson(response, 200, { status: 'ok' })
    if (request.method === 'GET' && path === '/metrics') {
      void metrics.registry.metrics().then((text) => {
        response.writeHead(200, { 'content-type': metrics.registry.contentType })
        response.end(text)
      })
      return
    }
    sendError(response, 404, `There is no ${request.method} ${path} here.`, 'invalid_request_error')
  }

  async function proxy(request: IncomingMessage, response: ServerResponse, path: string) {
    const body = await readBodyWithin(request, bodyLimitBytes)
    if (body === undefined)
      return sendError(
        response,
        413,
        `The request body is larger than ${bodyLimitBytes} bytes.`,
        'invalid_request_error',
        null,
        null,
        { connection: 'close' },
      )
    let parsed: { model?: unknown; stream?: unknown; max_tokens?: unknown }
    try {
      parsed = JSON.parse(body.toString('utf8'))
    } catch {
      return sendError(
        response,
        400,
        'The request body is not valid JSON.',
        'invalid_request_error',
      )
    }
    if (typeof parsed.model !== 'string' || parsed.model === '')
      return sendError(
        response,
        400,
        "Missing required parameter: 'model'.",
        'invalid_request_error',
        'model',
      )
    const taskHeader = request.headers['x-llmesh-task']
    const task = Array.isArray(taskHeader) ? taskHeader[0] : taskHeader
    const resolved = resolveModel(policy, parsed.model, task)
    if (resolved === undefined)
      return sendError(
        response,
        400,
        `No model for "auto"${task === undefined ? '' : ` and task ${task}`}: configure the policy's tasks or defaultModel.`,
        'invalid_request_error',
        'model',
        'LLMESH_MODEL_UNKNOWN',
      )
    const model = resolved.model
    const maxTokens = typeof parsed.max_tokens === 'number' ? parsed.max_tokens : 0
    // A model asked for by digest is sent to each node under the id that node knows it by.
    const hostedIds = new Map<string, string>()
    // Specialties the request requires (`x-llmesh-require: code,fr`): a hard filter, unlike the
    // task's preferred specialty, which only lowers a node's cost.
    const requireHeader = request.headers['x-llmesh-require']
    const required = (
      Array.isArray(requireHeader) ? requireHeader.join(',') : (requireHeader ?? '')
    )
      .split(',')
      .map((entry) => entry.trim())
      .filter(Boolean)
    const candidates = options.nodes.nodes().filter((node) => {
      const hosted = node.models.find(
        (entry) =>
          (entry.id === model || entry.digest === model) &&
          (entry.contextSize === undefined || maxTokens < entry.contextSize) &&
          required.every((specialty) => entry.specialties?.includes(specialty)),
      )
      if (hosted !== undefined) hostedIds.set(node.id, hosted.id)
      return hosted !== undefined
    })
    const bodies = new Map<string, Buffer>([[parsed.model, body]])
    const bodyFor = (nodeId: string) => {
      const id = hostedIds.get(nodeId) ?? model
      let forNode = bodies.get(id)
      if (forNode === undefined) {
        forNode = Buffer.from(JSON.stringify({ ...parsed, model: id }))
        bodies.set(id, forNode)
      }
      return forNode
    }
    if (candidates.length === 0)
      return sendError(
        response,
        404,
        `No node serves the model '${model}'${required.length === 0 ? '' : ` with the specialties ${required.join(', ')}`}.`,
        'invalid_request_error',
        'model',
        'model_not_found',
      )

    const clientGone = new AbortController()
    const onClose = () => {
      if (!response.writableFinished) clientGone.abort()
    }
    response.once('close', onClose)
    const stream = parsed.stream === true
    const tried = new Set<string>()
    const attempts: Array<{ node: string; reason: string }> = []
    const started = performance.now()
    budget.recordRequest()
    try {
      for (let attempt = 0; attempt < maxAttempts; attempt++) {
        if (attempt > 0 && !budget.tryRetry()) {
          attempts.push({ node: '-', reason: 'the retry budget is spent' })
          break
        }
        if (attempt > 0) metrics.retries.inc()
        const choice = balancer.choose(candidates, {
          excluded: tried,
          ...(resolved.specialty === undefined ? {} : { specialty: resolved.specialty }),
        })
        if (choice === undefined) break
        tried.add(choice.node.id)
        const outcome = await forward(
          choice,
          path,
          bodyFor(choice.node.id),
          stream,
          response,
          clientGone.signal,
          model,
          started,
        )
        if (outcome === undefined) return
        attempts.push({ node: choice.node.id, reason: outcome.reason })
        if (clientGone.signal.aborted) return
      }
      metrics.requests.inc({ model, node: 'none', status: '503' })
      sendError(
        response,
        503,
        `No node could serve the request: ${attempts.map((entry) => `${entry.node}: ${entry.reason}`).join('; ') || 'no node left to try'}.`,
        'server_error',
        null,
        'LLMESH_UPSTREAM_FAILED',
        { 'retry-after': '1' },
      )
    } finally {
      response.off('close', onClose)
    }
  }

  /**
   * One attempt on one node. Undefined when the client got its answer (or went away after bytes
   * were sent); a failure when another node may be tried.
   */
  async function forward(
    { node, health, panic }: Choice,
    path: string,
    body: Buffer,
    stream: boolean,
    response: ServerResponse,
    clientGone: AbortSignal,
    model: string,
    started: number,
  ): Promise<Failure | undefined> {
    const upstream = new AbortController()
    const abortUpstream = () => upstream.abort()
    clientGone.addEventListener('abort', abortUpstream, { once: true })
    let timer = setTimeout(
      () => upstream.abort(new Error('no first byte in time')),
      firstTokenTimeoutMs,
    )
    health.started()
    let committed = false
    const fail = (failure: Failure): Failure => {
      if (failure.blame === 'node' && !clientGone.aborted) {
        if (health.failed(failure.reason, balancer.now())) {
          metrics.ejections.inc({ node: node.id })
          log(
            '%s: ejected after %d failures (%s)',
            node.id,
            health.consecutiveFailures,
            failure.reason,
          )
        }
      }
      return failure
    }
    try {
      let upstreamResponse: Awaited<ReturnType<Agent['request']>>
      try {
        upstreamResponse = await agent.request({
          origin: node.url,
          path,
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body,
          signal: upstream.signal,
          headersTimeout: firstTokenTimeoutMs,
          bodyTimeout: 0,
        })
      } catch (error) {
        return fail({
          reason:
            upstream.signal.aborted && !clientGone.aborted
              ? 'no first byte in time'
              : describe(error),
          blame: 'node',
        })
      }
      const status = upstreamResponse.statusCode
      if (status !== 200) {
        const text = await upstreamResponse.body.text().catch(() => '')
        // Busy or loading is load, not a fault: another node, without counting towards ejection.
        if (status === 503 || status === 429) {
          const code = /"code":\s*"([^"]+)"/.exec(text)?.[1]
          return {
            reason: `busy (${status}${code === undefined ? '' : ` ${code}`})`,
            blame: 'load',
          }
        }
        if (status >= 500) return fail({ reason: `answered ${status}`, blame: 'node' })
        if (status === 404 && text.includes('model_not_found'))
          return { reason: 'does not have the model', blame: 'load' }
        // The request itself is wrong: every node would say the same. Pass the answer on.
        metrics.requests.inc({ model, node: node.id, status: String(status) })
        health.answered(performance.now() - started, balancer.now())
        sendRaw(response, status, upstreamResponse.headers, text, node.id)
        return undefined
      }
      const iterator = upstreamResponse.body[Symbol.asyncIterator]() as AsyncIterator<Buffer>
      if (!stream) {
        const chunks: Buffer[] = []
        try {
          for (let next = await iterator.next(); !next.done; next = await iterator.next())
            chunks.push(next.value)
        } catch (error) {
          return fail({
            reason:
              upstream.signal.aborted && !clientGone.aborted
                ? 'no answer in time'
                : `the answer broke: ${describe(error)}`,
            blame: 'node',
          })
        }
        const text = Buffer.concat(chunks)
        health.answered(performance.now() - started, balancer.now())
        record(node, model, text.toString('utf8'), started)
        metrics.requests.inc({ model, node: node.id, status: '200' })
        sendRaw(response, 200, upstreamResponse.headers, text, node.id, panic)
        return undefined
      }
      let first: IteratorResult<Buffer>
      try {
        first = await iterator.next()
      } catch (error) {
        return fail({
          reason:
            upstream.signal.aborted && !clientGone.aborted
              ? 'no first byte in time'
              : describe(error),
          blame: 'node',
        })
      }
      if (first.done) return fail({ reason: 'closed the stream before any byte', blame: 'node' })
      health.answered(performance.now() - started, balancer.now())
      committed = true
      response.writeHead(200, {
        'content-type': 'text/event-stream; charset=utf-8',
        'cache-control': 'no-cache',
        'x-accel-buffering': 'no',
        'x-llmesh-node': node.id,
        ...(panic ? { 'x-llmesh-panic': '1' } : {}),
      })
      let tail = ''
      const write = async (chunk: Buffer) => {
        tail = (tail + chunk.toString('utf8')).slice(-4096)
        if (!response.write(chunk))
          await new Promise<void>((resolve) => {
            response.once('drain', resolve)
            response.once('close', resolve)
          })
      }
      await write(first.value)
      try {
        while (true) {
          clearTimeout(timer)
          timer = setTimeout(() => upstream.abort(new Error('idle')), idleTimeoutMs)
          const next = await iterator.next()
          if (next.done) break
          if (clientGone.aborted) return undefined
          await write(next.value)
        }
      } catch (error) {
        if (clientGone.aborted) return undefined
        const reason = upstream.signal.aborted ? `no byte for ${idleTimeoutMs} ms` : describe(error)
        fail({ reason: `the stream broke: ${reason}`, blame: 'node' })
        metrics.requests.inc({ model, node: node.id, status: 'broken' })
        response.end(
          `data: ${JSON.stringify({ error: { message: `The node ${node.id} failed mid-stream (${reason}); the answer is incomplete.`, type: 'server_error', param: null, code: 'LLMESH_STREAM_BROKEN' } })}\n\n`,
        )
        return undefined
      }
      if (!tail.includes('data: [DONE]')) {
        fail({ reason: 'ended the stream without [DONE]', blame: 'node' })
        metrics.requests.inc({ model, node: node.id, status: 'broken' })
        response.end(
          `data: ${JSON.stringify({ error: { message: `The node ${node.id} ended the stream early; the answer is incomplete.`, type: 'server_error', param: null, code: 'LLMESH_STREAM_BROKEN' } })}\n\n`,
        )
        return undefined
      }
      record(node, model, tail, started)
      metrics.requests.inc({ model, node: node.id, status: '200' })
      response.end()
      return undefined
    } finally {
      clearTimeout(timer)
      clientGone.removeEventListener('abort', abortUpstream)
      health.finished()
      if (!committed) upstream.abort()
    }
  }

  function record(node: RouterNode, model: string, text: string, started: number): void {
    const key = `${node.id}\u0000${model}`
    let entry = usage.get(key)
    if (entry === undefined) {
      entry = {
        node: node.id,
        model,
        requests: 0,
        promptTokens: 0,
        completionTokens: 0,
        latencySecondsTotal: 0,
        cost: 0,
      }
      usage.set(key, entry)
    }
    entry.requests++
    entry.latencySecondsTotal += (performance.now() - started) / 1000
    const prompt = /"prompt_tokens":\s*(\d+)/.exec(text)
    const completion = /"completion_tokens":\s*(\d+)/.exec(text)
    const promptTokens = prompt === null ? 0 : Number(prompt[1])
    const completionTokens = completion === null ? 0 : Number(completion[1])
    entry.promptTokens += promptTokens
    entry.completionTokens += completionTokens
    entry.cost += ((promptTokens + completionTokens) / 1000) * (node.tokenCostPer1k ?? 0)
    metrics.tokens.inc({ node: node.id, model, kind: 'prompt' }, promptTokens)
    metrics.tokens.inc({ node: node.id, model, kind: 'completion' }, completionTokens)
  }

  return {
    listener,
    balancer,
    state,
    async listen({ port = 0, host = '127.0.0.1' } = {}) {
      const server = createServer({ keepAliveTimeout: 30_000 }, listener)
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject)
        server.listen(port, host, () => resolve())
      })
      const address = server.address() as AddressInfo
      return {
        url: `http://${address.address}:${address.port}`,
        close: () =>
          new Promise<void>((resolve) => {
            server.close(() => resolve())
            server.closeAllConnections()
          }),
      }
    },
    async close() {
      clearInterval(probeTimer)
      await agent.close()
    },
  }
}

function sendRaw(
  response: ServerResponse,
  status: number,
  headers: Record<string, string | string[] | undefined>,
  body: string | Buffer,
  node: string,
  panic = false,
): void {
  const out: Record<string, string> = { 'x-llmesh-node': node }
  for (const name of passedHeaders) {
    const value = headers[name]
    if (typeof value === 'string') out[name] = value
  }
  if (panic) out['x-llmesh-panic'] = '1'
  out['content-length'] = String(Buffer.byteLength(body))
  response.writeHead(status, out)
  response.end(body)
}

function sendError(
  response: ServerResponse,
  status: number,
  message: string,
  type: string,
  param: string | null = null,
  code: string | null = null,
  headers: Record<string, string> = {},
): void {
  if (response.headersSent) {
    response.end()
    return
  }
  sendJson(response, status, { error: { message, type, param, code } }, headers)
}

function describe(error: unknown): string {
  if (error instanceof Error) {
    const code = (error as { code?: string }).code
    return code === undefined ? error.message : `${code}: ${error.message}`
  }
  return String(error)
}
