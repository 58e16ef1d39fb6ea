import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import {
  createManifest,
  generateSigningKey,
  importTrustedKey,
  type Manifest,
  signCatalog,
} from '@llmesh/manifest'
import { createTempDir, startMirror, startServer, type TempDir } from '@llmesh/testkit'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { fetchCatalog, precache, requiredModels } from './catalog.js'
import { createDownloader } from './downloader.js'
import { DownloadError } from './errors.js'
import { ModelStore } from './store.js'
import { modelBytes } from './test-support.js'

let directory: TempDir
beforeEach(async () => {
  directory = await createTempDir()
})
afterEach(async () => {
  await directory[Symbol.asyncDispose]()
})

const key = generateSigningKey()
const trusted = [importTrustedKey(key.publicKey, 'acme')]

async function manifestFor(
  id: string,
  version: string,
  seed: number,
  mirrors: string[],
): Promise<Manifest> {
  const file = join(directory.path, `${seed}.gguf`)
  await writeFile(file, modelBytes(100_000, seed))
  const { manifest } = await createManifest({
    files: [{ file, path: 'model.gguf', mirrors }],
    manifest: { id, version, license: { id: 'mit' } },
    allowInsecureMirrors: true,
  })
  return manifest
}

function catalogOf(models: Manifest[], required: string[]) {
  return { schemaVersion: 1 as const, models, required, endpoints: [] }
}

describe('fetchCatalog', () => {
  it('falls back to the next endpoint and checks the signature', async () => {
    const signed = signCatalog(
      catalogOf([await manifestFor('acme/tiny', '1.0.0', 1, [])], ['acme/tiny']),
      key,
    )
    await using server = await startServer((request, response) => {
      if (request.url === '/catalog.json') response.end(JSON.stringify(signed))
      else response.writeHead(503).end()
    })
    const fetched = await fetchCatalog([`${server.url}/down.json`, `${server.url}/catalog.json`], {
      trustedKeys: trusted,
      allowInsecureMirrors: true,
    })
    expect(fetched.endpoint).toBe(`${server.url}/catalog.json`)
    expect(fetched.keyId).toBe(trusted[0]!.keyId)
    expect(requiredModels(fetched.catalog).map((model) => model.id)).toEqual(['acme/tiny'])
  })

  it('refuses an unsigned catalog unless told otherwise, and a tampered one always', async () => {
    const unsigned = catalogOf([await manifestFor('acme/tiny', '1.0.0', 1, [])], [])
    const path = join(directory.path, 'catalog.json')
    await writeFile(path, JSON.stringify(unsigned))
    const refused = await fetchCatalog([path], { trustedKeys: trusted }).catch(
      (error: unknown) => error,
    )
    expect(DownloadError.isInstance(refused) && refused.code).toBe('LLMESH_CATALOG_UNAVAILABLE')
    expect((refused as DownloadError).failures[0]?.code).toBe('LLMESH_UNSIGNED')
    expect(
      (await fetchCatalog([path], { trustedKeys: trusted, allowUnsigned: true })).keyId,
    ).toBeUndefined()

    const tampered = signCatalog(unsigned, key)
    tampered.name = 'rewritten by a mirror'
    await writeFile(path, JSON.stringify(tampered))
    const bad = await fetchCatalog([path], { trustedKeys: trusted, allowUnsigned: true }).catch(
      (error: unknown) => error,
    )
    expect((bad as DownloadError).failures[0]?.code).toBe('LLMESH_BAD_SIGNATURE')
  })
})

describe('precache', () => {
  it('pulls every required model and names each one that failed', async () => {
    await using mirror = await startMirror({ files: { '/good.gguf': modelBytes(100_000, 1) } })
    const good = await manifestFor('acme/good', '1.0.0', 1, [mirror.urlOf('/good.gguf')])
    const missing = await manifestFor('acme/missing', '1.0.0', 2, [mirror.urlOf('/missing.gguf')])
    const optional = await manifestFor('acme/optional', '1.0.0', 3, [mirror.urlOf('/missing.gguf')])
    const catalog = catalogOf([good, missing, optional], ['acme/good', 'acme/missing@1.0.0'])
    const store = await ModelStore.open({ root: join(directory.path, 'store') })
    const downloader = createDownloader({ store, allowInsecureMirrors: true })
    try {
      const { parseCatalog } = await import('@llmesh/manifest')
      const error = await precache(
        downloader,
        parseCatalog(catalog, { allowInsecureMirrors: true }),
      ).catch((caught: unknown) => caught)
      expect(DownloadError.isInstance(error) && error.code).toBe('LLMESH_PRECACHE_FAILED')
      expect((error as DownloadError).failures.map((failure) => failure.source)).toEqual([
        'acme/missing@1.0.0',
      ])
      expect((error as Error).message).toMatch(/1 of 2 required models failed/)
      expect(store.list().map((model) => [model.id, model.status])).toEqual([
        ['acme/good', 'verified'],
        ['acme/missing', 'failed'],
      ])
    } finally {
      await downloader.close()
      store.close()
    }
  })
})
