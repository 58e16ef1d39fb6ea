/**
 * One peer of the benchmark, in a process of its own, driven over IPC.
 *
 *   fork('peer-child.ts', [JSON.stringify(setup)])
 *
 * A seed serves `file` (optionally lying: `flip` corrupts every fourth piece); it also answers a
 * bare libp2p stream (`/bench/raw/1.0.0`, the file's bytes, nothing else) and raw TCP (the file
 * on a plain socket), the anchors. A leecher waits for `{ start: peers, output? }`, downloads, and
 * reports (again for each `start`); a bare receiver drains the bare stream for each `{ bare: address }`
 * (with `output`, verifying and writing each piece as a download does: the anchor of what checking
 * and writing cost, without llmesh's protocol);
 * a puller does the same through the downloader (a pull from the manifest's mirrors, beside the
 * peers, sharing its verified pieces while it runs).
 */
import { createReadStream, readFileSync } from 'node:fs'
import { open } from 'node:fs/promises'
import { createServer } from 'node:net'
import { createDownloader, ModelStore, PieceFile, tuneHeapForTransfers } from '@llmesh/downloader'
import { type Manifest, PieceIndex, type PieceIndexDocument } from '@llmesh/manifest'
import {
  Bitfield,
  createPeerNode,
  downloadFromPeers,
  PeerByteSource,
  StoreBlobProvider,
} from '@llmesh/p2p-storage'
import { multiaddr } from '@multiformats/multiaddr'
import { pEvent } from 'p-event'

// As the llmesh CLI does at startup (every role, the anchors' included).
tuneHeapForTransfers()

const setup = JSON.parse(process.argv[2]!) as {
  /**
   * A puller pulls `manifest` into the store at `store` with the downloader: mirrors and peers.
   * A bare receiver drains the seed's bare libp2p stream (the anchor), as a leecher downloads.
   */
  role: 'seed' | 'leecher' | 'puller' | 'bare'
  manifest?: Manifest
  store?: string
  /** Mirror connections a puller keeps. */
  mirrorConnections?: number
  file?: string
  output?: string
  size: number
  pieceSize: number
  pieceIndex: PieceIndexDocument
  uploadBytesPerSecond?: number
  encryption?: 'tls' | 'noise'
  lie?: 'flip'
  /** A leecher's cap on bytes in flight over all peers (the default when not given). */
  maxInFlightBytes?: number
  /** A node's super-seeding (the default, on, when not given). */
  superSeeding?: boolean
}
const store = setup.store === undefined ? undefined : await ModelStore.open({ root: setup.store })
const provider = new StoreBlobProvider(store)
const node = await createPeerNode({
  provider,
  ...(setup.superSeeding === undefined ? {} : { superSeeding: setup.superSeeding }),
  ...(setup.encryption === undefined ? {} : { encryption: [setup.encryption] }),
  ...(setup.uploadBytesPerSecond === undefined
    ? {}
    : { limits: { uploadBytesPerSecond: setup.uploadBytesPerSecond, concurrentUploads: 64 } }),
})
const pieces = Math.ceil(setup.size / setup.pieceSize)
let tcpPort: number | undefined

if (setup.role === 'seed') {
  let file = setup.file!
  if (setup.lie === 'flip') {
    // A copy with one byte flipped in every fourth piece.
    file = `${setup.file}.lying`
    const source = await open(setup.file!, 'r')
    const target = await open(file, 'w')
    const buffer = Buffer.alloc(setup.pieceSize)
    for (let index = 0; index < pieces; index++) {
      const { bytesRead } = await source.read(buffer, 0, setup.pieceSize, index * setup.pieceSize)
      if (index % 4 === 0) buffer[0]! ^= 0xff
      await target.write(buffer, 0, bytesRead, index * setup.pieceSize)
    }
    await source.close()
    await target.close()
  }
  provider.serve(setup.pieceIndex.sha256, {
    size: setup.size,
    pieceSize: setup.pieceSize,
    have: Bitfield.full(pieces),
    path: file,
  })
  // The bare stream, with backpressure as libp2p's own writes have it: each send that fills the
  // stream waits for its "drain" event. (`stream.onDrain()` of @libp2p/utils 7.4 resolves at once
  // after the first drain, so a loop on it read the whole file into the stream's buffer.)
  await node.libp2p.handle('/bench/raw/1.0.0', async (stream) => {
    for await (const chunk of createReadStream(file, { highWaterMark: 1024 * 1024 })) {
      if (!stream.send(chunk as Buffer))
        await pEvent(stream, 'drain', { rejectionEvents: ['close'] })
    }
    await stream.close()
  })
  const server = createServer((socket) =>
    createReadStream(file, { highWaterMark: 1024 * 1024 }).pipe(socket),
  )
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  tcpPort = (server.address() as { port: number }).port
}

process.send!({
  ready: true,
  addresses: node.addresses.map(String),
  tcpPort,
  peerId: node.peerId.toString(),
})

/** What the benchmark asks of a peer: start (downloading into `output`), drain the bare stream, report. */
interface Command {
  start?: string[]
  /** Where a leecher downloads; with `bare`, where the bare stream's pieces are verified and written. */
  output?: string
  bare?: string
  report?: boolean
}

