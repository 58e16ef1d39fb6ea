/**
 * Peers as a `ByteSource`, so that one `llmesh pull` mixes HTTP mirrors and peers in the same
 * download: the downloader's engine decides which piece each source serves and verifies every
 * piece itself. `holds()` tells the engine which pieces the peers hold now (a peer still
 * downloading holds some), so that it hands this source only those; `read()` asks a peer that
 * holds the piece.
 */
import {
  type AbortOptions,
  abortReason,
  type ByteRangeRequest,
  type ByteSource,
  ByteSourceError,
  parseArgument,
  sleep,
} from '@llmesh/core'
import { z } from 'zod'
import type { Bitfield } from './bitfield.js'
import { PeerError } from './errors.js'
import { timerMs } from './option-schemas.js'
import { checkPeerAddresses, type PeerAddress, type PeerNode, peerIdOf } from './peer-node.js'

/** One peer's piece list of one blob, as the peer pushes it. */
interface Holder {
  address: PeerAddress
  have: Bitfield | undefined
  pieceSize: number
  /** Piece requests that failed in a row: at 3, the peer is passed over for a while. */
  failures: number
  passedOverUntil: number
}

/** How long a peer whose piece requests failed 3 times in a row is passed over. */
const PASS_OVER_MS = 10_000

interface Watch {
  holders: Holder[]
  /** Settles once every peer answered (or failed) once. */
  answered: Promise<void>
  ready: boolean
  controller: AbortController
}

const peerByteSourceOptionsSchema = z.object({ haveRefreshMs: timerMs.optional() })

export interface PeerByteSourceOptions {
  /** How long to wait before watching a peer's piece list again after the watch ended early (the peer did not serve the blob yet, or went away); default 1 s. */
  haveRefreshMs?: number
}

/**
 * The peers' piece lists are watched, not polled: each peer pushes the pieces it verifies, so a
 * piece a peer gets while this pull runs can be asked of it at once. `close()` ends the watches
 * (the downloader calls it when the artifact's download ends).
 */
export class PeerByteSource implements ByteSource {
  readonly kind = 'peer'
  readonly id: string
  private readonly watches = new Map<string, Watch>()
  private next = 0
  private closed = false

  constructor(
    private readonly node: PeerNode,
    private readonly peers: PeerAddress[],
    private readonly options: PeerByteSourceOptions = {},
  ) {
    parseArgument(peerByteSourceOptionsSchema, options, 'options')
    checkPeerAddresses(peers, 'peers')
    this.id = `peers:${peers.map(peerIdOf).join(',')}`
  }

  async has(digest: string, options: AbortOptions = {}): Promise<boolean> {
    const watch = await this.watched(digest, options.signal)
    return watch.holders.some((holder) => (holder.have?.count ?? 0) > 0)
  }

  /** Whether a peer holds every piece that bytes [start, end) fall in, by its latest piece list. */
  holds(digest: string, start: number, end: number): boolean {
    if (this.closed) return false
    const now = performance.now()
    return this.watch(digest).holders.some((holder) => {
      if (holder.have === undefined || now < holder.passedOverUntil) return false
      const last = Math.floor((end - 1) / holder.pieceSize)
      for (let index = Math.floor(start / holder.pieceSize); index <= last; index++)
        if (!holder.have.has(index)) return false
      return true
    })
  }

  /** Whether a peer answered about `digest` by its latest word: it holds or fetches the blob. */
  takesPart(digest: string): boolean {
    if (this.closed) return false
    return this.watch(digest).holders.some((holder) => holder.have !== undefined)
  }

  close(): void {
    this.closed = true
    for (const watch of this.watches.values()) watch.controller.abort()
    this.watches.clear()
  }

