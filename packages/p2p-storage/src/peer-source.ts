/**
 * Peers as a `ByteSource`, so that one `llmesh pull` mixes HTTP mirrors and peers in the same
 * download: the downloader's engine decides which piece each source serves and verifies every
 * piece itself; this source asks a peer that holds the piece, and says "unavailable" when none
 * does yet (the engine then leans on the other sources and asks again later).
 */
import { type ByteRangeRequest, type ByteSource, ByteSourceError } from '@llmesh/core'
import type { Bitfield } from './bitfield.js'
import { PeerError } from './errors.js'
import { type PeerAddress, type PeerNode, peerIdOf } from './peer-node.js'

interface Holder {
  address: PeerAddress
  have: Bitfield | undefined
  pieceSize: number
  checkedAt: number
  failures: number
}

export interface PeerByteSourceOptions {
  /** How long a peer's piece list is trusted before it is asked again; default 1 s. */
  haveTtlMs?: number
}

export class PeerByteSource implements ByteSource {
  readonly kind = 'peer'
  readonly id: string
  private readonly holders: Holder[]
  private next = 0

  constructor(
    private readonly node: PeerNode,
    peers: PeerAddress[],
    private readonly options: PeerByteSourceOptions = {},
  ) {
    this.id = `peers:${peers.map(peerIdOf).join(',')}`
    this.holders = peers.map((address) => ({
      address,
      have: undefined,
      pieceSize: 0,
      checkedAt: 0,
      failures: 0,
    }))
  }

  async has(digest: string): Promise<boolean> {
    await this.refresh(digest)
    return this.holders.some((holder) => (holder.have?.count ?? 0) > 0)
  }

  async *read({ digest, start, end, signal }: ByteRangeRequest): AsyncIterable<Uint8Array> {
    await this.refresh(digest, signal)
    let position = start
    while (position < end) {
      const holder = this.holderOf(position)
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
        holder.failures++
        holder.checkedAt = 0
        throw new ByteSourceError({
          failure:
            PeerError.isInstance(error) && error.code === 'LLMESH_PEER_PROTOCOL'
              ? 'misbehaved'
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
  private holderOf(position: number): Holder | undefined {
    for (let offset = 0; offset < this.holders.length; offset++) {
      const holder = this.holders[(this.next + offset) % this.holders.length]!
      if (holder.have === undefined || holder.failures >= 3) continue
      if (holder.have.has(Math.floor(position / holder.pieceSize))) {
        this.next = (this.next + offset + 1) % this.holders.length
        return holder
      }
    }
    return undefined
  }

  private async refresh(digest: string, signal?: AbortSignal): Promise<void> {
    const now = Date.now()
    const ttl = this.options.haveTtlMs ?? 1_000
    await Promise.all(
      this.holders
        .filter((holder) => now - holder.checkedAt > ttl && !(holder.have?.complete ?? false))
        .map(async (holder) => {
          holder.checkedAt = now
          try {
            const answer = await this.node.have(
              holder.address,
              digest,
              signal === undefined ? {} : { signal },
            )
            holder.have = answer.have
            holder.pieceSize = answer.pieceSize
            holder.failures = 0
          } catch {
            holder.failures++
          }
        }),
    )
  }
}