process.on('message', async (message: Command) => {
  if (message.report) {
    process.send!({
      uploaded: [...node.uploaded.values()].reduce((sum, bytes) => sum + bytes, 0),
      cpuSeconds: cpuSeconds(),
      mainThreadCpuSeconds: mainThreadCpuSeconds(),
    })
    return
  }
  if (message.bare !== undefined) {
    const started = performance.now()
    const cpuBefore = cpuSeconds()
    const mainThreadBefore = mainThreadCpuSeconds()
    // Opened before the stream, which must be read from its first byte: libp2p resets a stream
    // once more than its read buffer's limit (4 MiB) waits unread.
    const file =
      message.output === undefined
        ? undefined
        : await PieceFile.open(message.output, { size: setup.size, pieceSize: setup.pieceSize })
    try {
      const stream = await node.libp2p
        .dialProtocol(multiaddr(message.bare), '/bench/raw/1.0.0')
        .catch(async (error: unknown) => {
          await file?.close()
          throw error
        })
      const bytes = file === undefined ? await drain(stream) : await verifyAndWrite(stream, file)
      process.send!({
        bytes,
        seconds: (performance.now() - started) / 1000,
        cpuSeconds: cpuSeconds() - cpuBefore,
        mainThreadCpuSeconds: mainThreadCpuSeconds() - mainThreadBefore,
      })
    } catch (error) {
      process.send!({ bytes: 0, error: String(error) })
    }
    return
  }
  if (message.start !== undefined && setup.role === 'puller') {
    const peers = message.start
    const started = performance.now()
    const downloader = createDownloader({
      store: store!,
      allowInsecureMirrors: true,
      maxConnectionsPerSource: setup.mirrorConnections ?? 4,
      initialConnectionsPerSource: setup.mirrorConnections ?? 4,
      ...(peers.length === 0
        ? {}
        : {
            extraSources: () => [new PeerByteSource(node, peers)],
            sharePartial: (blob) => node.sharePartial(blob),
          }),
    })
    try {
      const result = await downloader.pull(setup.manifest!, {
        pieceIndexes: [PieceIndex.fromJSON(setup.pieceIndex)],
      })
      process.send!({
        done: true,
        seconds: (performance.now() - started) / 1000,
        bySource: result.files[0]!.bySource,
      })
    } catch (error) {
      process.send!({ done: true, error: String(error) })
    } finally {
      await downloader.close()
    }
    return
  }
  if (message.start !== undefined) {
    const started = performance.now()
    const cpuBefore = cpuSeconds()
    const mainThreadBefore = mainThreadCpuSeconds()
    try {
      const result = await downloadFromPeers({
        node,
        peers: message.start,
        pieceIndex: setup.pieceIndex,
        path: message.output ?? setup.output!,
        ...(setup.maxInFlightBytes === undefined
          ? {}
          : { maxInFlightBytes: setup.maxInFlightBytes }),
      })
      process.send!({
        done: true,
        seconds: (performance.now() - started) / 1000,
        piecesByPeer: result.piecesByPeer,
        wastedPieces: result.wastedPieces,
        peakRssMiB: process.resourceUsage().maxRSS / 1024,
        cpuSeconds: cpuSeconds() - cpuBefore,
        mainThreadCpuSeconds: mainThreadCpuSeconds() - mainThreadBefore,
        banned: result.banned,
      })
    } catch (error) {
      process.send!({ done: true, error: String(error) })
    }
  }
})
process.on('disconnect', () => process.exit(0))

/** Reads a bare stream to its end; returns how many bytes it carried. */
async function drain(stream: AsyncIterable<{ byteLength: number }>): Promise<number> {
  let bytes = 0
  for await (const chunk of stream) bytes += chunk.byteLength
  return bytes
}

/**
 * Reads a bare stream to its end as a download would, with none of llmesh's protocol: each piece,
 * once whole, checked against the piece index and written by the downloader's `PieceFile`
 * (llmesh's own writer: SHA-256 and the write on a worker thread, past the page cache), which it
 * closes. Returns how many bytes the stream carried; throws on a piece that fails its check.
 */
async function verifyAndWrite(
  stream: AsyncIterable<Uint8Array | Iterable<Uint8Array>>,
  file: PieceFile,
): Promise<number> {
  const pieceIndex = PieceIndex.fromJSON(setup.pieceIndex)
  const written: Array<Promise<boolean>> = []
  let piece: Uint8Array[] = []
  let filled = 0
  let bytes = 0
  const hand = () => {
    const index = written.length
    written.push(
      file.verifyAndWrite(piece, {
        position: index * setup.pieceSize,
        sha256: pieceIndex.hashOf(index),
      }),
    )
    piece = []
    filled = 0
  }
  try {
    for await (const received of stream)
      for (const buffer of received instanceof Uint8Array ? [received] : received) {
        bytes += buffer.byteLength
        let rest = buffer
        while (rest.byteLength > 0) {
          const take = Math.min(rest.byteLength, setup.pieceSize - filled)
          piece.push(take === rest.byteLength ? rest : rest.subarray(0, take))
          rest = rest.subarray(take)
          filled += take
          if (filled === setup.pieceSize) hand()
        }
      }
    if (filled > 0) hand()
    const failed = (await Promise.all(written)).indexOf(false)
    if (failed !== -1) throw new Error(`piece ${failed} of the bare stream failed its check`)
  } finally {
    await file.close()
  }
  return bytes
}

/** CPU time of this process so far (user and system, all threads). */
function cpuSeconds(): number {
  const { user, system } = process.cpuUsage()
  return (user + system) / 1e6
}

/**
 * CPU time of this process's main thread so far (user and system), from `/proc` (in clock ticks
 * of 1/100 s, Linux's USER_HZ); NaN elsewhere. Where every thread has a core of its own, the
 * busiest main thread of a transfer bounds its rate.
 */
function mainThreadCpuSeconds(): number {
  if (process.platform !== 'linux') return Number.NaN
  // The fields after the command name's closing parenthesis start at the state (field 3);
  // utime and stime are fields 14 and 15.
  const stat = readFileSync(`/proc/self/task/${process.pid}/stat`, 'utf8')
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return (Number(fields[11]) + Number(fields[12])) / 100
}
