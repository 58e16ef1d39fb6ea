import { createRegistryClient } from '@llmesh/registry-client'
import { describe, expect, it } from 'vitest'
import { run } from '../program.js'
import { captureIo, llmesh } from '../test-io.js'

describe('llmesh registry, nodes and models --network', () => {
  it('runs a registry, creates a node credential, and lists its nodes and models', async () => {
    const io = captureIo()
    const controller = new AbortController()
    const serving = run(
      [
        'registry',
        'start',
        '--db',
        ':memory:',
        '--port',
        '0',
        '--admin-token',
        'admin-secret',
        '--json',
      ],
      { io, signal: controller.signal },
    )
    const url = await new Promise<string>((resolve, reject) => {
      const look = setInterval(() => {
        const line = io
          .out()
          .split('\n')
          .find((entry) => entry.includes('"listening"'))
        if (line !== undefined) {
          clearInterval(look)
          resolve((JSON.parse(line) as { url: string }).url)
        }
      }, 10)
      void serving.then((code) => {
        clearInterval(look)
        reject(new Error(`registry start exited ${code}: ${io.err()}`))
      })
    })
    try {
      const created = await llmesh(
        'registry',
        'credentials',
        'create',
        '--registry',
        url,
        '--token',
        'admin-secret',
        '--name',
        'a',
        '--role',
        'node',
        '--node-id',
        'node-a',
        '--json',
      )
      expect(created.code).toBe(0)
      const { token } = JSON.parse(created.out) as { token: string }
      const node = createRegistryClient({ urls: [url], token })
      await node.register({
        nodeId: 'node-a',
        endpoint: 'http://127.0.0.1:9',
        hardware: { ramBytes: 8 * 1024 ** 3, cpu: { model: 'cpu', cores: 4 } },
        models: [{ id: 'acme/tiny', version: '1.0.0', digest: 'd'.repeat(64) }],
        capacitySlots: 1,
      })
      await node.heartbeat('node-a', { inFlight: 0, queueDepth: 0, tokensPerSecond: 0 })

      const nodes = await llmesh('nodes', '--registry', url, '--token', token)
      expect(nodes.code).toBe(0)
      expect(nodes.out).toMatch(/node-a\s+ready\s+http:\/\/127\.0\.0\.1:9\s+acme\/tiny@1\.0\.0/)
      const models = await llmesh('models', '--network', '--registry', url, '--token', token)
      expect(models.out).toMatch(/acme\/tiny@1\.0\.0\s+d{16}\s+1\s+1/)
      const refused = await llmesh(
        'registry',
        'credentials',
        'create',
        '--registry',
        url,
        '--token',
        token,
        '--name',
        'b',
        '--role',
        'reader',
      )
      expect(refused.code).toBe(1)
      expect(refused.err).toMatch(/403/)
    } finally {
      controller.abort()
    }
    expect(await serving).toBe(0)
  })

  it('says where the registry is missing', async () => {
    const result = await llmesh('nodes')
    expect(result.code).toBe(2)
    expect(result.err).toMatch(/--registry <url> or LLMESH_REGISTRY/)
  })
})
