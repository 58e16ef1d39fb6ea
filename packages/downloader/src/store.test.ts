import { chmod, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { createManifest } from '@llmesh/manifest'
import { createTempDir, type TempDir } from '@llmesh/testkit'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { createDownloader, type Downloader } from './downloader.js'
import { StoreError } from './errors.js'
import { FileSource } from './sources/file-source.js'
import { ModelStore } from './store.js'
import { modelBytes } from './test-support.js'

let directory: TempDir
let store: ModelStore
let downloader: Downloader

beforeEach(async () => {
  directory = await createTempDir()
  store = await ModelStore.open({ root: join(directory.path, 'store') })
  downloader = createDownloader({ store })
})
afterEach(async () => {
  await downloader.close()
  store.close()
  await directory[Symbol.asyncDispose]()
})

/** Pulls a model whose one file holds `seed`'s bytes, from a local file source. */
async function pullModel(id: string, version: string, seed: number, size = 200_000) {
  const file = join(directory.path, `${id.replace('/', '_')}-${version}-${seed}.gguf`)
  await writeFile(file, modelBytes(size, seed))
  const { manifest, pieceIndexes } = await createManifest({
    files: [{ file, path: 'model.gguf' }],
    manifest: { id, version, license: { id: 'mit' } },
    pieceSize: 16 * 1024,
  })
  return downloader.pull(manifest, { pieceIndexes, sources: [new FileSource(file)] })
}

describe('ModelStore', () => {
  it('lists models and counts a blob shared by two models once', async () => {
    await pullModel('acme/tiny', '1.0.0', 1)
    await pullModel('other/copy', '1.0.0', 1)
    await pullModel('acme/tiny', '2.0.0', 2)
    expect(store.list().map((model) => `${model.id}@${model.version}`)).toEqual([
      'acme/tiny@1.0.0',
      'acme/tiny@2.0.0',
      'other/copy@1.0.0',
    ])
    const usage = await store.usage()
    expect(usage.blobBytes).toBe(400_000)
    expect(usage.models.map((model) => model.bytes)).toEqual([200_000, 200_000, 200_000])
    expect(await readFile(store.modelPath('other/copy', '1.0.0', 'model.gguf'))).toEqual(
      Buffer.from(modelBytes(200_000, 1)),
    )
  })

  it('removes a model but keeps a blob another model still uses', async () => {
    const first = await pullModel('acme/tiny', '1.0.0', 1)
    await pullModel('other/copy', '1.0.0', 1)
    const { freedBytes } = await store.remove('acme/tiny@1.0.0')
    expect(freedBytes).toBe(0)
    expect(await store.hasBlob(first.files[0]!.sha256)).toBe(true)
    expect((await store.remove('other/copy')).freedBytes).toBe(200_000)
    expect(await store.hasBlob(first.files[0]!.sha256)).toBe(false)
    expect(store.list()).toEqual([])
  })

  it('refuses to remove a pinned or in-use model unless forced', async () => {
    await pullModel('acme/tiny', '1.0.0', 1)
    store.pin('acme/tiny@1.0.0')
    await expect(store.remove('acme/tiny@1.0.0')).rejects.toMatchObject({
      code: 'LLMESH_MODEL_PINNED',
    })
    store.pin('acme/tiny@1.0.0', false)
    const lease = await store.acquireUse('acme/tiny@1.0.0')
    await expect(store.remove('acme/tiny@1.0.0')).rejects.toMatchObject({
      code: 'LLMESH_MODEL_IN_USE',
    })
    await lease.release()
    await store.remove('acme/tiny@1.0.0')
    const missing = await store.remove('acme/tiny@1.0.0').catch((error: unknown) => error)
    expect(StoreError.isInstance(missing) && missing.code).toBe('LLMESH_MODEL_NOT_FOUND')
  })

  it('prunes old versions, least recently used first, never a pinned or in-use one', async () => {
    await pullModel('acme/tiny', '1.0.0', 1)
    await pullModel('acme/tiny', '1.1.0', 2)
    await pullModel('acme/tiny', '2.0.0', 3)
    await pullModel('acme/other', '1.0.0', 4)
    await pullModel('acme/other', '1.5.0', 5)
    store.pin('acme/tiny@1.0.0')
    const lease = await store.acquireUse('acme/other@1.0.0')
    const dryRun = await store.prune({ keepVersions: 1, dryRun: true })
    expect(dryRun.removed.map((model) => `${model.id}@${model.version}`)).toEqual([
      'acme/tiny@1.1.0',
    ])
    expect(store.list()).toHaveLength(5)
    const pruned = await store.prune({ keepVersions: 1 })
    expect(pruned.removed.map((model) => `${model.id}@${model.version}`)).toEqual([
      'acme/tiny@1.1.0',
    ])
    expect(pruned.freedBytes).toBe(200_000)
    await lease.release()
    const again = await store.prune({ keepVersions: 1 })
    expect(again.removed.map((model) => `${model.id}@${model.version}`)).toEqual([
      'acme/other@1.0.0',
    ])
    expect(store.list().map((model) => `${model.id}@${model.version}`)).toEqual([
      'acme/other@1.5.0',
      'acme/tiny@1.0.0',
      'acme/tiny@2.0.0',
    ])
  })

  it('prunes the least recently used first and stops once the store fits maxBytes', async () => {
    await pullModel('acme/tiny', '1.0.0', 1)
    await pullModel('acme/tiny', '1.1.0', 2)
    await pullModel('acme/tiny', '2.0.0', 3)
    // 1.0.0 was used recently, so 1.1.0 goes first, and one removal is enough.
    await (await store.acquireUse('acme/tiny@1.0.0')).release()
    const pruned = await store.prune({ keepVersions: 1, maxBytes: 400_000 })
    expect(pruned.removed.map((model) => model.version)).toEqual(['1.1.0'])
  })

  it('finds a damaged blob, and with remove marks its model failed so a pull fetches it again', async () => {
    const pulled = await pullModel('acme/tiny', '1.0.0', 1)
    const blob = pulled.files[0]!.blobPath
    await chmod(blob, 0o644)
    const bytes = await readFile(blob)
    bytes[1000]! ^= 1
    await writeFile(blob, bytes)
    const report = await store.verify()
    expect(report.checked).toBe(1)
    expect(report.damaged).toEqual([
      expect.objectContaining({ sha256: pulled.files[0]!.sha256, models: ['acme/tiny@1.0.0'] }),
    ])
    await store.verify({ remove: true })
    expect(store.list()[0]).toMatchObject({ status: 'failed' })
    const again = await pullModel('acme/tiny', '1.0.0', 1)
    expect(again.files[0]?.cached).toBe(false)
    expect((await store.verify()).damaged).toEqual([])
    expect(store.list()[0]).toMatchObject({ status: 'verified' })
  })

  it('keeps its index across reopening', async () => {
    await pullModel('acme/tiny', '1.0.0', 1)
    store.close()
    store = await ModelStore.open({ root: join(directory.path, 'store') })
    await downloader.close()
    downloader = createDownloader({ store })
    expect(store.list()).toMatchObject([{ id: 'acme/tiny', version: '1.0.0', status: 'verified' }])
    expect((await downloader.pull('acme/tiny')).files[0]?.cached).toBe(true)
  })
})
