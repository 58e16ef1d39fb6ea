import { createHash, randomBytes } from 'node:crypto'
import { readFile, writeFile } from 'node:fs/promises'
import { basename, join } from 'node:path'
import { type ByteRangeRequest, ByteSourceError } from '@llmesh/core'
import { createDownloader, FileSource, ModelStore } from '@llmesh/downloader'
import { createManifest, type Manifest, type PieceIndex } from '@llmesh/manifest'
import { createTempDir, startMirror, type TempDir, writeTinyGguf } from '@llmesh/testkit'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createPeerNode } from './peer-node.js'
import { PeerByteSource } from './peer-source.js'

let directory: TempDir
beforeAll(async () => {
  directory = await createTempDir('llmesh-p2p-pull-')
})
afterAll(() => directory.remove())

/** A file of `size` random bytes in the test's folder. */
async function randomFile(name: string, size: number): Promise<string> {
  const file = join(directory.path, name)
  await writeFile(file, randomBytes(size))
  return file
}

/** `file` on a mirror that sends each connection `bytesPerSecondPerConnection`, and its manifest. */
async function mirrored(file: string, id: string, bytesPerSecondPerConnection: number) {
  const path = basename(file)
  const mirror = await startMirror({ files: { [`/${path}`]: file }, bytesPerSecondPerConnection })
  const { manifest, pieceIndexes } = await createManifest({
    files: [{ file, path, mirrors: [`${mirror.url}/${path}`] }],
    manifest: { id: `acme/${id}`, version: '1.0.0', license: { id: 'mit' } },
    pieceSize: 32 * 1024,
    allowInsecureMirrors: true,
  })
  return { mirror, manifest, pieceIndexes }
}

/** A store that holds the manifest's file already (pulled from the file itself), as a seed's does. */
async function storeHolding(
  name: string,
  { manifest, pieceIndexes }: { manifest: Manifest; pieceIndexes: PieceIndex[] },
  file: string,
): Promise<ModelStore> {
  const store = await ModelStore.open({ root: join(directory.path, name) })
  const downloader = createDownloader({ store, allowInsecureMirrors: true })
  await downloader.pull(manifest, { pieceIndexes, sources: [new FileSource(file)] })
  await downloader.close()
  return store
}

