import { createHostCache, createRegistryClient } from '@llmesh/registry-client'
import { createRegistry } from '@llmesh/registry-server'
import { startMockNode } from '@llmesh/testkit'
import { describe, expect, it } from 'vitest'
import { Balancer } from './balancer.js'
import { createGateway } from './gateway.js'
import { modelPolicySchema, resolveModel } from './model-policy.js'
import { registryNodeSource, staticNodeSource } from './node-source.js'
import { RetryBudget } from './retry-budget.js'

const node = (id: string) => ({ id, url: `http://${id}.invalid:8080`, models: [{ id: 'm' }] })

describe('Balancer', () => {
  it('picks the cheaper of two distinct candidates, and never an excluded one', () => {
    let time = 1_000
    const balancer = new Balancer({ now: () => time })
    const nodes = [node('a'), node('b')]
    balancer.health('a').answered(10, time)
    balancer.health('b').answered(100, time)
    for (let index = 0; index < 20; index++) expect(balancer.choose(nodes)!.node.id).toBe('a')
    expect(balancer.choose(nodes, { excluded: new Set(['a']) })!.node.id).toBe('b')
    expect(balancer.choose(nodes, { excluded: new Set(['a', 'b']) })).toBeUndefined()
    // Requests in flight raise a node's cost: ten on `a` make `b` the cheaper.
    for (let index = 0; index < 10; index++) balancer.health('a').started()
    expect(balancer.choose(nodes)!.node.id).toBe('b')
    time += 1
  })

  it('leaves ejected nodes out, unless most are ejected (panic)', () => {
    const balancer = new Balancer()
    const nodes = [node('a'), node('b'), node('c')]
    balancer.health('a').eject('test', Date.now())
    for (let index = 0; index < 30; index++) {
      const choice = balancer.choose(nodes)!
      expect(choice.node.id).not.toBe('a')
      expect(choice.panic).toBe(false)
    }
    balancer.health('b').eject('test', Date.now())
    const chosen = new Set<string>()
    for (let index = 0; index < 60; index++) {
      const choice = balancer.choose(nodes)!
      expect(choice.panic).toBe(true)
      chosen.add(choice.node.id)
    }
    expect(chosen.size).toBeGreaterThan(1)
  })

  it('ejects after failures in a row, each time for longer up to the cap', () => {
    let time = 0
    const balancer = new Balancer({
      now: () => time,
      health: { baseEjectionMs: 1_000, maxEjectionMs: 2_500 },
    })
    const health = balancer.health('a')
    expect(health.failed('x', time)).toBe(false)
    expect(health.failed('x', time)).toBe(false)
    expect(health.failed('x', time)).toBe(true)
    expect(health.condition(time + 999)).toBe('ejected')
    expect(health.probeDue(time + 1_000)).toBe(true)
    health.eject('probe failed', 1_000)
    expect(health.view(1_000).ejectedUntil).toBe(new Date(3_000).toISOString())
    health.eject('probe failed', 3_000)
    expect(health.view(3_000).ejectedUntil).toBe(new Date(5_500).toISOString())
    health.restored()
    expect(health.condition(5_500)).toBe('healthy')
    time = 1
  })
})

describe('RetryBudget', () => {
  it('allows retries up to the ratio of recent requests, with a floor, and forgets old traffic', () => {
    let time = 10_000
    const budget = new RetryBudget({ ratio: 0.2, minimumPerWindow: 2, now: () => time })
    expect(budget.tryRetry()).toBe(true)
    expect(budget.tryRetry()).toBe(true)
    expect(budget.tryRetry()).toBe(false)
    for (let index = 0; index < 50; index++) budget.recordRequest()
    expect(budget.view()).toEqual({ requests: 50, retries: 2, allowed: 10 })
    let granted = 0
    while (budget.tryRetry()) granted++
    expect(granted).toBe(8)
    time += 11_000
    expect(budget.view()).toEqual({ requests: 0, retries: 0, allowed: 2 })
  })
})

describe('model policy', () => {
  it('resolves names, aliases and tasks', () => {
    const policy = modelPolicySchema.parse({
      aliases: { fast: 'acme/tiny' },
      tasks: { debug: 'acme/coder' },
      defaultModel: 'acme/tiny',
      taskSpecialties: { debug: 'code' },
    })
    expect(resolveModel(policy, 'acme/other', undefined)).toEqual({
      model: 'acme/other',
      specialty: undefined,
    })
    expect(resolveModel(policy, 'fast', undefined)).toEqual({
      model: 'acme/tiny',
      specialty: undefined,
    })
    expect(resolveModel(policy, 'auto', 'debug')).toEqual({
      model: 'acme/coder',
      specialty: 'code',
    })
    expect(resolveModel(policy, 'auto', 'unknown')).toEqual({
      model: 'acme/tiny',
      specialty: undefined,
    })
    expect(resolveModel(modelPolicySchema.parse({}), 'auto', undefined)).toBeUndefined()
  })
})

describe('node sources', () => {
  it('validates a static list', () => {
    expect(() => staticNodeSource([{ id: 'a', url: 'ftp://x', models: [{ id: 'm' }] }])).toThrow(
      /http/,
    )
    expect(
      staticNodeSource([{ id: 'a', url: 'http://x:1/v1/', models: [{ id: 'm' }] }]).nodes()[0]!.url,
    ).toBe('http://x:1')
  })

  it('routes to the ready nodes of a registry, through the registry client’s host cache', async () => {
    await using mock = await startMockNode({ models: ['acme/tiny'], name: 'registered' })
    const registry = createRegistry({ database: ':memory:', adminToken: 'admin' })
    const server = await registry.listen()
    const admin = createRegistryClient({ urls: [server.url], token: 'admin' })
    const cache = createHostCache(admin, { refreshMs: 60_000 })
    const gateway = createGateway({ nodes: registryNodeSource(cache) })
    const listening = await gateway.listen()
    try {
      await admin.register({
        nodeId: 'registered',
        endpoint: mock.url,
        hardware: { ramBytes: 1024 ** 3, cpu: { model: 'test', cores: 2 } },
        models: [{ id: 'acme/tiny', version: '1.0.0', digest: 'a'.repeat(64) }],
        capacitySlots: 4,
        tokenCostPer1k: 0.5,
      })
      await admin.heartbeat('registered', { inFlight: 0, queueDepth: 0, tokensPerSecond: 0 })
      await cache.refresh()
      const response = await fetch(`${listening.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({
          model: 'acme/tiny',
          messages: [{ role: 'user', content: 'hi' }],
          max_tokens: 2,
        }),
      })
      expect(response.status).toBe(200)
      expect(response.headers.get('x-llmesh-node')).toBe('registered')
      // By digest too.
      const byDigest = await fetch(`${listening.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({
          model: 'a'.repeat(64),
          messages: [{ role: 'user', content: 'hi' }],
          max_tokens: 2,
        }),
      })
      expect(byDigest.status).toBe(200)
      expect(mock.requests.map((request) => request.model)).toEqual(['acme/tiny', 'acme/tiny'])
      // 'hi' is one prompt token, and two were generated: 3 tokens a request at 0.5 per 1k.
      expect(gateway.state().usage.reduce((sum, entry) => sum + entry.cost, 0)).toBeCloseTo(
        (6 / 1000) * 0.5,
      )
    } finally {
      cache.close()
      await listening.close()
      await gateway.close()
      await server.close()
      await registry.close()
    }
  })
})
