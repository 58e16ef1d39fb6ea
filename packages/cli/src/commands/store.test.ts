import { chmod, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { createTempDir, startMirror, type TempDir, writeTinyGguf } from '@llmesh/testkit'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { exitCodes } from '../exit-codes.js'
import { llmesh } from '../test-io.js'

let directory: TempDir
const at = (name: string) => join(directory.path, name)

beforeAll(async () => {
  directory = await createTempDir('llmesh-cli-store-')
})
afterAll(() => directory.remove())

describe('llmesh pull and the store commands', () => {
  it('pulls a published model from a mirror, then lists, sizes, pins, verifies and removes it', async () => {
    const model = await writeTinyGguf(at('tiny.gguf'), { type: 'q8_0', seed: 4 })
    await using mirror = await startMirror({ files: { '/models/tiny.gguf': model.path } })
    const created = await llmesh(
      'manifest',
      'create',
      model.path,
      '--id',
      'acme/tiny',
      '--model-version',
      '1.0.0',
      '--piece-size',
      '16384',
      '--mirror',
      `${mirror.url}/models/`,
      '--allow-insecure-mirrors',
      '--out',
      at('published/tiny.manifest.json'),
    )
    expect(created.code).toBe(0)
    const store = at('store')

    const refused = await llmesh('pull', at('published/tiny.manifest.json'), '--store', store)
    expect(refused.code).toBe(exitCodes.invalidInput)
    expect(refused.err).toMatch(/http mirrors need allowInsecureMirrors/)

    const pulled = await llmesh(
      'pull',
      at('published/tiny.manifest.json'),
      '--store',
      store,
      '--allow-insecure-mirrors',
      '--json',
    )
    expect(pulled.code).toBe(0)
    const lines = pulled.out
      .trim()
      .split('\n')
      .map((line) => JSON.parse(line) as Record<string, unknown>)
    expect(lines.some((line) => line.event === 'download:progress')).toBe(true)
    const { result } = lines.at(-1) as {
      result: { files: Array<{ sha256: string; verification: string; modelPath: string }> }
    }
    expect(result.files[0]).toMatchObject({ sha256: model.sha256, verification: 'pieces+sha256' })
    expect(await readFile(result.files[0]!.modelPath)).toEqual(await readFile(model.path))

    const again = await llmesh('pull', 'acme/tiny', '--store', store)
    expect(again.code).toBe(0)
    expect(again.out).toMatch(/already in the store/)

    const listed = await llmesh('ls', '--store', store)
    expect(listed.out).toMatch(/acme\/tiny@1\.0\.0\s+experimental\s+verified/)
    expect((await llmesh('du', '--store', store)).out).toMatch(/files 167\.0 KiB/)

    expect((await llmesh('pin', 'acme/tiny', '--store', store)).code).toBe(0)
    const pinned = await llmesh('rm', 'acme/tiny', '--store', store)
    expect(pinned.code).toBe(exitCodes.failure)
    expect(pinned.err).toMatch(/is pinned/)
    expect((await llmesh('pin', 'acme/tiny', '--remove', '--store', store)).code).toBe(0)

    expect(await llmesh('verify', '--store', store)).toMatchObject({
      code: 0,
      out: '1 file checked, all intact\n',
    })
    const blob = join(store, 'blobs', 'sha256', model.sha256)
    await chmod(blob, 0o644)
    const bytes = await readFile(blob)
    bytes[100]! ^= 1
    await writeFile(blob, bytes)
    const damaged = await llmesh('verify', '--store', store)
    expect(damaged.code).toBe(exitCodes.verificationFailed)
    expect(damaged.out).toMatch(/1 of 1 file damaged/)

    const removed = await llmesh('rm', 'acme/tiny@1.0.0', '--store', store)
    expect(removed.out).toMatch(/removed acme\/tiny@1\.0\.0, freed 167\.0 KiB/)
    expect((await llmesh('ls', '--store', store)).out).toMatch(/no models/)
  })

  it('precaches the required models of a catalog and names each failure', async () => {
    const model = await writeTinyGguf(at('precache.gguf'), { type: 'q8_0', seed: 5 })
    await using mirror = await startMirror({ files: { '/good/precache.gguf': model.path } })
    for (const [name, base] of [
      ['good', `${mirror.url}/good/`],
      ['broken', `${mirror.url}/broken/`],
    ] as const) {
      const created = await llmesh(
        'manifest',
        'create',
        model.path,
        '--id',
        `acme/${name}`,
        '--model-version',
        '1.0.0',
        '--mirror',
        base,
        '--allow-insecure-mirrors',
        '--out',
        at(`${name}.json`),
      )
      expect(created.code).toBe(0)
    }
    const catalog = {
      schemaVersion: 1,
      models: [
        JSON.parse(await readFile(at('good.json'), 'utf8')),
        {
          ...JSON.parse(await readFile(at('broken.json'), 'utf8')),
          artifacts: [
            {
              ...JSON.parse(await readFile(at('broken.json'), 'utf8')).artifacts[0],
              sha256: '0'.repeat(64),
            },
          ],
        },
      ],
      required: ['acme/good', 'acme/broken'],
    }
    await writeFile(at('catalog.json'), JSON.stringify(catalog))
    const store = at('precache-store')
    const unsigned = await llmesh(
      'precache',
      at('catalog.json'),
      '--store',
      store,
      '--allow-insecure-mirrors',
    )
    expect(unsigned.code).toBe(exitCodes.failure)
    expect(unsigned.err).toMatch(/has no signatures \(trust its signing key, or allow unsigned/)

    const result = await llmesh(
      'precache',
      at('catalog.json'),
      '--store',
      store,
      '--allow-insecure-mirrors',
      '--allow-unsigned',
    )
    expect(result.code).toBe(exitCodes.failure)
    expect(result.err).toMatch(/1 of 2 required models failed/)
    expect(result.err).toMatch(/acme\/broken@1\.0\.0/)
    expect((await llmesh('ls', '--store', store)).out).toMatch(
      /acme\/good@1\.0\.0\s+experimental\s+verified/,
    )
  })
})