describe('peers in a pull', () => {
  it('seeds every blob of its store, and one pull mixes an HTTP mirror and a peer', async () => {
    const model = await writeTinyGguf(join(directory.path, 'model.gguf'), {
      type: 'f16',
      seed: 5,
      embeddingLength: 256,
      vocabularySize: 4096,
    })
    const published = await mirrored(model.path, 'shared', 256 * 1024)
    await using mirror = published.mirror
    const { manifest, pieceIndexes } = published

    // The seed got the model earlier (from a file here) and now shares its store.
    const seedStore = await storeHolding('seed-store', published, model.path)
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
  it('keeps asking a seed at its cap on uploads, for no more pieces at once than it takes', async () => {
    const size = 4 * 1024 * 1024
    const file = await randomFile('busy-seed.bin', size)
    // A mirror far slower than the seed (8 connections of 64 KiB/s: 8 s for the file alone).
    const published = await mirrored(file, 'busy-seed', 64 * 1024)
    await using _mirror = published.mirror
    const { manifest, pieceIndexes } = published
    const seedStore = await storeHolding('busy-seed-store', published, file)
    // Two uploads at once, where the pull starts with 8 requests per source: 6 "busy" answers.
    const seed = await createPeerNode({ store: seedStore, limits: { concurrentUploads: 2 } })
    const store = await ModelStore.open({ root: join(directory.path, 'busy-leecher-store') })
    const leecher = await createPeerNode({ store })
    const peers = new BusyCountingSource(leecher, [seed.addresses])
    const downloader = createDownloader({
      store,
      allowInsecureMirrors: true,
      initialConnectionsPerSource: 8,
      extraSources: () => [peers],
    })
    const dropped: string[] = []
    try {
      const result = await downloader.pull(manifest, {
        pieceIndexes,
        onProgress: (event) => {
          if (event.type === 'download:source-dropped') dropped.push(event.detail.source)
        },
      })
      expect(result.files[0]!.sha256).toBe(manifest.artifacts[0]!.sha256)
      expect(peers.busyAnswers).toBeGreaterThan(0)
      // "Busy" is no failure: the seed stays in use and serves most of the file. Counted as
      // failures, the answers paused it for up to 6.4 s, and it sent 2 pieces of 128.
      expect(dropped).toEqual([])
      expect(seed.uploaded.get(leecher.peerId.toString()) ?? 0).toBeGreaterThan(size / 2)
    } finally {
      await downloader.close()
      await leecher.stop()
      await seed.stop()
      store.close()
      seedStore.close()
    }
  })
  it('serves the pieces of a pull still running from a mirror, to a node that pulls from it at once', async () => {
    const file = await randomFile('shared-while-pulled.bin', 1024 * 1024)
    // Two connections of 128 KiB/s: the first node needs about 4 s for the file.
    await using mirror = await startMirror({
      files: { '/model.bin': file },
      bytesPerSecondPerConnection: 128 * 1024,
    })
    const pieceSize = 32 * 1024
    const described = {
      manifest: { id: 'acme/shared-early', version: '1.0.0', license: { id: 'mit' } },
      pieceSize,
      allowInsecureMirrors: true,
    }
    // The first node pulls from the mirror; the second knows no mirror, only the first node.
    const { manifest, pieceIndexes } = await createManifest({
      files: [{ file, path: 'model.bin', mirrors: [`${mirror.url}/model.bin`] }],
      ...described,
    })
    const { manifest: peersOnly } = await createManifest({
      files: [{ file, path: 'model.bin' }],
      ...described,
    })
    const sha256 = manifest.artifacts[0]!.sha256

    const firstStore = await ModelStore.open({ root: join(directory.path, 'first-store') })
    const first = await createPeerNode({ store: firstStore })
    const firstDownloader = createDownloader({
      store: firstStore,
      allowInsecureMirrors: true,
      connections: 2,
      maxConnectionsPerSource: 2,
      sharePartial: (blob) => first.sharePartial(blob),
    })
    const secondStore = await ModelStore.open({ root: join(directory.path, 'second-store') })
    const second = await createPeerNode({ store: secondStore })
    const secondDownloader = createDownloader({
      store: secondStore,
      extraSources: () => [new PeerByteSource(second, [first.addresses])],
    })
    try {
      let firstDoneAt = Number.POSITIVE_INFINITY
      let firstVerified = 0
      let someVerified!: () => void
      const fourVerified = new Promise<void>((resolve) => {
        someVerified = resolve
      })
      const firstPull = firstDownloader
        .pull(manifest, {
          pieceIndexes,
          onProgress: (event) => {
            if (event.type === 'download:piece-verified' && ++firstVerified === 4) someVerified()
          },
        })
        .then((result) => {
          firstDoneAt = performance.now()
          return result
        })
      await fourVerified
      // The second node starts while the first holds a few pieces.
      const secondPieceTimes: number[] = []
      const secondResult = await secondDownloader.pull(peersOnly, {
        pieceIndexes,
        onProgress: (event) => {
          if (event.type === 'download:piece-verified') secondPieceTimes.push(performance.now())
        },
      })
      await firstPull
      expect(secondResult.files[0]!.sha256).toBe(sha256)
      expect(
        createHash('sha256')
          .update(await readFile(secondStore.blobPath(sha256)))
          .digest('hex'),
      ).toBe(sha256)
      // Most of it came while the first node was still pulling, as it verified pieces.
      const early = secondPieceTimes.filter((time) => time < firstDoneAt).length
      expect(early).toBeGreaterThan(1024 / 32 / 2)
      // Every byte came from the first node (a hedged piece may have come twice).
      expect(first.uploaded.get(second.peerId.toString())).toBeGreaterThanOrEqual(1024 * 1024)
    } finally {
      await secondDownloader.close()
      await firstDownloader.close()
      await second.stop()
      await first.stop()
      secondStore.close()
      firstStore.close()
    }
  })
  it('splits the work of one mirror between two nodes that pull the same file at once', async () => {
    const size = 2 * 1024 * 1024
    const file = await randomFile('pulled-together.bin', size)
    // Two connections of 256 KiB/s per node (and two more for the peer): alone, a node needs
    // about 4 s for the file.
    const published = await mirrored(file, 'pulled-together', 256 * 1024)
    await using mirror = published.mirror
    const { manifest, pieceIndexes } = published
    const sha256 = manifest.artifacts[0]!.sha256
    const nodes = await Promise.all(
      ['left', 'right'].map(async (name) => {
        const store = await ModelStore.open({ root: join(directory.path, `${name}-together`) })
        return { store, peer: await createPeerNode({ store }) }
      }),
    )
    const downloaders = nodes.map(({ store, peer }, index) =>
      createDownloader({
        store,
        allowInsecureMirrors: true,
        connections: 4,
        maxConnectionsPerSource: 2,
        // Each node asks again soon for a list the other does not serve yet (it starts at once):
        // on a file this small, the default second would be a third of the pull.
        extraSources: () => [
          new PeerByteSource(peer, [nodes[1 - index]!.peer.addresses], { haveRefreshMs: 100 }),
        ],
        sharePartial: (blob) => peer.sharePartial(blob),
      }),
    )
    try {
      const results = await Promise.all(
        downloaders.map((downloader) => downloader.pull(manifest, { pieceIndexes })),
      )
      for (const [index, result] of results.entries()) {
        expect(result.files[0]!.sha256).toBe(sha256)
        const bytes = await readFile(nodes[index]!.store.blobPath(sha256))
        expect(createHash('sha256').update(bytes).digest('hex')).toBe(sha256)
      }
      // Alone, each would take the whole file from the mirror; together, a piece comes from the
      // mirror about once (twice where both drew it while neither held it: 1.14 to 1.23 times
      // the file in ten runs, against 2 when both go in order), and each node gives the other a
      // share.
      expect(mirror.bodyBytesSent).toBeLessThan(1.5 * size)
      for (const [index, { peer }] of nodes.entries())
        expect(peer.uploaded.get(nodes[1 - index]!.peer.peerId.toString()) ?? 0).toBeGreaterThan(
          size / 4,
        )
    } finally {
      for (const downloader of downloaders) await downloader.close()
      for (const { store, peer } of nodes) {
        await peer.stop()
        store.close()
      }
    }
  })
})

/** The peers of a pull, counting their "busy" answers (what the downloader sees of them). */
class BusyCountingSource extends PeerByteSource {
  busyAnswers = 0

  override async *read(request: ByteRangeRequest): AsyncIterable<Uint8Array> {
    try {
      yield* super.read(request)
    } catch (error) {
      if (ByteSourceError.isInstance(error) && error.failure === 'busy') this.busyAnswers++
      throw error
    }
  }
}