  async *read({ digest, start, end, signal }: ByteRangeRequest): AsyncIterable<Uint8Array> {
    const { holders } = await this.watched(digest, signal)
    let position = start
    while (position < end) {
      const holder = this.holderOf(holders, position)
      if (holder === undefined)
        throw new ByteSourceError({
          failure: 'unavailable',
          source: this.id,
          digest,
          message: `No peer holds byte ${position} of ${digest} yet.`,
        })
      const index = Math.floor(position / holder.pieceSize)
      let piece: Uint8Array[]
      try {
        piece = await this.node.piece(
          holder.address,
          digest,
          index,
          signal === undefined ? {} : { signal },
        )
        holder.failures = 0
      } catch (error) {
        const code = PeerError.isInstance(error) ? error.code : undefined
        // A peer at its cap on uploads works: the downloader asks this source for fewer at once.
        if (code !== 'LLMESH_PEER_BUSY' && ++holder.failures >= 3) {
          holder.failures = 0
          holder.passedOverUntil = performance.now() + PASS_OVER_MS
        }
        throw new ByteSourceError({
          failure:
            code === 'LLMESH_PEER_PROTOCOL'
              ? 'misbehaved'
              : code === 'LLMESH_PEER_BUSY'
                ? 'busy'
                : 'unavailable',
          source: this.id,
          digest,
          message: `Peer ${peerIdOf(holder.address)} did not deliver piece ${index}: ${error instanceof Error ? error.message : String(error)}`,
          cause: error,
        })
      }
      // The part of the piece asked for, chunk by chunk as it arrived.
      const wanted = position
      let chunkStart = index * holder.pieceSize
      for (const chunk of piece) {
        const from = Math.max(position, chunkStart)
        const to = Math.min(end, chunkStart + chunk.byteLength)
        if (from < to) {
          yield chunk.subarray(from - chunkStart, to - chunkStart)
          position = to
        }
        chunkStart += chunk.byteLength
      }
      if (position === wanted)
        throw new ByteSourceError({
          failure: 'misbehaved',
          source: this.id,
          digest,
          message: `Peer ${peerIdOf(holder.address)} sent a short piece ${index}.`,
        })
    }
  }

  /** A peer holding the piece at `position`, taking turns among those that do. */
  private holderOf(holders: Holder[], position: number): Holder | undefined {
    const now = performance.now()
    for (let offset = 0; offset < holders.length; offset++) {
      const holder = holders[(this.next + offset) % holders.length]!
      if (holder.have === undefined || now < holder.passedOverUntil) continue
      if (holder.have.has(Math.floor(position / holder.pieceSize))) {
        this.next = (this.next + offset + 1) % holders.length
        return holder
      }
    }
    return undefined
  }

  /** The watch of `digest`'s piece lists, once every peer answered (or failed) once. */
  private async watched(digest: string, signal?: AbortSignal): Promise<Watch> {
    if (this.closed)
      throw new ByteSourceError({
        failure: 'unavailable',
        source: this.id,
        digest,
        message: 'This peer source is closed.',
      })
    const watch = this.watch(digest)
    if (watch.ready) return watch
    if (signal === undefined) await watch.answered
    else {
      let onAbort!: () => void
      try {
        await Promise.race([
          watch.answered,
          new Promise<never>((_, reject) => {
            onAbort = () => reject(abortReason(signal))
            if (signal.aborted) onAbort()
            signal.addEventListener('abort', onAbort, { once: true })
          }),
        ])
      } finally {
        signal.removeEventListener('abort', onAbort)
      }
    }
    return watch
  }

  /** The watch of `digest`'s piece lists, started on first use. */
  private watch(digest: string): Watch {
    const running = this.watches.get(digest)
    if (running !== undefined) return running
    const holders: Holder[] = this.peers.map((address) => ({
      address,
      have: undefined,
      pieceSize: 0,
      failures: 0,
      passedOverUntil: 0,
    }))
    const watch: Watch = {
      holders,
      answered: Promise.resolve(),
      ready: false,
      controller: new AbortController(),
    }
    watch.answered = Promise.all(
      holders.map(
        (holder) =>
          new Promise<void>((resolve) => {
            void this.follow(holder, digest, watch.controller.signal, resolve)
          }),
      ),
    ).then(() => {
      watch.ready = true
    })
    this.watches.set(digest, watch)
    return watch
  }

  /**
   * Keeps `holder.have` current until the peer holds every piece or the watch is closed; a watch
   * that ends early is opened again after `haveRefreshMs`. Calls `answered` after the first answer
   * or failure.
   */
  private async follow(
    holder: Holder,
    digest: string,
    signal: AbortSignal,
    answered: () => void,
  ): Promise<void> {
    while (!signal.aborted) {
      try {
        for await (const answer of this.node.watchHave(holder.address, digest, { signal })) {
          holder.have = answer.have
          holder.pieceSize = answer.pieceSize
          answered()
        }
        if (holder.have?.complete) break
      } catch (error) {
        // A peer that does not serve the blob (yet, or any more) holds nothing of it.
        if (PeerError.isInstance(error) && error.code === 'LLMESH_PEER_UNKNOWN_DIGEST')
          holder.have = undefined
      }
      answered()
      await sleep(this.options.haveRefreshMs ?? 1_000, { signal }).catch(() => {})
    }
    answered()
  }
}
