/** Shared setup for the downloader's tests: a model file, its manifest, mirrors and a store. */
import { createHash } from 'node:crypto'
import { readdir, readFile, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { createManifest, type Manifest, type PieceIndex } from '@llmesh/manifest'
import {
  createTempDir,
  type Mirror,
  type MirrorOptions,
  startMirror,
  type TempDir,
} from '@llmesh/testkit'
import { expect } from 'vitest'
import { createDownloader, type Downloader, type DownloaderOptions } from './downloader.js'
import { ModelStore } from './store.js'

export const PIECE_SIZE = 64 * 1024

/** Deterministic bytes that do not repeat within a piece (so a misplaced piece fails its hash). */
export function modelBytes(size: number, seed = 1): Uint8Array {
  const bytes = new Uint8Array(size)
  let block = createHash('sha256').update(`seed-${seed}`).digest()
  for (let offset = 0; offset < size; offset += block.byteLength) {
    bytes.set(block.subarray(0, Math.min(block.byteLength, size - offset)), offset)
    block = createHash('sha256').update(block).digest()
  }
  return bytes
}

export interface Fixture {
  directory: TempDir
  data: Uint8Array
  file: string
  sha256: string
  manifest: Manifest
  pieceIndex: PieceIndex
  mirrors: Mirror[]
  store: ModelStore
  downloader: Downloader
  /** The manifest's JSON file, with `pieces/<sha256>.json` beside it. */
  manifestPath: string
  close(): Promise<void>
}

export async function createFixture({
  size = 2 * 1024 * 1024,
  mirrors: mirrorCount = 2,
  mirror: mirrorOptions = {},
  downloader: downloaderOptions = {},
  mirrorUrls,
  seed = 1,
  pieceSize = PIECE_SIZE,
}: {
  size?: number
  pieceSize?: number
  mirrors?: number
  mirror?: Partial<MirrorOptions>
  downloader?: Partial<DownloaderOptions>
  /** Mirror URLs for the manifest instead of the started mirrors' (for redirect tests). */
  mirrorUrls?: (mirrors: Mirror[]) => string[]
  seed?: number
} = {}): Promise<Fixture> {
  const directory = await createTempDir()
  const data = modelBytes(size, seed)
  const file = join(directory.path, 'model.gguf')
  await writeFile(file, data)
  const mirrors: Mirror[] = []
  for (let index = 0; index < mirrorCount; index++)
    mirrors.push(await startMirror({ files: { '/model.gguf': file }, ...mirrorOptions }))
  const { manifest, pieceIndexes } = await createManifest({
    files: [
      {
        file,
        mirrors: mirrorUrls?.(mirrors) ?? mirrors.map((mirror) => mirror.urlOf('/model.gguf')),
      },
    ],
    manifest: { id: 'acme/tiny', version: '1.0.0', license: { id: 'apache-2.0' } },
    pieceSize,
    allowInsecureMirrors: true,
  })
  const manifestPath = join(directory.path, 'published', 'tiny.manifest.json')
  await import('node:fs/promises').then(({ mkdir }) =>
    mkdir(join(directory.path, 'published', 'pieces'), { recursive: true }),
  )
  await writeFile(manifestPath, JSON.stringify(manifest))
  await writeFile(
    join(directory.path, 'published', 'pieces', `${manifest.artifacts[0]!.sha256}.json`),
    JSON.stringify(pieceIndexes[0]!.toJSON()),
  )
  const store = await ModelStore.open({ root: join(directory.path, 'store') })
  const downloader = createDownloader({ store, allowInsecureMirrors: true, ...downloaderOptions })
  return {
    directory,
    data,
    file,
    sha256: manifest.artifacts[0]!.sha256,
    manifest,
    pieceIndex: pieceIndexes[0]!,
    mirrors,
    store,
    downloader,
    manifestPath,
    async close() {
      await downloader.close()
      store.close()
      for (const mirror of mirrors) await mirror.close()
      await directory[Symbol.asyncDispose]()
    },
  }
}

/** The store holds exactly this blob, complete, verified and read-only: the one thing a user relies on. */
export async function expectVerifiedBlob(
  store: ModelStore,
  sha256: string,
  data: Uint8Array,
): Promise<void> {
  expect(await readdir(join(store.root, 'blobs', 'sha256'))).toEqual([sha256])
  const bytes = await readFile(store.blobPath(sha256))
  expect(bytes.byteLength).toBe(data.byteLength)
  expect(createHash('sha256').update(bytes).digest('hex')).toBe(sha256)
  expect((await stat(store.blobPath(sha256))).mode & 0o222).toBe(0)
}

/** Nothing under `blobs/`: a failed download never leaves a file there. */
export async function expectNoBlob(store: ModelStore): Promise<void> {
  expect(await readdir(join(store.root, 'blobs', 'sha256'))).toEqual([])
}
