import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import {
  createManifest,
  exportPublicKeyPem,
  generateSigningKey,
  signCatalog,
} from '@llmesh/manifest'
import { createRegistryClient } from '@llmesh/registry-client'
import { createRegistry } from '@llmesh/registry-server'
import { createTempDir, startMirror, type TempDir, writeTinyGguf } from '@llmesh/testkit'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { exitCodes } from '../exit-codes.js'
import { run } from '../program.js'
import { captureIo, llmesh } from '../test-io.js'

let directory: TempDir
const at = (name: string) => join(directory.path, name)
beforeAll(async () => {
  directory = await createTempDir('llmesh-cli-node-')
})
afterAll(() => directory.remove())

describe('llmesh node', () => {
  it('pulls from a signed catalog, smoke-tests, serves, seeds and registers, from one config file', async () => {
    const model = await writeTinyGguf(at('tiny.gguf'), { seed: 31 })
    const key = generateSigningKey()
    await writeFile(at('release.public.pem'), exportPublicKeyPem(key))
    await using mirror = await startMirror({ files: { '/tiny.gguf': model.path } })
    const { manifest } = await createManifest({
      files: [{ file: model.path, path: 'tiny.gguf', mirrors: [`${mirror.url}/tiny.gguf`] }],
      manifest: { id: 'acme/tiny', version: '1.0.0', license: { id: 'mit' } },
      allowInsecureMirrors: true,
    })
    const catalog = signCatalog({ schemaVersion: 1, models: [manifest] }, key, {
      allowInsecureMirrors: true,
    })
    await writeFile(at('catalog.json'), JSON.stringify(catalog))
    await using catalogServer = await startMirror({
      files: { '/catalog.json': at('catalog.json') },
    })

    const registry = createRegistry({
      database: ':memory:',
      adminToken: 'admin',
      heartbeatIntervalMs: 200,
    })
    const registryServer = await registry.listen()
    const admin = createRegistryClient({ urls: [registryServer.url], token: 'admin' })
    const { token } = await admin.createCredential({
      name: 'node-1',
      role: 'node',
      nodeId: 'node-1',
    })

    const config = at('node.yaml')
    await writeFile(
      config,
      [
        'store: ./node-store',
        'models: [acme/tiny]',
        `catalogs: ["${catalogServer.url}/catalog.json"]`,
        'trustedKeys: [release.public.pem]',
        'allowInsecureMirrors: true',
        'server: { port: 0, slots: 2 }',
        'inference: { backend: cpu, threads: 1 }',
        `registry: { urls: ["${registryServer.url}"], token: "${token}", nodeId: node-1, heartbeatIntervalMs: 200 }`,
        'p2p: { listen: ["/ip4/127.0.0.1/tcp/0"], concurrentUploads: 8, uploadTimeoutMs: 30000 }',
      ].join('\n'),
    )
    const stop = new AbortController()
    const io = captureIo()
    let announce: (line: { url: string; peerId: string }) => void = () => {}
    const ready = new Promise<{ url: string; peerId: string }>((resolve) => {
      announce = resolve
    })
    const stdout = io.stdout
    io.stdout = (text) => {
      stdout(text)
      for (const line of text.trim().split('\n')) {
        if (!line.startsWith('{"event"')) continue
        const event = JSON.parse(line)
        if (event.event === 'ready') announce(event)
      }
    }
    const node = run(['node', '--config', config, '--json'], { io, signal: stop.signal })
    try {
      const { url, peerId } = await Promise.race([
        ready,
        node.then((code) => {
          throw new Error(`node ended with ${code}: ${io.err()}${io.out()}`)
        }),
      ])
      const response = await fetch(`${url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({
          model: 'acme/tiny',
          messages: [{ role: 'user', content: 'hi' }],
          max_tokens: 3,
        }),
      })
      expect(response.status).toBe(200)
      const deadline = Date.now() + 10_000
      let state: string | undefined
      while (Date.now() < deadline) {
        state = (await admin.listNodes({})).find((entry) => entry.nodeId === 'node-1')?.state
        if (state === 'ready') break
        await new Promise((resolve) => setTimeout(resolve, 50))
      }
      expect(state).toBe('ready')
      const record = (await admin.listNodes({}))[0]!
      expect(record).toMatchObject({
        endpoint: url,
        peerId,
        models: [expect.objectContaining({ id: 'acme/tiny', digest: model.sha256 })],
      })
      expect(io.out()).toContain('"event":"backend-check","ok":true')
      expect(io.out()).toContain('"event":"smoke-test","model":"acme/tiny","passed":true')
    } finally {
      stop.abort()
      const code = await node
      if (code !== 0) console.error('NODE OUTPUT', io.out(), io.err())
      expect(code).toBe(0)
      await registryServer.close()
      await registry.close()
    }
  })

  it('refuses a config file that does not validate, naming the field', async () => {
    const config = at('bad.yaml')
    await writeFile(config, 'models: []\n')
    const result = await llmesh('node', '--config', config)
    expect(result.code).toBe(exitCodes.invalidInput)
    expect(result.err).toContain('models')
    // A peer that is no multiaddr is named by its place in the file, before anything starts.
    await writeFile(
      config,
      'models: [acme/tiny]\np2p: { peers: ["/ip4/127.0.0.1/tcp/4001", "seed.example:4001"] }\n',
    )
    const peer = await llmesh('node', '--config', config)
    expect(peer.code).toBe(exitCodes.invalidInput)
    expect(peer.err).toMatch(/p2p\.peers\.1: not a multiaddr such as \/ip4\//)
  })
})
