import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import {
  createHostCache,
  createRegistryClient,
  type NodeRegistration,
  RegistryError,
  startHeartbeat,
} from '@llmesh/registry-client'
import { createTempDir, type TempDir } from '@llmesh/testkit'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { createRegistry, type Registry } from './registry.js'

const ADMIN = 'admin-token-for-tests'
const digestA = 'a'.repeat(64)
const digestB = 'b'.repeat(64)

function registration(
  nodeId: string,
  models = [{ id: 'acme/tiny', version: '1.0.0', digest: digestA, specialties: ['chat'] }],
): NodeRegistration {
  return {
    nodeId,
    endpoint: `http://127.0.0.1:9/${nodeId}`,
    hardware: {
      ramBytes: 16 * 1024 ** 3,
      cpu: { model: 'test cpu', cores: 8 },
      gpus: [{ name: 'Test GPU', vramBytes: 24 * 1024 ** 3, backend: 'cuda' }],
    },
    models,
    capacitySlots: 4,
    tokenCostPer1k: 0.2,
  }
}

const load = { inFlight: 1, queueDepth: 0, tokensPerSecond: 42, loadedModels: [digestA] }

let directory: TempDir
let now = Date.parse('2026-11-22T12:00:00Z')
const clock = () => now
const running: Array<{ registry: Registry; close(): Promise<void> }> = []

async function start(options: Parameters<typeof createRegistry>[0] = {}) {
  const registry = createRegistry({
    database: join(directory.path, 'registry.db'),
    adminToken: ADMIN,
    clock,
    ...options,
  })
  const server = await registry.listen()
  const entry = {
    registry,
    url: server.url,
    async close() {
      await server.close()
      await registry.close()
      running.splice(running.indexOf(entry), 1)
    },
  }
  running.push(entry)
  return entry
}

async function nodeToken(url: string, nodeId: string): Promise<string> {
  const admin = createRegistryClient({ urls: [url], token: ADMIN })
  return (await admin.createCredential({ name: nodeId, role: 'node', nodeId })).token
}

beforeEach(async () => {
  directory = await createTempDir('llmesh-registry-')
  now = Date.parse('2026-11-22T12:00:00Z')
})
afterEach(async () => {
  for (const entry of [...running]) await entry.close()
  await directory.remove()
})

describe('membership', () => {
  it('moves a node through joining, ready, not-ready, draining and removal, and takes it back on re-registration', async () => {
    const { url, registry } = await start({ heartbeatIntervalMs: 10_000, removeAfterMs: 300_000 })
    const node = createRegistryClient({ urls: [url], token: await nodeToken(url, 'node-a') })
    expect((await node.register(registration('node-a'))).state).toBe('joining')
    expect((await node.heartbeat('node-a', load)).state).toBe('ready')
    now += 30_000
    expect((await node.getNode('node-a')).state).toBe('ready')
    now += 1
    expect((await node.getNode('node-a')).state).toBe('not-ready')
    expect((await node.heartbeat('node-a', load)).state).toBe('ready')
    expect((await node.drain('node-a')).state).toBe('draining')
    expect(await node.hosts({ model: 'acme/tiny' })).toEqual([])

    now += 300_001
    expect(registry.sweep()).toBe(1)
    const forgotten = await node.heartbeat('node-a', load).catch((error: unknown) => error)
    expect(RegistryError.isInstance(forgotten) && forgotten.statusCode).toBe(404)
    expect((await node.register(registration('node-a'))).state).toBe('joining')
  })

  it('re-registers from the heartbeat loop once the registry has forgotten the node', async () => {
    const { url, registry } = await start({ removeAfterMs: 60_000 })
    const node = createRegistryClient({ urls: [url], token: await nodeToken(url, 'node-a') })
    const registrations: string[] = []
    const loop = startHeartbeat(node, {
      registration: registration('node-a'),
      load: () => load,
      intervalMs: 20,
      onError: (error) => registrations.push(String(error)),
    })
    try {
      await until(
        async () => (await node.getNode('node-a').catch(() => undefined))?.state === 'ready',
      )
      now += 60_001
      registry.sweep()
      now += 1
      // The next beats get 404, re-register, and the node comes back ready.
      await until(
        async () => (await node.getNode('node-a').catch(() => undefined))?.state === 'ready',
      )
    } finally {
      await loop.stop()
    }
    expect(registrations).toEqual([])
  })

  it('lists hosts by model, digest and specialty, and models with host counts', async () => {
    const { url } = await start()
    const admin = createRegistryClient({ urls: [url], token: ADMIN })
    await admin.register(registration('node-a'))
    await admin.register(
      registration('node-b', [
        { id: 'acme/coder', version: '2.0.0', digest: digestB, specialties: ['code'] },
      ]),
    )
    await admin.register(registration('node-c'))
    await admin.heartbeat('node-a', load)
    await admin.heartbeat('node-b', load)
    // node-c never heartbeats: joining, so not a host yet.
    expect((await admin.hosts({ model: 'acme/tiny' })).map((node) => node.nodeId)).toEqual([
      'node-a',
    ])
    expect((await admin.hosts({ digest: digestB })).map((node) => node.nodeId)).toEqual(['node-b'])
    expect(
      (await admin.hosts({ model: 'acme/coder', specialty: 'chat' })).map((node) => node.nodeId),
    ).toEqual([])
    expect(await admin.models()).toEqual([
      { id: 'acme/coder', version: '2.0.0', digest: digestB, hosts: 1, readyHosts: 1 },
      { id: 'acme/tiny', version: '1.0.0', digest: digestA, hosts: 2, readyHosts: 1 },
    ])
    const missing = await admin.hosts({}).catch((error: unknown) => error)
    expect(missing).toMatchObject({ statusCode: 400, field: 'model' })
  })

  it('keeps nodes, credentials and the usage ledger across a restart', async () => {
    const first = await start()
    const token = await nodeToken(first.url, 'node-a')
    const node = createRegistryClient({ urls: [first.url], token })
    await node.register(registration('node-a'))
    await node.heartbeat('node-a', load)
    await node.reportUsage('node-a', { requests: 12, tokensGenerated: 3400, digest: digestA })
    await first.close()

    const second = await start()
    const again = createRegistryClient({ urls: [second.url], token })
    expect((await again.getNode('node-a')).state).toBe('ready')
    expect(await again.listUsage()).toEqual([
      expect.objectContaining({
        nodeId: 'node-a',
        requests: 12,
        tokensGenerated: 3400,
        digest: digestA,
      }),
    ])
    expect((await again.heartbeat('node-a', load)).state).toBe('ready')
  })
})

