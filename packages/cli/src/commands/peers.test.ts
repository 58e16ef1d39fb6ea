import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { createTempDir, startMirror, type TempDir, writeTinyGguf } from '@llmesh/testkit'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { exitCodes } from '../exit-codes.js'
import { run } from '../program.js'
import { captureIo, llmesh } from '../test-io.js'

let directory: TempDir
const at = (name: string) => join(directory.path, name)
beforeAll(async () => {
  directory = await createTempDir('llmesh-cli-peers-')
})
afterAll(() => directory.remove())

describe('llmesh seed, pull --peer and peers', () => {
  it('pulls a model from a seeding peer when its mirror is gone, and reports what peers hold', async () => {
    const model = await writeTinyGguf(at('shared.gguf'), { seed: 14 })
    const mirror = await startMirror({ files: { '/shared.gguf': model.path } })
    const manifestPath = at('shared.manifest.json')
    const common = ['--allow-insecure-mirrors']
    expect(
      (
        await llmesh(
          'manifest',
          'create',
          model.path,
          '--id',
          'acme/shared',
          '--model-version',
          '1.0.0',
          '--piece-size',
          '16384',
          '--mirror',
          `${mirror.url}/`,
          ...common,
          '--out',
          manifestPath,
        )
      ).code,
    ).toBe(0)
    expect((await llmesh('pull', manifestPath, '--store', at('seed-store'), ...common)).code).toBe(
      0,
    )
    await mirror.close()

    const stop = new AbortController()
    const io = captureIo()
    let announce: (address: string) => void = () => {}
    const seeding = new Promise<string>((resolve) => {
      announce = resolve
    })
    const stdout = io.stdout
    io.stdout = (text) => {
      stdout(text)
      const line = JSON.parse(text)
      if (line.event === 'seeding') announce(line.addresses[0])
    }
    const seed = run(
      ['seed', '--store', at('seed-store'), '--listen', '/ip4/127.0.0.1/tcp/0', '--json'],
      { io, signal: stop.signal },
    )
    const address = await Promise.race([
      seeding,
      seed.then((code) => {
        throw new Error(`seed ended with ${code}: ${io.err()}`)
      }),
    ])
    try {
      const pulled = await llmesh(
        'pull',
        manifestPath,
        '--store',
        at('leecher-store'),
        '--peer',
        address,
        ...common,
      )
      expect(pulled.code).toBe(0)
      expect(
        await readFile(
          join(at('leecher-store'), 'models', 'acme', 'shared', '1.0.0', 'shared.gguf'),
        ),
      ).toEqual(await readFile(model.path))
      const peers = await llmesh(
        'peers',
        address,
        '--model',
        'acme/shared',
        '--store',
        at('leecher-store'),
        '--json',
      )
      expect(peers.code).toBe(0)
      expect(JSON.parse(peers.out)).toEqual([expect.objectContaining({ state: 'complete' })])
    } finally {
      stop.abort()
      expect(await seed).toBe(0)
    }
    const stopped = io
      .out()
      .trim()
      .split('\n')
      .map((line) => JSON.parse(line))
      .find((line) => line.event === 'stopped')
    expect(stopped).toEqual({ event: 'stopped', uploadedBytes: model.size, peers: 1 })
  })

  it('refuses a peer address that is no multiaddr as wrong usage, before dialling anyone', async () => {
    for (const argv of [
      ['peers', '/ip4/127.0.0.1/tcp/4001', 'seed.example:4001', '--model', 'sha256:00'],
      ['pull', at('none.manifest.json'), '--peer', 'seed.example:4001'],
      ['seed', '--store', at('no-store'), '--bootstrap', 'seed.example:4001'],
      ['seed', '--store', at('no-store'), '--listen', '0.0.0.0:4001'],
    ]) {
      const result = await llmesh(...argv)
      expect(result.code).toBe(exitCodes.usage)
      expect(result.err).toMatch(/'seed\.example:4001'|'0\.0\.0\.0:4001'/)
      expect(result.err).toMatch(/not a multiaddr such as \/ip4\//)
    }
  })

  it('writes a private network key once', async () => {
    const file = at('swarm.key')
    expect((await llmesh('network-key', file)).code).toBe(0)
    expect((await readFile(file)).byteLength).toBe(95)
    expect((await llmesh('network-key', file)).code).toBe(2)
  })
})
