/**
 * Downloading one blob from several peers at once, trusting none of them.
 *
 * - Every piece is checked against the piece index (which the manifest authenticates) before it
 *   is written; a peer that sends a bad piece is banned on the spot, and so is a peer that
 *   advertised a piece it then says it does not have (a false piece list). The piece goes back
 *   to the others.
 * - Each peer's piece list is watched: the peer pushes the pieces it verifies as it goes.
 * - Pieces are chosen at random for the first few (so that new peers soon have something to
 *   trade), then rarest first among the peers not banned.
 * - Each peer has a window of requests in flight that grows while its pieces come without
 *   queueing there, so faster peers carry more, and a busy seed is asked for few pieces at a time
 *   (which keeps leechers from asking it for the same ones); a peer that times out is snubbed
 *   (window 1, left alone for a while). Over all peers, the bytes of requested pieces are capped
 *   too, so that memory stays bounded however many peers serve; the peers then share it evenly.
 * - Endgame: when every missing piece is requested, the last ones are also asked of other peers,
 *   and the losers are cancelled.
 * - The file's verified pieces are journaled, so a download killed at any point resumes without
 *   fetching them again; the node serves them to others while it downloads.
 */

import { dirname } from 'node:path'
import {
  anySignal,
  createLogger,
  emitProgress,
  type ProgressEvent,
  type ProgressOptions,
  parseArgument,
  sleep,
  throwIfAborted,
} from '@llmesh/core'
import {
  diskFullError,
  insufficientSpace,
  Journal,
  nodeFileSystem,
  PieceFile,
} from '@llmesh/downloader'
import { PieceIndex, type PieceIndexDocument } from '@llmesh/manifest'
import { z } from 'zod'
import { Bitfield } from './bitfield.js'
import { PeerError } from './errors.js'
import { positiveOrUnlimited, timerMs } from './option-schemas.js'
import { checkPeerAddresses, type PeerAddress, type PeerNode, peerIdOf } from './peer-node.js'
import { PieceOrder } from './piece-order.js'

export type SwarmProgressEvent =
  | ProgressEvent<
      'p2p:piece-verified',
      { digest: string; index: number; peer: string; verified: number; pieces: number }
    >
  | ProgressEvent<
      'p2p:peer-banned',
      { digest: string; peer: string; reason: string; piece: number }
    >
  | ProgressEvent<'p2p:peer-snubbed', { digest: string; peer: string; reason: string }>
  /**
   * Every missing piece is requested (or being written): from now on the last ones are also asked
   * of other peers. Once per download.
   */
  | ProgressEvent<'p2p:endgame', { digest: string; verified: number; pieces: number }>

export interface SwarmDownloadOptions extends ProgressOptions<SwarmProgressEvent> {
  node: PeerNode
  peers: PeerAddress[]
  /** The blob's piece index (or its JSON document), from its manifest: what every piece must hash to. */
  pieceIndex: PieceIndex | PieceIndexDocument
  /** Where the blob is written; verified pieces are journaled at `${path}.journal`. */
  path: string
  /** Serve verified pieces to other peers while downloading; default true. */
  serve?: boolean
  /**
   * Requests in flight per peer at most; default 16, or fewer when that many pieces would pass
   * `maxInFlightBytesPerPeer` (but at least 2).
   */
  maxInFlightPerPeer?: number
  /** Bytes of requested pieces per peer at most, when `maxInFlightPerPeer` is not given; default 64 MiB. */
  maxInFlightBytesPerPeer?: number
  /**
   * Bytes of requested pieces over all peers at most; default 256 MiB (but at least 2 pieces). A
   * piece is held until the writing thread takes it (whose buffers come on top: 32 MiB, or 2
   * pieces), so this bounds the download's memory whatever the number of peers: with pieces of
   * 32 MiB (a 100 GB model's) and 8 peers, the windows alone would allow 512 MiB. When it binds,
   * the peers share it evenly: none is asked for a second piece while another has none.
   * `Infinity` lifts it.
   */
  maxInFlightBytes?: number
  /**
   * How long a piece may queue at a peer (past the fastest piece it delivered) before its window
   * of requests stops growing; past twice this, the window shrinks. Default 100 ms.
   */
  queueingTargetMs?: number
  /** A piece not delivered within this long snubs the peer; default 30 s. */
  pieceTimeoutMs?: number
  /** Give up when no piece arrives for this long and no peer has what is missing; default 60 s. */
  stallTimeoutMs?: number
  /** How long before a peer's piece list is watched again after its watch ended early; default 1 s. */
  haveRefreshMs?: number
  /** Random pieces before rarest first; default 4. */
  randomFirstPieces?: number
  signal?: AbortSignal
}