describe('security', () => {
  it('enforces each auth rule', async () => {
    const { url } = await start()
    const anonymous = createRegistryClient({ urls: [url] })
    expect(await anonymous.listNodes().catch((error: unknown) => error)).toMatchObject({
      statusCode: 401,
    })
    const admin = createRegistryClient({ urls: [url], token: ADMIN })
    const reader = createRegistryClient({
      urls: [url],
      token: (await admin.createCredential({ name: 'router', role: 'reader' })).token,
    })
    const nodeA = createRegistryClient({ urls: [url], token: await nodeToken(url, 'node-a') })
    const stranger = createRegistryClient({ urls: [url], token: 'llmesh_not-a-real-token' })

    // A stolen read-only credential cannot register.
    expect(
      await reader.register(registration('node-a')).catch((error: unknown) => error),
    ).toMatchObject({ statusCode: 403 })
    expect(await stranger.listNodes().catch((error: unknown) => error)).toMatchObject({
      statusCode: 401,
    })
    // A node changes only its own record.
    await nodeA.register(registration('node-a'))
    expect(
      await nodeA.register(registration('node-b')).catch((error: unknown) => error),
    ).toMatchObject({ statusCode: 403 })
    await admin.register(registration('node-b'))
    expect(await nodeA.drain('node-b').catch((error: unknown) => error)).toMatchObject({
      statusCode: 403,
    })
    expect(await nodeA.deregister('node-b').catch((error: unknown) => error)).toMatchObject({
      statusCode: 403,
    })
    // Only the admin creates credentials.
    expect(
      await nodeA.createCredential({ name: 'x', role: 'reader' }).catch((error: unknown) => error),
    ).toMatchObject({ statusCode: 403 })
    expect((await reader.listNodes()).map((node) => node.nodeId).sort()).toEqual([
      'node-a',
      'node-b',
    ])
  })

  it('stores credentials hashed, never the token', async () => {
    const { url, close } = await start()
    const { token } = await createRegistryClient({ urls: [url], token: ADMIN }).createCredential({
      name: 'n',
      role: 'node',
      nodeId: 'node-a',
    })
    await close()
    const bytes = await readFile(join(directory.path, 'registry.db'))
    const wal = await readFile(join(directory.path, 'registry.db-wal')).catch(() => Buffer.alloc(0))
    expect(bytes.includes(token)).toBe(false)
    expect(wal.includes(token)).toBe(false)
  })

  it('answers public reads when configured, never public writes', async () => {
    const { url } = await start({ publicReads: true })
    const anonymous = createRegistryClient({ urls: [url] })
    expect(await anonymous.listNodes()).toEqual([])
    expect(
      await anonymous.register(registration('node-a')).catch((error: unknown) => error),
    ).toMatchObject({ statusCode: 403 })
  })

  it('rate-limits writes per credential', async () => {
    const { url } = await start({ writesPerSecond: 1 })
    const node = createRegistryClient({
      urls: [url],
      token: await nodeToken(url, 'node-a'),
      retries: 0,
    })
    await node.register(registration('node-a'))
    await node.heartbeat('node-a', load)
    const limited = await node.heartbeat('node-a', load).catch((error: unknown) => error)
    expect(limited).toMatchObject({ statusCode: 429, code: 'LLMESH_RATE_LIMITED' })
    now += 1_000
    expect((await node.heartbeat('node-a', load)).state).toBe('ready')
  })

  it('answers bad input with 400 naming the field, and a body over the limit with 413', async () => {
    const { url } = await start({ bodyLimitBytes: 4096 })
    const post = (body: string) =>
      fetch(`${url}/v1/nodes`, {
        method: 'POST',
        headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' },
        body,
      })
    const cases: Array<[unknown, string]> = [
      [{ ...registration('node-a'), endpoint: 'not a url' }, 'endpoint'],
      [
        {
          ...registration('node-a'),
          hardware: { ...registration('node-a').hardware, ramBytes: -1 },
        },
        'hardware.ramBytes',
      ],
      [{ ...registration('node-a'), nodeId: '../etc' }, 'nodeId'],
      [
        { ...registration('node-a'), models: [{ id: 'x', version: '1', digest: 'nope' }] },
        'models.0.digest',
      ],
      [{ ...registration('node-a'), surprise: true }, ''],
    ]
    for (const [body, field] of cases) {
      const response = await post(JSON.stringify(body))
      expect(response.status).toBe(400)
      const answer = (await response.json()) as {
        error: { code: string; message: string; field?: string }
      }
      expect(answer.error.code).toBe('LLMESH_INVALID_REQUEST')
      if (field !== '') expect(answer.error.field).toBe(field)
      expect(answer.error.message).toMatch(/^body/)
    }
    expect((await post('{"nodeId": ')).status).toBe(400)
    expect(
      (await post(JSON.stringify({ ...registration('node-a'), padding: 'x'.repeat(5000) }))).status,
    ).toBe(413)
  })
})

