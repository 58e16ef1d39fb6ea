import { spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { copyFile, readFile, stat, statfs, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { InvalidArgumentError } from '@llmesh/core'
import { DownloadError } from '@llmesh/downloader'
import { createManifest, PieceIndex } from '@llmesh/manifest'
import { createTempDir, openDescriptorsOf, type TempDir } from '@llmesh/testkit'
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest'
import { Bitfield } from './bitfield.js'
import { type ServedBlob, StoreBlobProvider } from './blob-provider.js'
import { PeerError } from './errors.js'
import {
  createPeerNode,
  createPrivateNetworkKey,
  type PeerNode,
  type PeerNodeOptions,
  peerIdOf,
} from './peer-node.js'
import { PeerByteSource } from './peer-source.js'
import { encodeJson, MAX_REQUEST_BYTES, messageStream, PIECE_PROTOCOL } from './protocol.js'
import { downloadFromPeers, type SwarmProgressEvent } from './swarm-download.js'

const distEntry = new URL('../dist/index.js', import.meta.url)
const PIECE_SIZE = 64 * 1024
const SIZE = 3 * 1024 * 1024 + 12_345

let directory: TempDir
let blobPath: string
let blob: Uint8Array
let pieceIndex: PieceIndex
const nodes: PeerNode[] = []

beforeAll(async () => {
  directory = await createTempDir('llmesh-p2p-')
  blob = new Uint8Array(SIZE)
  for (let offset = 0; offset < SIZE; offset += 32)
    blob.set(
      createHash('sha256')
        .update(String(offset))
        .digest()
        .subarray(0, SIZE - offset),
      offset,
    )
  blobPath = join(directory.path, 'blob.bin')
  await writeFile(blobPath, blob)
  const created = await createManifest({
    files: [{ file: blobPath, path: 'model.gguf' }],
    manifest: { id: 'acme/p2p', version: '1.0.0', license: { id: 'mit' } },
    pieceSize: PIECE_SIZE,
  })
  pieceIndex = created.pieceIndexes[0]!
})
afterEach(async () => {
  for (const node of nodes.splice(0)) {
    await node.stop()
    // The tests' nodes are given their providers, which stay open until closed.
    node.provider.close()
  }
})
afterAll(() => directory.remove())

const pieces = Math.ceil(SIZE / PIECE_SIZE)

async function node(options: PeerNodeOptions = {}): Promise<PeerNode> {
  const started = await createPeerNode({ provider: new StoreBlobProvider(), ...options })
  nodes.push(started)
  return started
}

/** A node that serves the whole blob (or the pieces in `have`), read through `read`. */
async function seed(
  options: PeerNodeOptions = {},
  serve: { have?: Bitfield; path?: string } = {},
): Promise<PeerNode> {
  const started = await node(options)
  started.provider.serve(pieceIndex.sha256, {
    size: SIZE,
    pieceSize: PIECE_SIZE,
    have: serve.have ?? Bitfield.full(pieces),
    path: serve.path ?? blobPath,
  })
  return started
}

/** Counts the requests for pieces `leecher` has in flight: the most at once (until set back to 0). */
function countRequests(leecher: PeerNode): { mostAtOnce: number } {
  const counted = { mostAtOnce: 0 }
  let inFlight = 0
  const piece = leecher.piece.bind(leecher)
  leecher.piece = async (...request) => {
    counted.mostAtOnce = Math.max(counted.mostAtOnce, ++inFlight)
    try {
      return await piece(...request)
    } finally {
      inFlight--
    }
  }
  return counted
}

/** A store provider that records which piece each read of a served blob was for, in order. */
class RecordingProvider extends StoreBlobProvider {
  readonly piecesRead: number[] = []
  private readonly recorded = new WeakSet<ServedBlob>()

  override async lookup(digest: string): Promise<ServedBlob | undefined> {
    const served = await super.lookup(digest)
    if (served !== undefined && !this.recorded.has(served)) {
      this.recorded.add(served)
      const read = served.read
      served.read = (start, end) => {
        this.piecesRead.push(Math.floor(start / served.pieceSize))
        return read(start, end)
      }
    }
    return served
  }
}

/** A store provider whose every read of a served blob first waits for `beforeRead()`: a slow disk. */
class SlowDisk extends StoreBlobProvider {
  constructor(private readonly beforeRead: () => Promise<unknown>) {
    super()
  }

  override async lookup(digest: string): Promise<ServedBlob | undefined> {
    const served = await super.lookup(digest)
    if (served === undefined) return undefined
    return {
      ...served,
      read: async (start: number, end: number) => {
        await this.beforeRead()
        return served.read(start, end)
      },
    }
  }
}

function at(name: string): string {
  return join(directory.path, `${name}-${Math.random().toString(36).slice(2)}`)
}

describe('swarm download over real libp2p nodes', () => {
  it('fetches one file from three peers at once, every piece verified', async () => {
    const seeds = [await seed(), await seed(), await seed()]
    const leecher = await node()
    const path = at('three')
    const result = await downloadFromPeers({
      node: leecher,
      peers: seeds.map((peer) => peer.addresses),
      pieceIndex,
      path,
      maxInFlightPerPeer: 4,
    })
    expect(Buffer.from(await readFile(path)).equals(Buffer.from(blob))).toBe(true)
    expect(Object.keys(result.piecesByPeer)).toHaveLength(3)
    expect(Object.keys(result.piecesByPeer).sort()).toEqual(
      seeds.map((peer) => peer.peerId.toString()).sort(),
    )
    expect(Object.values(result.piecesByPeer).reduce((sum, count) => sum + count, 0)).toBe(pieces)
    expect(result.banned).toEqual([])
  })

  it('moves pieces of 16 MiB, the default piece size of a 40 GB model, asking for the next while the last is hashed', async () => {
    // libp2p's default read buffer (4 MiB) refused any piece of 4 MiB or more. A seed reads and
    // sends such a piece in parts of 4 MiB: four here, and one of 1000 bytes for the last piece.
    const large = new Uint8Array(2 * 16 * 1024 * 1024 + 1000)
    for (let offset = 0; offset < large.length; offset += 4096) large[offset] = offset % 251
    const largePath = at('large-source')
    await writeFile(largePath, large)
    const created = await createManifest({
      files: [{ file: largePath, path: 'large.gguf' }],
      manifest: { id: 'acme/large', version: '1.0.0', license: { id: 'mit' } },
      pieceSize: 16 * 1024 * 1024,
    })
    const largeIndex = created.pieceIndexes[0]!
    const source = await node()
    source.provider.serve(largeIndex.sha256, {
      size: large.length,
      pieceSize: largeIndex.pieceSize,
      have: Bitfield.full(3),
      path: largePath,
    })
    const path = at('large')
    const leecher = await node()
    const piece = leecher.piece.bind(leecher)
    const events: string[] = []
    leecher.piece = (peer, digest, index, options) => {
      events.push(`ask ${index}`)
      return piece(peer, digest, index, options)
    }
    const result = await downloadFromPeers({
      node: leecher,
      peers: [source.addresses],
      pieceIndex: largeIndex,
      path,
      maxInFlightPerPeer: 1,
      onProgress: (event) => {
        if (event.type === 'p2p:piece-verified') events.push(`verified ${event.detail.index}`)
      },
    })
    expect(result.piecesByPeer).toEqual({ [source.peerId.toString()]: 3 })
    expect(Buffer.from(await readFile(path)).equals(Buffer.from(large))).toBe(true)
    // One request at a time, yet each after the first goes out before the piece asked for before
    // it is verified: a piece of this size counts out of the window once the writing thread has
    // it, so that the next one arrives while it is hashed and written.
    const asks = events.filter((event) => event.startsWith('ask'))
    expect(asks).toHaveLength(3)
    for (let position = 1; position < asks.length; position++)
      expect(events.indexOf(asks[position]!)).toBeLessThan(
        events.indexOf(`verified ${asks[position - 1]!.slice('ask '.length)}`),
      )
  })

  it('starts the endgame only once every missing piece is requested, not when half are verified', async () => {
    const seeds = [await seed(), await seed()]
    const leecher = await node()
    const endgames: Array<{ verified: number; pieces: number }> = []
    const path = at('endgame')
    await downloadFromPeers({
      node: leecher,
      peers: seeds.map((peer) => peer.addresses),
      pieceIndex,
      path,
      maxInFlightPerPeer: 2,
      onProgress: (event) => {
        if (event.type === 'p2p:endgame') endgames.push(event.detail)
      },
    })
    expect(Buffer.from(await readFile(path)).equals(Buffer.from(blob))).toBe(true)
    // Two requests per peer at most, each counted until its piece is verified: the endgame comes
    // with at most 4 pieces missing. (Verified pieces once counted as "being written", which
    // started it half-way and let a peer be asked again for pieces another was serving.)
    expect(endgames).toHaveLength(1)
    expect(endgames[0]!.verified).toBeGreaterThanOrEqual(pieces - 4)
    expect(endgames[0]!.pieces).toBe(pieces)
  })

  it('brings its window down to a seed\'s cap on uploads when the seed answers "busy", without pausing', async () => {
    // A disk that takes a few milliseconds per read, so that uploads overlap at the seed.
    const slowDisk = new SlowDisk(() => new Promise((resolve) => setTimeout(resolve, 5)))
    const server = await seed({ provider: slowDisk, limits: { concurrentUploads: 2 } })
    const leecher = await node()
    let busy = 0
    const piece = leecher.piece.bind(leecher)
    leecher.piece = async (...request) => {
      try {
        return await piece(...request)
      } catch (error) {
        if (PeerError.isInstance(error) && error.code === 'LLMESH_PEER_BUSY') busy++
        throw error
      }
    }
    const verifiedAt: number[] = []
    const path = at('busy')
    await downloadFromPeers({
      node: leecher,
      peers: [server.addresses],
      pieceIndex,
      path,
      maxInFlightPerPeer: 8,
      onProgress: (event) => {
        if (event.type === 'p2p:piece-verified') verifiedAt.push(performance.now())
      },
    })
    expect(Buffer.from(await readFile(path)).equals(Buffer.from(blob))).toBe(true)
    expect(busy).toBeGreaterThan(0)
    // Counted as failures, a few "busy" answers in a row kept the seed unused for 250 ms times 2
    // to the power of their number (2 s after three); now the next piece follows at once.
    const longestGap = Math.max(...verifiedAt.slice(1).map((at, index) => at - verifiedAt[index]!))
    expect(longestGap).toBeLessThan(1000)
  })

  it('keeps at most the bytes it is allowed in flight per peer', async () => {
    const server = await seed()
    const leecher = await node()
    const requests = countRequests(leecher)
    await downloadFromPeers({
      node: leecher,
      peers: [server.addresses],
      pieceIndex,
      path: at('bounded'),
      maxInFlightBytesPerPeer: 4 * PIECE_SIZE,
    })
    // At most 4 at once (fewer when pieces resolve faster than they are verified: the window
    // frees a request's place only then).
    expect(requests.mostAtOnce).toBeLessThanOrEqual(4)
    expect(requests.mostAtOnce).toBeGreaterThanOrEqual(2)
    // Without the bound the window grows to 16 requests.
    requests.mostAtOnce = 0
    await downloadFromPeers({
      node: leecher,
      peers: [server.addresses],
      pieceIndex,
      path: at('free'),
    })
    expect(requests.mostAtOnce).toBeGreaterThan(4)
  })

  it('keeps at most the bytes it is allowed in flight over all peers, and shares them among the peers', async () => {
    const seeds = [await seed(), await seed(), await seed(), await seed()]
    const leecher = await node()
    const requests = countRequests(leecher)
    const path = at('capped')
    const capped = await downloadFromPeers({
      node: leecher,
      peers: seeds.map((peer) => peer.addresses),
      pieceIndex,
      path,
      maxInFlightBytes: 3 * PIECE_SIZE,
    })
    expect(Buffer.from(await readFile(path)).equals(Buffer.from(blob))).toBe(true)
    expect(requests.mostAtOnce).toBeLessThanOrEqual(3)
    // Three places for four peers: they take turns, so none is left out.
    expect(Object.keys(capped.piecesByPeer).sort()).toEqual(
      seeds.map((peer) => peer.peerId.toString()).sort(),
    )
    // Without the cap (default 256 MiB, far above this file), each peer's window holds 2 or more.
    requests.mostAtOnce = 0
    await downloadFromPeers({
      node: leecher,
      peers: seeds.map((peer) => peer.addresses),
      pieceIndex,
      path: at('uncapped'),
    })
    expect(requests.mostAtOnce).toBeGreaterThan(3)
  })

  it('keeps a share of that cap for a peer whose piece list has not come yet', async () => {
    const seeds = [await seed(), await seed(), await seed(), await seed()]
    const late = seeds[3]!.peerId.toString()
    const leecher = await node()
    // The last peer's piece list comes once 8 pieces are verified, as from a peer slow to reach.
    let release!: () => void
    const released = new Promise<void>((resolve) => {
      release = resolve
    })
    const watchHave = leecher.watchHave.bind(leecher)
    leecher.watchHave = async function* (peer, digest, options) {
      if (peerIdOf(peer) === late) await released
      yield* watchHave(peer, digest, options)
    }
    const requests = countRequests(leecher)
    let mostAtOnceBeforeItCame = 0
    const result = await downloadFromPeers({
      node: leecher,
      peers: seeds.map((peer) => peer.addresses),
      pieceIndex,
      path: at('late'),
      maxInFlightBytes: 4 * PIECE_SIZE,
      onProgress: (event: SwarmProgressEvent) => {
        if (event.type === 'p2p:piece-verified' && event.detail.verified === 8) {
          mostAtOnceBeforeItCame = requests.mostAtOnce
          release()
        }
      },
    })
    // Three of the four places while it was awaited: the first three peers did not take its own.
    expect(mostAtOnceBeforeItCame).toBe(3)
    expect(result.piecesByPeer[late]).toBeGreaterThan(0)
  })

  it('refuses options given as numbers that are not numbers it can use, naming the option', async () => {
    const leecher = await node()
    const path = at('options')
    for (const [name, value, message] of [
      ['maxInFlightBytes', Number.NaN, /options\.maxInFlightBytes: expected a number above 0/],
      ['maxInFlightPerPeer', 0, /options\.maxInFlightPerPeer: Too small/],
      // Past 2^31 - 1 ms a Node timer fires at once: every request would time out.
      ['pieceTimeoutMs', 2 ** 31, /options\.pieceTimeoutMs: Too big/],
    ] as const) {
      const error = await downloadFromPeers({
        node: leecher,
        peers: [],
        pieceIndex,
        path,
        [name]: value,
      }).catch((caught: unknown) => caught)
      expect(InvalidArgumentError.isInstance(error) && error.argument).toBe(`options.${name}`)
      expect((error as Error).message).toMatch(message)
    }
    await expect(stat(`${path}.journal`)).rejects.toMatchObject({ code: 'ENOENT' })
  })

  it('refuses a node limit or a byte source option that is not a number it can use, naming it', async () => {
    const error = await createPeerNode({ limits: { uploadTimeoutMs: 2 ** 31 } }).catch(
      (caught: unknown) => caught,
    )
    expect(InvalidArgumentError.isInstance(error) && error.argument).toBe(
      'options.limits.uploadTimeoutMs',
    )
    const negative = await createPeerNode({ limits: { uploadBytesPerSecond: -1 } }).catch(
      (caught: unknown) => caught,
    )
    expect(InvalidArgumentError.isInstance(negative) && negative.argument).toBe(
      'options.limits.uploadBytesPerSecond',
    )
    const leecher = await node()
    // A NaN here made the watch of a piece list that ended early start again every millisecond.
    expect(() => new PeerByteSource(leecher, [], { haveRefreshMs: Number.NaN })).toThrow(
      /options\.haveRefreshMs/,
    )
  })

  it('refuses a peer address that is no multiaddr before any work, naming it and where it was given', async () => {
    const nodeOptions: Array<[PeerNodeOptions, string]> = [
      [{ bootstrap: ['/ip4/127.0.0.1/tcp/4001', 'seed.example:4001'] }, 'options.bootstrap[1]'],
      [{ listen: ['0.0.0.0:4001'] }, 'options.listen[0]'],
    ]
    for (const [options, argument] of nodeOptions) {
      const error = await createPeerNode(options).catch((caught: unknown) => caught)
      expect(InvalidArgumentError.isInstance(error) && error.argument).toBe(argument)
      expect((error as Error).message).toMatch(/not a multiaddr such as/)
    }
    const leecher = await node()
    const path = at('not-a-multiaddr')
    const download = await downloadFromPeers({
      node: leecher,
      peers: ['/ip4/127.0.0.1/tcp/4001', 'seed.example:4001'],
      pieceIndex,
      path,
    }).catch((caught: unknown) => caught)
    expect(InvalidArgumentError.isInstance(download) && download.argument).toBe('options.peers[1]')
    expect((download as Error).message).toMatch(/"seed\.example:4001" is not a multiaddr/)
    await expect(stat(`${path}.journal`)).rejects.toMatchObject({ code: 'ENOENT' })
    expect(() => new PeerByteSource(leecher, ['seed.example:4001'])).toThrow(/peers\[0\]/)
    // Asked directly, the node says the same, where it used to report the peer unreachable.
    const asked = await leecher
      .have('seed.example:4001', pieceIndex.sha256)
      .catch((caught) => caught)
    expect(InvalidArgumentError.isInstance(asked) && asked.message).toMatch(
      /Invalid argument peer: "seed\.example:4001" is not a multiaddr/,
    )
  })

  it('refuses to start when the disk has less free space than the blob needs, asking no peer', async () => {
    const { bavail, bsize } = await statfs(directory.path)
    // A blob 1 GiB larger than the free space, in pieces of 256 MiB (its hashes are never read).
    const pieceSize = 256 * 1024 * 1024
    const size = (Math.ceil((bavail * bsize) / pieceSize) + 4) * pieceSize
    const tooLarge = new PieceIndex({
      sha256: 'ab'.repeat(32),
      size,
      pieceSize,
      hashes: new Uint8Array((size / pieceSize) * 32),
    })
    const server = await seed()
    const leecher = await node()
    const piece = vi.spyOn(leecher, 'piece')
    const path = at('too-large')
    const error = await downloadFromPeers({
      node: leecher,
      peers: [server.addresses],
      pieceIndex: tooLarge,
      path,
    }).catch((caught: unknown) => caught)
    expect(DownloadError.isInstance(error) && error.code).toBe('LLMESH_INSUFFICIENT_SPACE')
    expect((error as DownloadError).path).toBe(path)
    expect((error as Error).message).toMatch(/still to download, .* free/)
    expect(piece).not.toHaveBeenCalled()
    await expect(stat(path)).rejects.toMatchObject({ code: 'ENOENT' })
  })

  it('asks a peer whose pieces queue behind its upload limit for few at once', async () => {
    // 64 KiB pieces at 1 MiB/s: past the limit's first MiB, a piece leaves every 62.5 ms, so each
    // request more in flight adds 62.5 ms of queueing to every piece.
    const server = await seed({ limits: { uploadBytesPerSecond: 1024 * 1024 } })
    const leecher = await node()
    const piece = leecher.piece.bind(leecher)
    let inFlight = 0
    let delivered = 0
    let mostAtOnceLater = 0
    leecher.piece = async (...request) => {
      inFlight++
      // Once the first MiB (the limit's burst, which comes at once) and more are delivered.
      if (delivered >= 30) mostAtOnceLater = Math.max(mostAtOnceLater, inFlight)
      try {
        const chunks = await piece(...request)
        delivered++
        return chunks
      } finally {
        inFlight--
      }
    }
    const path = at('queued')
    await downloadFromPeers({ node: leecher, peers: [server.addresses], pieceIndex, path })
    expect(Buffer.from(await readFile(path)).equals(Buffer.from(blob))).toBe(true)
    // The window grew to 16 while the burst came, and shrank as pieces queued past 200 ms (a
    // queue of 4 pieces): a window that only grows keeps 16 requests waiting there.
    expect(mostAtOnceLater).toBeGreaterThan(0)
    expect(mostAtOnceLater).toBeLessThanOrEqual(6)
  })

  it('redirects a second asker of a piece to one it sent to no one yet (super-seeding), and serves askers that take no redirect', async () => {
    const server = await seed()
    const first = await node()
    const second = await node()
    let pieceStreamsOpened = 0
    const dialProtocol = second.libp2p.dialProtocol.bind(second.libp2p)
    second.libp2p.dialProtocol = (peer, protocols, options) => {
      if (protocols === PIECE_PROTOCOL) pieceStreamsOpened++
      return dialProtocol(peer, protocols, options)
    }
    const digest = pieceIndex.sha256
    expect(
      pieceIndex.verifyPiece(3, await first.piece(server.addresses, digest, 3, { redirect: true })),
    ).toBe(true)
    const redirect = await second
      .piece(server.addresses, digest, 3, { redirect: true })
      .catch((error: unknown) => error)
    expect(redirect).toBeInstanceOf(PeerError)
    expect(redirect).toMatchObject({ code: 'LLMESH_PEER_SENT_ELSEWHERE', isRetryable: true })
    const suggested = (redirect as PeerError).suggestedPiece!
    expect(suggested).toBe(0)
    expect(
      pieceIndex.verifyPiece(
        suggested,
        await second.piece(server.addresses, digest, suggested, { redirect: true }),
      ),
    ).toBe(true)
    // A first asker that asks again lost its piece, and a pull (byte ranges) takes no redirect.
    expect(
      pieceIndex.verifyPiece(3, await first.piece(server.addresses, digest, 3, { redirect: true })),
    ).toBe(true)
    expect(pieceIndex.verifyPiece(3, await second.piece(server.addresses, digest, 3))).toBe(true)
    // The redirect left its stream open: the second asker's three requests went on one stream.
    expect(pieceStreamsOpened).toBe(1)
    // A seed with super-seeding off serves every asker.
    const plain = await seed({ superSeeding: false })
    await first.piece(plain.addresses, digest, 3, { redirect: true })
    expect(
      pieceIndex.verifyPiece(3, await second.piece(plain.addresses, digest, 3, { redirect: true })),
    ).toBe(true)
  })

  it('has its seed send every piece once before any piece twice, while the leechers trade the rest', async () => {
    const provider = new RecordingProvider()
    const slowSeed = await seed({ provider, limits: { uploadBytesPerSecond: 2 * 1024 * 1024 } })
    const leechers = [await node(), await node(), await node()]
    const results = await Promise.all(
      leechers.map((leecher, position) => {
        const path = at(`leecher-${position}`)
        return downloadFromPeers({
          node: leecher,
          peers: [
            slowSeed.addresses,
            ...leechers.filter((other) => other !== leecher).map((other) => other.addresses),
          ],
          pieceIndex,
          path,
        }).then(async (result) => {
          expect(Buffer.from(await readFile(path)).equals(Buffer.from(blob))).toBe(true)
          return result
        })
      }),
    )
    const firstRound = provider.piecesRead.slice(0, pieces)
    expect(new Set(firstRound).size).toBe(firstRound.length)
    // The leechers got most pieces from each other.
    const fromSeed = results.reduce(
      (sum, result) => sum + (result.piecesByPeer[slowSeed.peerId.toString()] ?? 0),
      0,
    )
    expect(fromSeed).toBeLessThan(2 * pieces)
  })

  it('snubs a peer whose piece does not come within the piece timeout, and completes from the others', async () => {
    const silent = await seed()
    // Slow enough that the download outlasts the timeout (past the limit's first MiB, the file
    // takes over 2 s), and fast enough that no piece of it queues nearly as long (4 requests of
    // 64 KiB wait 0.25 s at most).
    const server = await seed({ limits: { uploadBytesPerSecond: 1024 * 1024 } })
    const leecher = await node()
    // The silent peer takes requests and never answers (a stalled disk, say): only the timeout
    // ends them.
    const silentId = silent.peerId.toString()
    const piece = leecher.piece.bind(leecher)
    leecher.piece = (peer, digest, index, options = {}) =>
      peerIdOf(peer) === silentId
        ? new Promise((_, reject) =>
            options.signal?.addEventListener('abort', () => reject(options.signal!.reason), {
              once: true,
            }),
          )
        : piece(peer, digest, index, options)
    const snubbed: string[] = []
    const path = at('snubbed')
    const result = await downloadFromPeers({
      node: leecher,
      peers: [silent.addresses, server.addresses],
      pieceIndex,
      path,
      pieceTimeoutMs: 1000,
      maxInFlightPerPeer: 4,
      onProgress: (event: SwarmProgressEvent) => {
        if (event.type === 'p2p:peer-snubbed') snubbed.push(event.detail.peer)
      },
    })
    expect(Buffer.from(await readFile(path)).equals(Buffer.from(blob))).toBe(true)
    expect(snubbed.length).toBeGreaterThan(0)
    expect(new Set(snubbed)).toEqual(new Set([silentId]))
    expect(result.piecesByPeer[silentId]).toBeUndefined()
    expect(result.banned).toEqual([])
  })

  it.runIf(process.platform === 'linux')('closes the files it served once it stops', async () => {
    const path = at('served')
    await copyFile(blobPath, path)
    // With no provider given, the node makes its own, and closes it.
    const server = await createPeerNode()
    server.provider.serve(pieceIndex.sha256, {
      size: SIZE,
      pieceSize: PIECE_SIZE,
      have: Bitfield.full(pieces),
      path,
    })
    const leecher = await node()
    await leecher.piece(server.addresses, pieceIndex.sha256, 0)
    expect(openDescriptorsOf(path)).toBe(1)
    await server.stop()
    await vi.waitFor(() => expect(openDescriptorsOf(path)).toBe(0))
  })

  it('keeps downloads under the rate limits, over all peers and per peer', async () => {
    const seeds = [await seed(), await seed(), await seed()]
    const rate = 4 * 1024 * 1024
    const burst = 1024 * 1024
    // Over all peers: three seeds together stay under one rate.
    const limited = await node({ limits: { downloadBytesPerSecond: rate } })
    let started = performance.now()
    await downloadFromPeers({
      node: limited,
      peers: seeds.map((peer) => peer.addresses),
      pieceIndex,
      path: at('limited'),
    })
    expect(performance.now() - started).toBeGreaterThanOrEqual(((SIZE - burst) / rate) * 950)
    // Per peer: one seed, held to its own rate.
    const perPeer = await node({ limits: { downloadBytesPerSecondPerPeer: rate / 2 } })
    started = performance.now()
    await downloadFromPeers({
      node: perPeer,
      peers: [seeds[0]!.addresses],
      pieceIndex,
      path: at('per-peer'),
    })
    expect(performance.now() - started).toBeGreaterThanOrEqual(((SIZE - burst) / (rate / 2)) * 950)
  })

  it('lets a peer that is still downloading serve the pieces it has verified', async () => {
    const slowSeed = await seed({ limits: { uploadBytesPerSecond: 512 * 1024 } })
    const middle = await node()
    const late = await node()
    const middlePath = at('middle')
    let verified = 0
    let reachedQuarter!: () => void
    const quarter = new Promise<void>((resolve) => {
      reachedQuarter = resolve
    })
    const first = downloadFromPeers({
      node: middle,
      peers: [slowSeed.addresses],
      pieceIndex,
      path: middlePath,
      onProgress: (event: SwarmProgressEvent) => {
        if (event.type === 'p2p:piece-verified' && ++verified === Math.floor(pieces / 4))
          reachedQuarter()
      },
    })
    await quarter
    // The late node knows only the middle one, which has a quarter of the file so far.
    const second = downloadFromPeers({
      node: late,
      peers: [middle.addresses],
      pieceIndex,
      path: at('late'),
    })
    const [, lateResult] = await Promise.all([first, second])
    expect(lateResult.piecesByPeer[middle.peerId.toString()]).toBe(pieces)
    expect(middle.uploaded.get(late.peerId.toString())).toBe(SIZE)
  })

  it('pushes the pieces a peer verifies to those watching its piece list', async () => {
    const have = new Bitfield(pieces)
    for (let index = 0; index < pieces; index += 2) have.set(index)
    const server = await seed({}, { have })
    const client = await node()
    const seen: number[] = []
    let verifying: Promise<void> | undefined
    for await (const answer of client.watchHave(server.addresses, pieceIndex.sha256)) {
      seen.push(answer.have.count)
      // Once the first list is here, the server verifies the odd pieces, one per turn.
      verifying ??= (async () => {
        for (let index = 1; index < pieces; index += 2) {
          await new Promise((resolve) => setImmediate(resolve))
          have.set(index)
        }
      })()
    }
    await verifying
    expect(seen[0]).toBe(Math.ceil(pieces / 2))
    expect(seen.at(-1)).toBe(pieces)
    expect(seen.length).toBeGreaterThan(1)
    // The watch ended because the peer holds everything, and the server stopped pushing.
    expect((await client.have(server.addresses, pieceIndex.sha256)).have.complete).toBe(true)
  })

  it('bans a peer on its first bad piece and completes the file from the others', async () => {
    const liar = await node()
    const corruptPath = at('corrupt')
    const corrupt = Uint8Array.from(blob)
    for (let index = 0; index < pieces; index += 3) corrupt[index * PIECE_SIZE + 7]! ^= 0xff
    await writeFile(corruptPath, corrupt)
    liar.provider.serve(pieceIndex.sha256, {
      size: SIZE,
      pieceSize: PIECE_SIZE,
      have: Bitfield.full(pieces),
      path: corruptPath,
    })
    const honest = await seed()
    const path = at('after-liar')
    const banned: string[] = []
    const result = await downloadFromPeers({
      node: await node(),
      peers: [liar.addresses, honest.addresses],
      pieceIndex,
      path,
      maxInFlightPerPeer: 1,
      randomFirstPieces: 0,
      onProgress: (event: SwarmProgressEvent) => {
        if (event.type === 'p2p:peer-banned') banned.push(event.detail.peer)
      },
    })
    expect(Buffer.from(await readFile(path)).equals(Buffer.from(blob))).toBe(true)
    expect(banned).toEqual([liar.peerId.toString()])
    expect(result.banned).toEqual([
      expect.objectContaining({
        peer: liar.peerId.toString(),
        reason: 'sent a piece that failed verification',
      }),
    ])
    // One request in flight at a time: the liar got exactly one bad piece through before its ban.
    expect(result.wastedPieces).toBe(1)
  })

  it('bans a peer whose piece list is false', async () => {
    const liar = await node()
    const half = new Bitfield(pieces)
    for (let index = 0; index < pieces / 2; index++) half.set(index)
    // It advertises every piece but holds half: the provider's list and its pieces disagree.
    liar.provider.serve(pieceIndex.sha256, {
      size: SIZE,
      pieceSize: PIECE_SIZE,
      have: Bitfield.full(pieces),
      path: blobPath,
    })
    const realProvider = liar.provider as unknown as { lookup: StoreBlobProvider['lookup'] }
    const lookup = realProvider.lookup.bind(liar.provider)
    let calls = 0
    realProvider.lookup = async (digest) => {
      const served = await lookup(digest)
      // The first lookup answers the piece list (all); later ones serve pieces (half only).
      return served === undefined || calls++ === 0 ? served : { ...served, have: half }
    }
    const honest = await seed()
    const path = at('false-list')
    const result = await downloadFromPeers({
      node: await node(),
      peers: [liar.addresses, honest.addresses],
      pieceIndex,
      path,
      haveRefreshMs: 60_000,
    })
    expect(Buffer.from(await readFile(path)).equals(Buffer.from(blob))).toBe(true)
    expect(result.banned.map((entry) => entry.reason)).toEqual([
      'advertised a piece it does not have',
    ])
  })

  it('refuses requests for an unknown digest or a piece out of range, with typed errors', async () => {
    const server = await seed()
    const client = await node()
    const unknown = 'f'.repeat(64)
    await expect(client.have(server.addresses, unknown)).rejects.toMatchObject({
      code: 'LLMESH_PEER_UNKNOWN_DIGEST',
    })
    await expect(client.piece(server.addresses, unknown, 0)).rejects.toBeInstanceOf(PeerError)
    await expect(client.piece(server.addresses, pieceIndex.sha256, pieces)).rejects.toMatchObject({
      code: 'LLMESH_PEER_OUT_OF_RANGE',
    })
    const have = await client.have(server.addresses, pieceIndex.sha256)
    expect(have).toMatchObject({ size: SIZE, pieceSize: PIECE_SIZE })
    expect(have.have.complete).toBe(true)
    expect(
      pieceIndex.verifyPiece(5, await client.piece(server.addresses, pieceIndex.sha256, 5)),
    ).toBe(true)
  })

  it('cuts a stream whose length prefix runs past any message it takes, and serves the next', async () => {
    const server = await seed()
    const client = await node()
    const stream = await client.libp2p.dialProtocol(server.libp2p.getMultiaddrs(), PIECE_PROTOCOL)
    const closed = new Promise<void>((resolve) =>
      stream.addEventListener('close', () => resolve(), { once: true }),
    )
    // Bytes with the high bit set never end a varint: a peer that reads on would wait forever.
    stream.send(new Uint8Array(64).fill(0xff))
    await closed
    expect(stream.status).not.toBe('open')
    expect(
      pieceIndex.verifyPiece(1, await client.piece(server.addresses, pieceIndex.sha256, 1)),
    ).toBe(true)
  })

  it('ends an upload whose asker stops reading, past the upload timeout, and serves others again', async () => {
    const server = await seed({ limits: { concurrentUploads: 1, uploadTimeoutMs: 300 } })
    const stalling = await node()
    const stream = await stalling.libp2p.dialProtocol(server.libp2p.getMultiaddrs(), PIECE_PROTOCOL)
    // A paused stream grants the sender no more window (4 MiB) than it has: what the server sends
    // past that waits. Its buffer may hold that window whole.
    stream.pause()
    ;(stream as unknown as { maxReadBufferLength: number }).maxReadBufferLength = 64 * 1024 * 1024
    const closed = new Promise<void>((resolve) =>
      stream.addEventListener('close', () => resolve(), { once: true }),
    )
    // Every piece twice: 6 MiB, past the window.
    const requests = Array.from({ length: 2 * pieces }, (_, request) =>
      encodeJson({ digest: pieceIndex.sha256, index: request % pieces }),
    )
    await messageStream(stream, { maxDataLength: MAX_REQUEST_BYTES }).writeV(requests)
    await closed
    const client = await node()
    expect(
      pieceIndex.verifyPiece(2, await client.piece(server.addresses, pieceIndex.sha256, 2)),
    ).toBe(true)
  })

  it('does not count the waits of the upload rate against the upload timeout', async () => {
    // A burst of 1 MiB (16 pieces), then a piece every 250 ms: the 20th waits a second at the
    // rate, ten times the timeout, yet its asker reads it at once.
    const server = await seed({
      limits: { uploadBytesPerSecond: 4 * PIECE_SIZE, uploadTimeoutMs: 100 },
    })
    const leecher = await node()
    const indexes = Array.from({ length: 20 }, (_, index) => index)
    const delivered = await Promise.all(
      indexes.map((index) => leecher.piece(server.addresses, pieceIndex.sha256, index)),
    )
    for (const index of indexes) expect(pieceIndex.verifyPiece(index, delivered[index]!)).toBe(true)
  })

  it('answers "busy" past its cap on concurrent uploads, and serves again once one ends', async () => {
    let release!: () => void
    const gate = new Promise<void>((resolve) => {
      release = resolve
    })
    let reading!: () => void
    const firstRead = new Promise<void>((resolve) => {
      reading = resolve
    })
    // The disk under the seed is slow: its first read waits until the test lets it go.
    const slowDisk = new SlowDisk(() => {
      reading()
      return gate
    })
    const server = await seed({ provider: slowDisk, limits: { concurrentUploads: 1 } })
    const client = await node()
    const first = client.piece(server.addresses, pieceIndex.sha256, 0)
    await firstRead
    await expect(client.piece(server.addresses, pieceIndex.sha256, 1)).rejects.toMatchObject({
      code: 'LLMESH_PEER_BUSY',
      isRetryable: true,
    })
    release()
    expect(pieceIndex.verifyPiece(0, await first)).toBe(true)
    expect(
      pieceIndex.verifyPiece(1, await client.piece(server.addresses, pieceIndex.sha256, 1)),
    ).toBe(true)
  })

  it('accepts no more peers than its cap, and the next one once a peer leaves', async () => {
    const server = await seed({ limits: { maxPeers: 1 } })
    const first = await node()
    const second = await node()
    expect((await first.have(server.addresses, pieceIndex.sha256)).have.complete).toBe(true)
    await expect(second.have(server.addresses, pieceIndex.sha256)).rejects.toMatchObject({
      code: 'LLMESH_PEER_UNREACHABLE',
      isRetryable: true,
    })
    await first.stop()
    expect((await second.have(server.addresses, pieceIndex.sha256)).have.complete).toBe(true)
  })

  it('dials again, once, a peer that refused a connection past its rate of new connections from one address', async () => {
    const server = await seed({ limits: { connectionsPerHostPerSecond: 1 } })
    const first = await node()
    const second = await node()
    expect((await first.have(server.addresses, pieceIndex.sha256)).have.complete).toBe(true)
    // Both dial from 127.0.0.1: the second connection within the second is refused (reset), and
    // the redial a second later is accepted.
    expect((await second.have(server.addresses, pieceIndex.sha256)).have.complete).toBe(true)
  })

  it('says so when the node at an address has another peer id than the address names', async () => {
    const server = await seed()
    const other = await node()
    const client = await node()
    // The server's TCP address with the other node's id: a stale or mistyped address.
    const [tcpAddress] = server.addresses[0]!.toString().split('/p2p/')
    await expect(
      client.have(`${tcpAddress}/p2p/${other.peerId}`, pieceIndex.sha256),
    ).rejects.toMatchObject({
      code: 'LLMESH_PEER_UNREACHABLE',
      message: expect.stringContaining('the node at that address has another peer id'),
    })
  })

  it('reads any byte range as a byte source, across pieces and the chunks they arrive in', async () => {
    const server = await seed()
    const client = await node()
    const source = new PeerByteSource(client, [server.addresses])
    const start = PIECE_SIZE - 1000
    const end = 3 * PIECE_SIZE + 4321
    const chunks: Uint8Array[] = []
    for await (const chunk of source.read({ digest: pieceIndex.sha256, start, end }))
      chunks.push(chunk)
    expect(Buffer.concat(chunks).equals(blob.subarray(start, end))).toBe(true)
  })

  it('tells, as a byte source, whether a peer takes part in a blob: not before it serves or fetches it', async () => {
    const idle = await node()
    const client = await node()
    const source = new PeerByteSource(client, [idle.addresses], { haveRefreshMs: 50 })
    // The peer does not serve the blob: it answers "unknown digest".
    expect(await source.has(pieceIndex.sha256)).toBe(false)
    expect(source.takesPart(pieceIndex.sha256)).toBe(false)
    // It starts fetching the blob and serves what it verified (nothing yet).
    idle.provider.serve(pieceIndex.sha256, {
      size: SIZE,
      pieceSize: PIECE_SIZE,
      have: new Bitfield(pieces),
      path: blobPath,
    })
    await vi.waitFor(() => expect(source.takesPart(pieceIndex.sha256)).toBe(true), {
      timeout: 5_000,
      interval: 20,
    })
    expect(source.holds(pieceIndex.sha256, 0, PIECE_SIZE)).toBe(false)
    source.close()
  })

  it('carries one request after another on a kept piece stream, and replaces one that ended', async () => {
    const server = await seed()
    const client = await node()
    const pieceStreams = () =>
      server.libp2p
        .getConnections()
        .flatMap((connection) => connection.streams)
        .filter((stream) => stream.protocol === '/llmesh/blob/piece/1.0.0')
    for (const index of [0, 1, 2]) {
      const chunks = await client.piece(server.addresses, pieceIndex.sha256, index)
      expect(pieceIndex.verifyPiece(index, chunks)).toBe(true)
    }
    expect(pieceStreams()).toHaveLength(1)
    // The kept stream ends with its connection: the next request goes on a new one.
    await client.libp2p.hangUp(server.peerId)
    const chunks = await client.piece(server.addresses, pieceIndex.sha256, 3)
    expect(pieceIndex.verifyPiece(3, chunks)).toBe(true)
    // A refusal ends its stream; the next request opens another and is served.
    await expect(client.piece(server.addresses, pieceIndex.sha256, pieces)).rejects.toMatchObject({
      code: 'LLMESH_PEER_OUT_OF_RANGE',
    })
    expect(
      pieceIndex.verifyPiece(4, await client.piece(server.addresses, pieceIndex.sha256, 4)),
    ).toBe(true)
  })

  it('keeps peers with different private network keys apart', async () => {
    const key = createPrivateNetworkKey()
    const member = await seed({ privateNetworkKey: key })
    const other = await node({ privateNetworkKey: key })
    expect((await other.have(member.addresses, pieceIndex.sha256)).have.complete).toBe(true)
    const outsider = await node({ privateNetworkKey: createPrivateNetworkKey() })
    // No handshake comes back: libp2p's dial timeout ends it, and the error names the likely cause.
    await expect(outsider.have(member.addresses, pieceIndex.sha256)).rejects.toMatchObject({
      code: 'LLMESH_PEER_UNREACHABLE',
      message: expect.stringContaining(
        'another private network key than this node (which has one)',
      ),
    })
    const open = await node()
    await expect(open.have(member.addresses, pieceIndex.sha256)).rejects.toMatchObject({
      code: 'LLMESH_PEER_UNREACHABLE',
      message: expect.stringContaining(
        'another private network key than this node (which has none)',
      ),
    })
  })

  it('finds the peers that serve a digest through the DHT, and downloads from them', async () => {
    const seeder = await seed()
    // A chain: the leecher knows only a relay, which knows only the seed.
    const relay = await node({ bootstrap: [seeder.addresses[0]!.toString()] })
    const leecher = await node({ bootstrap: [relay.addresses[0]!.toString()] })
    await vi.waitFor(() => expect(relay.libp2p.getConnections().length).toBe(2), {
      timeout: 20_000,
      interval: 50,
    })
    await seeder.announce(pieceIndex.sha256, { signal: AbortSignal.timeout(10_000) })
    let found: Awaited<ReturnType<PeerNode['findPeers']>> = []
    await vi.waitFor(
      async () => {
        found = await leecher.findPeers(pieceIndex.sha256, {
          signal: AbortSignal.timeout(2_000),
          limit: 1,
        })
        expect(found).toHaveLength(1)
      },
      { timeout: 20_000, interval: 100 },
    )
    expect(found[0]![0]!.toString()).toContain(seeder.peerId.toString())
    const path = at('via-dht')
    const result = await downloadFromPeers({ node: leecher, peers: found, pieceIndex, path })
    expect(result.piecesByPeer[seeder.peerId.toString()]).toBe(pieces)
    expect(Buffer.from(await readFile(path)).equals(Buffer.from(blob))).toBe(true)
  })

  it('resumes after SIGKILL at 50 % without fetching verified pieces again', async () => {
    const slowSeed = await seed({ limits: { uploadBytesPerSecond: 1024 * 1024 } })
    const path = at('killed')
    const script = join(directory.path, 'leecher.mjs')
    await writeFile(
      script,
      `import { createPeerNode, downloadFromPeers } from ${JSON.stringify(distEntry.href)}
const [path, address, indexJson] = process.argv.slice(2)
const node = await createPeerNode()
await downloadFromPeers({
  node,
  peers: [address],
  pieceIndex: JSON.parse(indexJson),
  path,
  onProgress: (event) => console.log(JSON.stringify({ type: event.type, verified: event.detail.verified })),
})
await node.stop()
`,
    )
    const child = spawn(
      process.execPath,
      [script, path, slowSeed.addresses[0]!.toString(), JSON.stringify(pieceIndex.toJSON())],
      { stdio: ['ignore', 'pipe', 'inherit'], cwd: new URL('..', import.meta.url).pathname },
    )
    const exited = new Promise<NodeJS.Signals | null>((resolve) =>
      child.once('exit', (_code, signal) => resolve(signal)),
    )
    let buffer = ''
    child.stdout!.on('data', (chunk: Buffer) => {
      buffer += chunk.toString()
      const lines = buffer.split('\n')
      buffer = lines.pop() ?? ''
      for (const line of lines) {
        const event = JSON.parse(line) as { verified?: number }
        if ((event.verified ?? 0) >= pieces / 2) child.kill('SIGKILL')
      }
    })
    expect(await exited).toBe('SIGKILL')
    const resumed = await downloadFromPeers({
      node: await node(),
      peers: [(await seed()).addresses],
      pieceIndex,
      path,
    })
    expect(resumed.resumedPieces).toBeGreaterThanOrEqual(Math.floor(pieces / 2))
    const fetched = Object.values(resumed.piecesByPeer).reduce((sum, count) => sum + count, 0)
    expect(fetched).toBe(pieces - resumed.resumedPieces)
    expect(Buffer.from(await readFile(path)).equals(Buffer.from(blob))).toBe(true)
  })
})