export interface SwarmDownloadResult {
  digest: string
  /** The node goes on serving the complete file at `path`; call this once it moves (into a store, say). */
  stopServing(): void
  size: number
  /** Pieces found verified in the journal of an earlier, interrupted run. */
  resumedPieces: number
  /** Pieces fetched in this run, by peer id. */
  piecesByPeer: Record<string, number>
  /** Pieces fetched more than once (endgame duplicates, bad pieces). */
  wastedPieces: number
  banned: Array<{ peer: string; reason: string; afterMs: number }>
}

interface PeerState {
  id: string
  address: PeerAddress
  have: Bitfield | undefined
  /** Its piece list has neither come nor failed yet: it is still being reached. */
  listAwaited: boolean
  inFlight: Set<number>
  window: number
  banned: boolean
  unavailableUntil: number
  failuresInARow: number
  /** Why its last request failed, for the error a stalled download ends with. */
  lastFailure?: string
  piecesServed: number
  /** The shortest time from request to piece of this peer so far: its delay with nothing queued. */
  fastestPieceMs: number
  /** Pieces it redirected (a seed that sent them elsewhere), not asked of it again until then. */
  redirectedUntil: Map<number, number>
  /** Pieces it suggested instead, asked of it first. */
  suggested: number[]
}

interface Request {
  peer: PeerState
  index: number
  controller: AbortController
}

const log = createLogger('p2p:swarm')

/** The options given as numbers: a NaN or a negative cap would stall the download, not fail it. */
const numericOptionsSchema = z.object({
  maxInFlightPerPeer: z.number().int().positive().optional(),
  maxInFlightBytesPerPeer: positiveOrUnlimited.optional(),
  maxInFlightBytes: positiveOrUnlimited.optional(),
  queueingTargetMs: z.number().nonnegative().optional(),
  pieceTimeoutMs: timerMs.optional(),
  stallTimeoutMs: positiveOrUnlimited.optional(),
  haveRefreshMs: timerMs.optional(),
  randomFirstPieces: z.number().int().nonnegative().optional(),
})

/** How long a piece a seed redirected is not asked of it again: the peer it went to has it by then. */
const REDIRECT_HOLD_MS = 2_000

/** From this piece size on, a request counts out of its peer's window once its piece is handed to the writing thread, not once it is verified. */
const OVERLAP_WRITES_FROM_PIECE_SIZE = 16 * 1024 * 1024

