import { join } from 'node:path'
import { createDownloader, FileSource, ModelStore } from '@llmesh/downloader'
import { createManifest } from '@llmesh/manifest'
import { createTempDir, startMirror, type TempDir, writeTinyGguf } from '@llmesh/testkit'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createPeerNode } from './peer-node.js'
import { PeerByteSource } from './peer-source.js'

let directory: TempDir
beforeAll(async () => {
  directory = await createTempDir('llmesh-p2p-pull-')
})
afterAll(() => directory.remove())

describe('peers in a pull', () => {
  it('seeds every blob of its store, and one pull mixes an HTTP mirror and a peer', async () => {
    const model = await writeTinyGguf(join(directory.path, 'model.gguf'), {
      type: 'f16',
      seed: 5,
      embeddingLength: 256,
      vocabularySize: 4096,
    })
    await using mirror = await startMirror({
      files: { '/model.gguf': model.path },
      bytesPerSecondPerConnection: 256 * 1024,
    })
    const { manifest, pieceIndexes } = await createManifest({
      files: [{ file: model.path, path: 'model.gguf', mirrors: [`${mirror.url}/model.gguf`] }],
      manifest: { id: 'acme/shared', version: '1.0.0', license: { id: 'mit' } },
      pieceSize: 32 * 1024,
      allowInsecureMirrors: true,
    })

    // The seed got the model earlier (from a file here) and now shares its store.
    const seedStore = await ModelStore.open({ root: join(directory.path, 'seed-store') })
    const seedDownloader = createDownloader({ store: seedStore, allowInsecureMirrors: true })
    await seedDownloader.pull(manifest, { pieceIndexes, sources: [new FileSource(model.path)] })
    await seedDownloader.close()
    const seed = await createPeerNode({ store: seedStore })

    const store = await ModelStore.open({ root: join(directory.path, 'leecher-store') })
    const leecher = await createPeerNode({ store })
    const downloader = createDownloader({
      store,
      allowInsecureMirrors: true,
      extraSources: () => [new PeerByteSource(leecher, [seed.addresses])],
    })
    try {
      const result = await downloader.pull(manifest, { pieceIndexes })
      expect(result.files[0]!.sha256).toBe(manifest.artifacts[0]!.sha256)
      expect(mirror.bodyBytesSent).toBeGreaterThan(0)
      expect(seed.uploaded.get(leecher.peerId.toString()) ?? 0).toBeGreaterThan(0)
      // The leecher now seeds it too, from its store.
      const third = await createPeerNode()
      try {
        expect(
          (await third.have(leecher.addresses, manifest.artifacts[0]!.sha256)).have.complete,
        ).toBe(true)
      } finally {
        await third.stop()
      }
    } finally {
      await downloader.close()
      await leecher.stop()
      await seed.stop()
      store.close()
      seedStore.close()
    }
  })
})
