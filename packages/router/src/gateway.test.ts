import { createTempDir, type MockNode, startMockNode } from '@llmesh/testkit'
import { afterEach, describe, expect, it, vi } from 'vitest'
import { createGateway, type Gateway } from './gateway.js'
import { staticNodeSource } from './node-source.js'

const open: Array<{ close(): Promise<void> }> = []
afterEach(async () => {
  for (const item of open.splice(0).reverse()) await item.close()
})

async function fleet(count: number, options: Parameters<typeof startMockNode>[0] = {}) {
  const nodes: MockNode[] = []
  for (let index = 0; index < count; index++) {
    const node = await startMockNode({ name: `node-${index}`, ...options })
    open.push(node)
    nodes.push(node)
  }
  return nodes
}

async function gatewayFor(
  nodes: MockNode[],
  options: Partial<Parameters<typeof createGateway>[0]> = {},
  tokenCostPer1k?: number,
) {
  const gateway = createGateway({
    nodes: staticNodeSource(
      nodes.map((node) => ({
        id: node.name,
        url: node.url,
        models: [{ id: 'mock-model', specialties: node.name === 'node-1' ? ['code'] : [] }],
        ...(tokenCostPer1k === undefined ? {} : { tokenCostPer1k }),
      })),
    ),
    ...options,
  })
  const listening = await gateway.listen()
  open.push(gateway, listening)
  return { gateway, url: listening.url }
}

async function chat(
  url: string,
  body: Record<string, unknown> = {},
  headers: Record<string, string> = {},
) {
  const response = await fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify({
      model: 'mock-model',
      messages: [{ role: 'user', content: 'hello mesh' }],
      max_tokens: 4,
      ...body,
    }),
  })
  return { response, text: await response.text(), node: response.headers.get('x-llmesh-node') }
}

function nodeState(gateway: Gateway, id: string) {
  return gateway.state().nodes.find((node) => node.id === id)
}