export async function downloadFromPeers(
  options: SwarmDownloadOptions,
): Promise<SwarmDownloadResult> {
  parseArgument(numericOptionsSchema, options, 'options')
  checkPeerAddresses(options.peers, 'options.peers')
  const { node, path } = options
  const pieceIndex =
    options.pieceIndex instanceof PieceIndex
      ? options.pieceIndex
      : PieceIndex.fromJSON(options.pieceIndex)
  const digest = pieceIndex.sha256
  const pieces = Math.ceil(pieceIndex.size / pieceIndex.pieceSize)
  const started = performance.now()
  const maxWindow =
    options.maxInFlightPerPeer ??
    Math.min(
      16,
      Math.max(
        2,
        Math.floor((options.maxInFlightBytesPerPeer ?? 64 * 1024 * 1024) / pieceIndex.pieceSize),
      ),
    )
  const maxRequests = Math.max(
    2,
    Math.floor((options.maxInFlightBytes ?? 256 * 1024 * 1024) / pieceIndex.pieceSize),
  )
  const pieceTimeoutMs = options.pieceTimeoutMs ?? 30_000
  const queueingTargetMs = options.queueingTargetMs ?? 100
  const stallTimeoutMs = options.stallTimeoutMs ?? 60_000
  const randomFirst = options.randomFirstPieces ?? 4
  throwIfAborted(options.signal)

  const journal = await Journal.open(`${path}.journal`, {
    size: pieceIndex.size,
    pieceSize: pieceIndex.pieceSize,
    key: digest,
    verification: 'pieces',
  })
  // What is left to fetch must fit on the disk: refused before anything is asked for, rather than
  // stopped by a full disk hours into a large model.
  let resumedBytes = 0
  for (const index of journal.pieces) {
    const { start, end } = pieceIndex.range(index)
    resumedBytes += end - start
  }
  const noSpace = insufficientSpace({
    path,
    digest,
    neededBytes: pieceIndex.size - resumedBytes,
    freeBytes: await nodeFileSystem.freeBytes(dirname(path)),
  })
  if (noSpace !== undefined) {
    await journal.close()
    throw noSpace
  }
  const file = await PieceFile.open(path, {
    size: pieceIndex.size,
    pieceSize: pieceIndex.pieceSize,
  })
  const have = new Bitfield(pieces)
  // Pieces journaled by an earlier run are read back and checked, so that the file needs no
  // whole-file pass at the end: every piece of it was verified against the piece index.
  for (const index of journal.pieces) {
    const { start, end } = pieceIndex.range(index)
    if (pieceIndex.verifyPiece(index, await file.read(end - start, start))) have.set(index)
  }
  const resumedPieces = have.count
  let succeeded = false
  const stopServing =
    options.serve === false
      ? () => {}
      : node.provider.serve(digest, {
          size: pieceIndex.size,
          pieceSize: pieceIndex.pieceSize,
          have,
          path,
        })

  // A node that downloads a blob serves it too: tell the DHT (one record per blob).
  if (options.serve !== false) void node.announce(digest).catch(() => {})
  const peers: PeerState[] = options.peers.map((address) => ({
    id: peerIdOf(address),
    address,
    have: undefined,
    listAwaited: true,
    inFlight: new Set(),
    window: Math.min(2, maxWindow),
    banned: false,
    unavailableUntil: 0,
    failuresInARow: 0,
    piecesServed: 0,
    fastestPieceMs: Number.POSITIVE_INFINITY,
    redirectedUntil: new Map(),
    suggested: [],
  }))
  const requests = new Map<number, Request[]>()
  /** Requests running over all peers (`requests` maps a piece to its requests, endgame duplicates included). */
  let requestsRunning = 0
  /** Where the next pump starts its turns, so that no peer is always first when the cap binds. */
  let firstPeer = 0
  /** Pieces with the writing thread, not verified yet: none is asked for again meanwhile. */
  const writing = new Set<number>()
  let endgameReported = false
  const banned: SwarmDownloadResult['banned'] = []
  let wastedPieces = 0
  let lastProgressAt = performance.now()
  const done = new AbortController()
  const signal = anySignal(options.signal, done.signal)
  // The download's end (or its caller's abort) ends every request still running.
  signal.addEventListener(
    'abort',
    () => {
      for (const list of requests.values()) for (const request of list) request.controller.abort()
    },
    { once: true },
  )

  let settle!: { resolve: () => void; reject: (error: unknown) => void }
  const finished = new Promise<void>((resolve, reject) => {
    settle = { resolve, reject }
  })

  const ban = (peer: PeerState, reason: string, index: number) => {
    if (peer.banned) return
    peer.banned = true
    order.invalidate()
    banned.push({ peer: peer.id, reason, afterMs: performance.now() - started })
    log('banned %s: %s (piece %d)', peer.id, reason, index)
    emitProgress(options, 'p2p:peer-banned', { digest, peer: peer.id, reason, piece: index })
    for (const list of requests.values())
      for (const request of list) if (request.peer === peer) request.controller.abort()
  }

  // Rebuilt at most every 50 ms, or less often for many pieces (a rebuild reads every peer's bit
  // for every missing piece): 256 ms for the 25,600 pieces of a 100 GB model.
  const order = new PieceOrder(
    have,
    function* () {
      for (const peer of peers) if (!peer.banned && peer.have !== undefined) yield peer.have
    },
    Math.max(50, pieces / 100),
  )
  /**
   * The next piece to ask `peer` for: one it suggested, if still needed; else at random for the
   * first few pieces, then rarest first (see PieceOrder), one that no request asks for yet, that
   * is not being written and that the peer did not redirect lately; in the endgame, the first that
   * only one asks for, when no such piece is left.
   */
  const choosePiece = (peer: PeerState, endgame: boolean): number | undefined => {
    const held = peer.have
    if (held === undefined) return undefined
    while (peer.suggested.length > 0) {
      const index = peer.suggested.pop()!
      if (held.has(index) && !have.has(index) && !writing.has(index) && !requests.has(index))
        return index
    }
    const now = performance.now()
    let duplicate: number | undefined
    const first = order.find((index) => {
      if (!held.has(index) || peer.inFlight.has(index) || writing.has(index)) return false
      const redirectedUntil = peer.redirectedUntil.get(index)
      if (redirectedUntil !== undefined) {
        if (now < redirectedUntil) return false
        peer.redirectedUntil.delete(index)
      }
      const running = requests.get(index)?.length ?? 0
      if (running === 0) return true
      if (endgame && running < 2) duplicate ??= index
      return false
    }, have.count < randomFirst)
    return first ?? duplicate
  }

  const pump = () => {
    if (signal.aborted) return
    if (have.complete) {
      settle.resolve()
      return
    }
    const now = performance.now()
    // The endgame: every missing piece has a request running (`requests`: an entry goes with its
    // last request) or is with the writing thread, not verified yet (`writing`).
    let beingWritten = 0
    for (const index of writing) if (!requests.has(index)) beingWritten++
    const endgame = requests.size + beingWritten >= pieces - have.count
    if (endgame && !endgameReported) {
      endgameReported = true
      emitProgress(options, 'p2p:endgame', { digest, verified: have.count, pieces })
    }
    // Level by level: every peer up to one request, then up to two, and so on, each up to its
    // window, so that when the cap over all peers (`maxRequests`) binds, it is shared evenly and
    // no peer sits idle while another holds two. Each pump starts with another peer. Peers still
    // being reached keep their share of the cap, so that the first to answer do not take it all.
    firstPeer = (firstPeer + 1) % Math.max(1, peers.length)
    let usable = 0
    let awaited = 0
    for (const peer of peers) {
      if (peer.banned) continue
      usable++
      if (peer.listAwaited) awaited++
    }
    const share = Math.max(1, Math.floor(maxRequests / Math.max(1, usable)))
    const limit = Math.max(1, maxRequests - awaited * share)
    /** Peers with nothing left to ask for in this pump. */
    const exhausted = new Array<boolean>(peers.length).fill(false)
    for (let level = 1; level <= maxWindow && requestsRunning < limit; level++) {
      for (let turn = 0; turn < peers.length && requestsRunning < limit; turn++) {
        const position = (firstPeer + turn) % peers.length
        const peer = peers[position]!
        if (exhausted[position] || peer.banned || peer.have === undefined) continue
        if (now < peer.unavailableUntil) continue
        const room = Math.min(level, peer.window)
        while (peer.inFlight.size < room && requestsRunning < limit) {
          const index = choosePiece(peer, endgame)
          if (index === undefined) {
            exhausted[position] = true
            break
          }
          request(peer, index)
        }
      }
    }
    if (requests.size === 0 && now - lastProgressAt > stallTimeoutMs)
      settle.reject(
        new PeerError({
          code: 'LLMESH_SWARM_EXHAUSTED',
          digest,
          message: `No peer delivered a piece of ${digest} for ${stallTimeoutMs / 1000} s; ${have.count} of ${pieces} pieces are verified and kept for a resume. Banned: ${banned.map((entry) => `${entry.peer} (${entry.reason})`).join(', ') || 'none'}. Last failures: ${
            peers
              .filter((peer) => peer.lastFailure !== undefined)
              .map((peer) => `${peer.id} (${peer.lastFailure})`)
              .join(', ') || 'none'
          }.`,
        }),
      )
  }

  /**
   * A peer's window follows how long its pieces queue there (LEDBAT's idea, per piece): it grows
   * while a piece comes within the target of the fastest one it delivered, and shrinks past twice
   * the target. A peer that serves many (a seed, an upload limit) thus holds few requests of each,
   * so that its pieces are asked for when they are needed, and leechers seldom ask it, at once,
   * for the same pieces (its upload is the swarm's scarcest bandwidth); a fast peer, or one far
   * away, where the delay is its distance and not a queue, gets the full window.
   */
  const adjustWindow = (peer: PeerState, pieceMs: number) => {
    peer.fastestPieceMs = Math.min(peer.fastestPieceMs, pieceMs)
    const queuedMs = pieceMs - peer.fastestPieceMs
    if (queuedMs <= queueingTargetMs) peer.window = Math.min(maxWindow, peer.window + 1)
    else if (queuedMs > 2 * queueingTargetMs && peer.window > 2) peer.window--
  }

  const overlapWrites = pieceIndex.pieceSize >= OVERLAP_WRITES_FROM_PIECE_SIZE
  const request = (peer: PeerState, index: number) => {
    const controller = new AbortController()
    const entry: Request = { peer, index, controller }
    const list = requests.get(index) ?? []
    list.push(entry)
    requests.set(index, list)
    peer.inFlight.add(index)
    requestsRunning++
    // A timer per request, cleared with it: an AbortSignal.timeout would live its whole 30 s, and
    // keep the request's objects alive as long (old-generation garbage, a full collection's work).
    let timedOut = false
    const timer = setTimeout(() => {
      timedOut = true
      controller.abort()
    }, pieceTimeoutMs)
    const requestedAt = performance.now()
    // The request counts against its peer's window until its piece is verified, so that a peer
    // that lies costs one piece. Pieces of 16 MiB or more count out once the writing thread has
    // them: a window holds few of them (4 of 16 MiB by default), and the next one must arrive
    // while this one is hashed and written (for pieces of 32 MiB, the default of a 100 GiB model,
    // the two take about as long), at the price of a second piece a liar may send meanwhile.
    let ended = false
    const end = () => {
      if (ended) return
      ended = true
      clearTimeout(timer)
      peer.inFlight.delete(index)
      requestsRunning--
      const remaining = (requests.get(index) ?? []).filter((other) => other !== entry)
      if (remaining.length === 0) requests.delete(index)
      else requests.set(index, remaining)
    }
    node
      .piece(peer.address, digest, index, { signal: controller.signal, redirect: true })
      .then(async (chunks) => {
        clearTimeout(timer)
        adjustWindow(peer, performance.now() - requestedAt)
        const range = pieceIndex.range(index)
        const length = chunks.reduce((sum, chunk) => sum + chunk.byteLength, 0)
        // Verified even when another copy came first (then not written): a liar is caught by any
        // bad piece it sends. Claimed before the first await, so that it is written once.
        const write = !have.has(index) && !writing.has(index)
        if (write) writing.add(index)
        let valid = false
        try {
          if (length === range.end - range.start) {
            const { written } = await file.handOver(chunks, {
              position: range.start,
              sha256: pieceIndex.hashOf(index),
              write,
              signal,
            })
            if (overlapWrites) {
              end()
              pump()
            }
            valid = await written
          }
          if (valid && write) await journal.append(index)
        } catch (error) {
          if (write) writing.delete(index)
          // The disk (full, say) or the writing thread failed, not the peer: the download stops
          // with that error, and the pieces journaled so far are kept for a resume.
          if (!signal.aborted)
            settle.reject(diskFullError(error, { path, digest, verifiedPieces: have.count }))
          return
        }
        if (!valid) {
          if (write) writing.delete(index)
          wastedPieces++
          ban(peer, 'sent a piece that failed verification', index)
          return
        }
        if (!write) {
          wastedPieces++
          return
        }
        have.set(index)
        writing.delete(index)
        lastProgressAt = performance.now()
        peer.piecesServed++
        peer.failuresInARow = 0
        emitProgress(options, 'p2p:piece-verified', {
          digest,
          index,
          peer: peer.id,
          verified: have.count,
          pieces,
        })
        // Endgame losers: the piece is here.
        for (const other of requests.get(index) ?? []) if (other !== entry) other.controller.abort()
      })
      .catch((error: unknown) => {
        if (signal.aborted || (controller.signal.aborted && !timedOut)) return
        // A seed sent this piece elsewhere (super-seeding): not a failure. Its suggestion is
        // asked for next, and this piece of the peer that has it.
        if (PeerError.isInstance(error) && error.code === 'LLMESH_PEER_SENT_ELSEWHERE') {
          peer.redirectedUntil.set(index, performance.now() + REDIRECT_HOLD_MS)
          if (error.suggestedPiece !== undefined && error.suggestedPiece < pieces)
            peer.suggested.push(error.suggestedPiece)
          return
        }
        if (
          PeerError.isInstance(error) &&
          error.code === 'LLMESH_PEER_PIECE_NOT_HELD' &&
          peer.have?.has(index)
        ) {
          ban(peer, 'advertised a piece it does not have', index)
          return
        }
        if (
          PeerError.isInstance(error) &&
          (error.code === 'LLMESH_PEER_UNKNOWN_DIGEST' || error.code === 'LLMESH_PEER_PROTOCOL')
        ) {
          ban(peer, error.message, index)
          return
        }
        // "Busy" while the peer still serves other requests of ours is its cap on uploads, not a
        // failure: the window comes down to the requests it took, and no pause follows. (Counted
        // as failures, a window over the cap brought a burst of them, and a backoff of up to 10 s.)
        if (
          PeerError.isInstance(error) &&
          error.code === 'LLMESH_PEER_BUSY' &&
          peer.inFlight.size > 1
        ) {
          peer.window = Math.min(peer.window, peer.inFlight.size - 1)
          return
        }
        peer.failuresInARow++
        peer.lastFailure = error instanceof Error ? error.message : String(error)
        if (timedOut) {
          peer.window = 1
          peer.unavailableUntil = performance.now() + 10_000
          emitProgress(options, 'p2p:peer-snubbed', {
            digest,
            peer: peer.id,
            reason: `piece ${index} took over ${pieceTimeoutMs} ms`,
          })
        } else {
          peer.window = Math.max(1, Math.floor(peer.window / 2))
          peer.unavailableUntil =
            performance.now() + Math.min(10_000, 250 * 2 ** peer.failuresInARow)
        }
      })
      .finally(() => {
        end()
        pump()
      })
  }

  // Each peer's piece list is watched: the peer pushes the pieces it verifies, so that the rarest
  // first choice and the endgame see them at once. A watch that ends early (the peer does not
  // serve the blob yet, or went away) is opened again after `haveRefreshMs`.
  const watch = async (peer: PeerState) => {
    while (!signal.aborted && !peer.banned && !(peer.have?.complete ?? false)) {
      try {
        for await (const answer of node.watchHave(peer.address, digest, { signal })) {
          if (answer.size !== pieceIndex.size || answer.pieceSize !== pieceIndex.pieceSize) {
            ban(
              peer,
              `announced ${answer.size} bytes in pieces of ${answer.pieceSize}, not the manifest's`,
              -1,
            )
            return
          }
          peer.have = answer.have
          peer.listAwaited = false
          order.invalidate()
          pumpSoon()
        }
      } catch (error) {
        if (signal.aborted) return
        if (PeerError.isInstance(error) && error.code === 'LLMESH_PEER_UNKNOWN_DIGEST') {
          peer.have = new Bitfield(pieces) // it does not serve the blob (yet, or any more)
          order.invalidate()
        } else if (PeerError.isInstance(error) && error.code === 'LLMESH_PEER_PROTOCOL') {
          ban(peer, error.message, -1)
          return
        } else peer.unavailableUntil = performance.now() + 1_000
      }
      // Ended early, or failed: no share of the cap is kept for it any more.
      if (peer.listAwaited) {
        peer.listAwaited = false
        pumpSoon()
      }
      await sleep(options.haveRefreshMs ?? 1_000, { signal }).catch(() => {})
    }
  }
  let pumpScheduled = false
  const pumpSoon = () => {
    if (pumpScheduled) return
    pumpScheduled = true
    setImmediate(() => {
      pumpScheduled = false
      pump()
    })
  }

  // Also once a second: snubbed peers come back, and a stall is noticed.
  const ticker = setInterval(pump, 1_000)
  const onAbort = () => settle.reject(options.signal?.reason ?? new Error('aborted'))
  options.signal?.addEventListener('abort', onAbort, { once: true })
  try {
    for (const peer of peers) void watch(peer)
    await finished
    done.abort()
    await file.sync()
    succeeded = true
  } finally {
    clearInterval(ticker)
    options.signal?.removeEventListener('abort', onAbort)
    done.abort()
    if (!succeeded) stopServing()
    await journal.close()
    await file.close()
  }
  const piecesByPeer: Record<string, number> = {}
  for (const peer of peers) if (peer.piecesServed > 0) piecesByPeer[peer.id] = peer.piecesServed
  return {
    digest,
    size: pieceIndex.size,
    stopServing,
    resumedPieces,
    piecesByPeer,
    wastedPieces,
    banned,
  }
}