describe('client', () => {
  it('fails over to the second registry when the first goes away', async () => {
    const first = await start({ database: join(directory.path, 'one.db') })
    const second = await start({ database: join(directory.path, 'two.db') })
    const client = createRegistryClient({ urls: [first.url, second.url], token: ADMIN, retries: 0 })
    await client.register(registration('node-a'))
    expect(client.currentUrl).toBe(first.url)
    await first.close()
    const record = await client.register(registration('node-a'))
    expect(record.nodeId).toBe('node-a')
    expect(client.currentUrl).toBe(second.url)
    expect((await client.health()).nodes).toBe(1)
  })

  it('does not retry a request the registry refused', async () => {
    const first = await start({ database: join(directory.path, 'one.db') })
    const second = await start({ database: join(directory.path, 'two.db') })
    const client = createRegistryClient({ urls: [first.url, second.url] })
    expect(await client.listNodes().catch((error: unknown) => error)).toMatchObject({
      statusCode: 401,
      registry: first.url,
    })
  })

  it('keeps a cached host list that routers read without a request', async () => {
    const { url } = await start()
    const admin = createRegistryClient({ urls: [url], token: ADMIN })
    await admin.register(registration('node-a'))
    await admin.heartbeat('node-a', load)
    const cache = createHostCache(admin, { refreshMs: 60_000 })
    try {
      expect(cache.hosts({ model: 'acme/tiny' })).toEqual([])
      await cache.refresh()
      expect(cache.hosts({ model: 'acme/tiny' }).map((node) => node.nodeId)).toEqual(['node-a'])
      expect(cache.hosts({ digest: digestB })).toEqual([])
    } finally {
      cache.close()
    }
  })
})

describe('endpoints for operators', () => {
  it('serves health, Prometheus metrics and the OpenAPI document generated from the contract', async () => {
    const { url } = await start()
    await createRegistryClient({ urls: [url], token: ADMIN }).register(registration('node-a'))
    expect(await (await fetch(`${url}/health`)).json()).toEqual({ status: 'ok', nodes: 1 })
    const metrics = await (await fetch(`${url}/metrics`)).text()
    expect(metrics).toMatch(/llmesh_registry_nodes\{state="joining"\} 1/)
    expect(metrics).toMatch(/llmesh_registry_request_duration_seconds_bucket/)
    const openapi = (await (await fetch(`${url}/v1/openapi.json`)).json()) as {
      paths: Record<string, Record<string, unknown>>
    }
    expect(Object.keys(openapi.paths)).toEqual(
      expect.arrayContaining([
        '/v1/nodes',
        '/v1/hosts',
        '/v1/nodes/{nodeId}/heartbeat',
        '/v1/credentials',
      ]),
    )
    expect(openapi.paths['/v1/nodes']).toHaveProperty('post.requestBody')
  })
})

/** Waits for a condition the code under test makes true, with a deadline (no fixed sleep). */
async function until(condition: () => Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error('condition not met in time')
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
}