describe('gateway over mock nodes', () => {
  it('spreads requests over the nodes and passes answers through', async () => {
    const nodes = await fleet(3)
    const { url } = await gatewayFor(nodes)
    const served = new Set<string>()
    for (let index = 0; index < 30; index++) {
      const { response, text, node } = await chat(url)
      expect(response.status).toBe(200)
      expect(JSON.parse(text).choices[0].message.content.split(' ').filter(Boolean)).toHaveLength(4)
      served.add(node!)
    }
    expect(served.size).toBe(3)
  })

  it('retries a refused connection on another node at once', async () => {
    const nodes = await fleet(2)
    const { gateway, url } = await gatewayFor(nodes)
    await nodes[0]!.stop()
    for (let index = 0; index < 10; index++) {
      const { response, node } = await chat(url)
      expect(response.status).toBe(200)
      expect(node).toBe('node-1')
    }
    expect(nodeState(gateway, 'node-0')!.failures).toBeGreaterThan(0)
  })

  it('retries 5xx answers elsewhere', async () => {
    const nodes = await fleet(2)
    nodes[0]!.setFaults({ errorRate: 1 })
    const { gateway, url } = await gatewayFor(nodes)
    for (let index = 0; index < 10; index++) expect((await chat(url)).response.status).toBe(200)
    expect(nodeState(gateway, 'node-0')!.failures).toBeGreaterThan(0)
    expect(nodes[1]!.requests.filter((request) => request.status === 200)).toHaveLength(10)
  })

  it('ejects a node after failures in a row, longer each time, and takes it back only when a probe answers', async () => {
    const nodes = await fleet(1)
    nodes[0]!.setFaults({ errorRate: 1 })
    const { gateway, url } = await gatewayFor(nodes, {
      balancer: { health: { baseEjectionMs: 50 } },
      probeIntervalMs: 10,
    })
    for (let index = 0; index < 3; index++) expect((await chat(url)).response.status).toBe(503)
    expect(nodeState(gateway, 'node-0')).toMatchObject({
      ejections: 1,
      ejectionReason: 'answered 500',
    })
    // The probe finds the node gone: ejected again, for twice as long.
    await nodes[0]!.stop()
    await vi.waitFor(() => expect(nodeState(gateway, 'node-0')!.ejections).toBe(2), {
      timeout: 5_000,
      interval: 10,
    })
    expect(nodeState(gateway, 'node-0')!.ejectionReason).toMatch(/probe failed/)
    nodes[0]!.clearFaults()
    await nodes[0]!.start()
    await vi.waitFor(() => expect(nodeState(gateway, 'node-0')!.condition).toBe('healthy'), {
      timeout: 5_000,
      interval: 10,
    })
    expect((await chat(url)).response.status).toBe(200)
  })

  it('sends a busy node’s request elsewhere without ejecting it', async () => {
    const nodes = await fleet(2, { slots: 1, maxQueue: 0, firstTokenMs: 50 })
    const { gateway, url } = await gatewayFor(nodes)
    const answers = await Promise.all([1, 2, 3, 4].map(() => chat(url, { max_tokens: 2 })))
    // Two slots in all: the others wait nowhere, so some are refused, but never with a 5xx from the gateway before trying both.
    const served = answers.filter((answer) => answer.response.status === 200)
    expect(served.length).toBeGreaterThanOrEqual(2)
    expect(
      nodes.flatMap((node) => node.requests).filter((request) => request.status === 503).length,
    ).toBeGreaterThan(0)
    expect(gateway.state().nodes.every((node) => node.condition === 'healthy')).toBe(true)
  })

  it('gives up on a node that hangs before its headers after the first-token deadline', async () => {
    const nodes = await fleet(2)
    nodes[0]!.setFaults({ hangBeforeHeaders: true })
    const { url } = await gatewayFor(nodes, { firstTokenTimeoutMs: 1_000 })
    for (let index = 0; index < 6; index++) {
      const { response, node } = await chat(url, { stream: true })
      expect(response.status).toBe(200)
      expect(node).toBe('node-1')
    }
  })

  it('ends a stream that stalls mid-way with an error event after the idle timeout, never hanging', async () => {
    const nodes = await fleet(1, { tokenIntervalMs: 1 })
    nodes[0]!.setFaults({ stallAfterTokens: 2 })
    const { url } = await gatewayFor(nodes, { idleTimeoutMs: 500 })
    const { response, text } = await chat(url, { stream: true, max_tokens: 10 })
    expect(response.status).toBe(200)
    const events = text.split('\n\n').filter(Boolean)
    expect(events).toHaveLength(3)
    expect(JSON.parse(events[2]!.slice(6)).error.code).toBe('LLMESH_STREAM_BROKEN')
    expect(text).not.toContain('[DONE]')
  })

  it('ends a stream whose node resets mid-way with an error event, passing the tokens sent before', async () => {
    const nodes = await fleet(1)
    nodes[0]!.setFaults({ resetAfterTokens: 3 })
    const { url } = await gatewayFor(nodes)
    const { text } = await chat(url, { stream: true, max_tokens: 10 })
    const events = text.split('\n\n').filter(Boolean)
    expect(
      events.slice(0, 3).every((event) => JSON.parse(event.slice(6)).choices[0].delta.content),
    ).toBe(true)
    expect(JSON.parse(events.at(-1)!.slice(6)).error.message).toMatch(/node-0 .*incomplete/)
  })

  it('moves traffic away from a node that turns slow', async () => {
    const nodes = await fleet(2, { firstTokenMs: 4 })
    nodes[0]!.setFaults({ slowdown: 10 })
    const { url } = await gatewayFor(nodes)
    const counts = new Map<string, number>()
    for (let index = 0; index < 40; index++) {
      const { node } = await chat(url, { max_tokens: 1 })
      counts.set(node!, (counts.get(node!) ?? 0) + 1)
    }
    expect(counts.get('node-0') ?? 0).toBeLessThan(8)
  })

  it('cancels the upstream generation when the client goes away', async () => {
    const nodes = await fleet(1, { tokenIntervalMs: 5 })
    const { url } = await gatewayFor(nodes)
    const controller = new AbortController()
    const response = await fetch(`${url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        model: 'mock-model',
        messages: [{ role: 'user', content: 'hi' }],
        max_tokens: 400,
        stream: true,
      }),
      signal: controller.signal,
    })
    await response.body!.getReader().read()
    controller.abort()
    await vi.waitFor(() => expect(nodes[0]!.inFlight).toBe(0), { timeout: 5_000, interval: 10 })
    expect(nodes[0]!.requests[0]!.tokensSent).toBeLessThan(400)
  })

  it('does not retry past the retry budget', async () => {
    const nodes = await fleet(2)
    nodes[0]!.setFaults({ errorRate: 1 })
    nodes[1]!.setFaults({ errorRate: 1 })
    const { gateway, url } = await gatewayFor(nodes, {
      retryBudget: { ratio: 0, minimumPerWindow: 1 },
    })
    const first = await chat(url)
    expect(first.response.status).toBe(503)
    const second = await chat(url)
    expect(second.response.status).toBe(503)
    expect(JSON.parse(second.text).error.message).toContain('retry budget')
    expect(gateway.state().retryBudget.retries).toBe(1)
  })

  it('balances over all nodes when most are ejected, rather than failing everything', async () => {
    const nodes = await fleet(3)
    const { gateway, url } = await gatewayFor(nodes, {
      balancer: { health: { baseEjectionMs: 60_000 } },
    })
    for (const id of ['node-0', 'node-1']) gateway.balancer.health(id).eject('test', Date.now())
    const served = new Set<string>()
    for (let index = 0; index < 30; index++) {
      const { response, node } = await chat(url)
      expect(response.status).toBe(200)
      expect(response.headers.get('x-llmesh-panic')).toBe('1')
      served.add(node!)
    }
    expect(served.size).toBeGreaterThan(1)
  })

  it('resolves aliases and task policies, prefers the specialty, and answers 404 for unknown models', async () => {
    const nodes = await fleet(2)
    const { url } = await gatewayFor(nodes, {
      policy: {
        aliases: { fast: 'mock-model' },
        tasks: { debug: 'mock-model' },
        taskSpecialties: { debug: 'code' },
      },
      balancer: { specialtyBonus: 0.9 },
    })
    expect((await chat(url, { model: 'fast' })).response.status).toBe(200)
    const byTask = new Map<string, number>()
    for (let index = 0; index < 20; index++) {
      const { response, node } = await chat(url, { model: 'auto' }, { 'x-llmesh-task': 'debug' })
      expect(response.status).toBe(200)
      byTask.set(node!, (byTask.get(node!) ?? 0) + 1)
    }
    expect(byTask.get('node-1')).toBeGreaterThan(14)
    // A required specialty is a filter: only node-1 has `code`.
    for (let index = 0; index < 5; index++)
      expect((await chat(url, {}, { 'x-llmesh-require': 'code' })).node).toBe('node-1')
    const impossible = await chat(url, {}, { 'x-llmesh-require': 'code,vision' })
    expect(impossible.response.status).toBe(404)
    expect(JSON.parse(impossible.text).error.message).toContain('with the specialties code, vision')
    const unknown = await chat(url, { model: 'nobody' })
    expect(unknown.response.status).toBe(404)
    expect(JSON.parse(unknown.text).error.code).toBe('model_not_found')
    expect((await chat(url, { model: 'auto' })).response.status).toBe(400)
  })

  it('reports each node’s state, usage and cost, and Prometheus metrics', async () => {
    await using _directory = await createTempDir()
    const nodes = await fleet(1)
    const { gateway, url } = await gatewayFor(nodes, {}, 2)
    await chat(url, { max_tokens: 5 })
    await chat(url, { max_tokens: 5, stream: true, stream_options: { include_usage: true } })
    const state = (await (await fetch(`${url}/v1/router/state`)).json()) as ReturnType<
      Gateway['state']
    >
    expect(state.nodes[0]).toMatchObject({
      id: 'node-0',
      condition: 'healthy',
      inFlight: 0,
      requests: 2,
    })
    expect(state.usage).toEqual([
      expect.objectContaining({
        node: 'node-0',
        model: 'mock-model',
        requests: 2,
        completionTokens: 10,
        promptTokens: 4,
      }),
    ])
    expect(state.usage[0]!.cost).toBeCloseTo((14 / 1000) * 2)
    expect(gateway.state().retryBudget.requests).toBe(2)
    const metrics = await (await fetch(`${url}/metrics`)).text()
    expect(metrics).toContain(
      'llmesh_router_requests_total{model="mock-model",node="node-0",status="200"} 2',
    )
    expect(metrics).toContain(
      'llmesh_router_tokens_total{node="node-0",model="mock-model",kind="completion"} 10',
    )
    expect(metrics).toContain('llmesh_router_in_flight{node="node-0"} 0')
  })
})
