import { createHash } from 'node:crypto'
/**
 * The engine: one file, cut into pieces, fetched from every usable source at once, each piece
 * verified in memory before it touches the disk, the whole-file sha256 computed on a worker in
 * the same pass, and a journal that lets the next run resume after a crash.
 */
import { rm, statfs } from 'node:fs/promises'
import { dirname } from 'node:path'
import {
  type AbortOptions,
  type ByteSource,
  ByteSourceError,
  backoffDelay,
  createLogger,
  emitProgress,
  isAbortError,
  type Logger,
  type ProgressOptions,
  throwIfAborted,
} from '@llmesh/core'
import { defaultPieceSize, type PieceIndex, pieceCount, pieceRange } from '@llmesh/manifest'
import { DownloadError, type SourceFailure, systemErrorCode } from './errors.js'
import { Journal } from './journal.js'
import { openPartialFile, writeAll } from './partial-files.js'
import type { DownloadProgressEvent } from './progress.js'
import { SharedMemoryCopier } from './shared-memory.js'
import { TokenBucket } from './token-bucket.js'
import { type HasherMessage, PieceSlots, WholeFileHasher } from './whole-file-hasher.js'

/** How the finished file was proven right. */
export type Verification =
  /** Every piece against the manifest's piece hashes, and the whole file against its sha256. */
  | 'pieces+sha256'
  /** The whole file against its sha256 only (no per-piece data was available). */
  | 'sha256'
  /** Only the size: nobody said what the sha256 should be (a bare `hf:` URI on a hub without it). */
  | 'size'

/** A cap on connections per host, shared by every download of one downloader. */
export class HostConnectionLimiter {
  private readonly active = new Map<string, number>()
  constructor(readonly maxPerHost: number) {}
  canOpen(host: string | undefined): boolean {
    return host === undefined || (this.active.get(host) ?? 0) < this.maxPerHost
  }
  opened(host: string | undefined): void {
    if (host !== undefined) this.active.set(host, (this.active.get(host) ?? 0) + 1)
  }
  closed(host: string | undefined): void {
    if (host !== undefined) this.active.set(host, (this.active.get(host) ?? 1) - 1)
  }
}

/** Where a piece's bytes go: the partial file, behind an interface so a test can fill the disk. */
export interface PartialFileHandle {
  write(bytes: Uint8Array, position: number): Promise<void>
  sync(): Promise<void>
  close(): Promise<void>
}

export interface PartialFileSystem {
  openPartial(path: string): Promise<PartialFileHandle>
  /** Bytes free for an unprivileged user on the file system holding `directory`. */
  freeBytes(directory: string): Promise<number>
}

export const nodeFileSystem: PartialFileSystem = {
  async openPartial(path) {
    const handle = await openPartialFile(path)
    return {
      write: (bytes, position) => writeAll(handle, bytes, position),
      sync: () => handle.sync(),
      close: () => handle.close(),
    }
  },
  async freeBytes(directory) {
    const { bavail, bsize } = await statfs(directory)
    return bavail * bsize
  },
}

/** One source's record in one download, for the attempt log and source statistics. */
export interface SourceAttempt {
  source: string
  kind: string
  bytes: number
  pieces: number
  durationMs: number
  failures: number
  corruptPieces: number[]
  outcome: 'ok' | 'failed' | 'dropped' | 'unused'
  error: { code: string; message: string } | undefined
}

export interface DownloadBlobOptions extends AbortOptions, ProgressOptions<DownloadProgressEvent> {
  /** Expected sha256 (hex); without it the file is checked by size only, and the result says so. */
  sha256: string | undefined
  size: number
  /** Per-piece hashes, already checked against the manifest. */
  pieceIndex?: PieceIndex | undefined
  sources: ByteSource[]
  partialPath: string
  journalPath: string
  /** Requests in flight for this file at once. Default 16. */
  connections?: number
  /** Connections a source starts with; more are added while they raise its throughput. Default 2. */
  initialConnectionsPerSource?: number
  /** Default 8. */
  maxConnectionsPerSource?: number
  hostLimiter?: HostConnectionLimiter
  /** Give up on a request that receives nothing (headers or body) for this long. Default 20 s. */
  stallTimeoutMs?: number
  /** Failures in a row (without progress in between) before a source is dropped. Default 8. */
  maxConsecutiveFailures?: number
  globalBandwidth?: TokenBucket | undefined
  /** Bytes per second per source, off by default. */
  sourceBandwidth?: number | undefined
  /** Piece size when there is no piece index. Default: `defaultPieceSize(size)`. */
  pieceSize?: number
  /**
   * Memory for piece buffers, allocated once: it bounds the pieces in flight and those waiting
   * for the whole-file digest. Default 128 MiB (at least two pieces).
   */
  memoryBudgetBytes?: number
  fileSystem?: PartialFileSystem
  logger?: Logger
  /** Called once with every source's record, whether the download succeeded or not. */
  onAttempts?: (attempts: SourceAttempt[]) => void
  /**
   * With a piece index: piece `index` is verified and its bytes are in the partial file (a piece
   * of this run once written, one of an earlier run once read back intact).
   */
  onPieceVerified?: (index: number) => void
}

export interface DownloadedBlob {
  sha256: string
  size: number
  verification: Verification
  /** Bytes received from sources in this run (including any that failed verification). */
  receivedBytes: number
  /** Bytes found already verified in the partial file from an earlier run. */
  resumedBytes: number
  durationMs: number
  attempts: SourceAttempt[]
}

interface SourceState {
  source: ByteSource
  host: string | undefined
  bandwidth: TokenBucket | undefined
  allowed: number
  active: number
  strikes: number
  consecutiveFailures: number
  retryAt: number
  dropped: boolean
  attempt: SourceAttempt
  roundStartedAt: number
  roundPieces: number
  roundBytes: number
  lastRoundRate: number
}

/**
 * One request to one source for one piece, with the slot its bytes go to. (Longer runs of pieces
 * per request measured no faster here, and they let a server push bytes past a piece boundary that
 * a crash then wastes.)
 */
interface PieceRequest {
  piece: number
  slot: number
  state: SourceState
  controller: AbortController
  startedAt: number
  /** False once its bytes are all in (then it is verified and written). */
  receiving: boolean
  /**
   * The piece's only request when it started: it writes its bytes to the partial file as they
   * arrive, so that little is left to write when the last one lands. A hedge writes at commit.
   */
  writesAhead: boolean
  /** Bytes of the piece handed to the file so far (by `writesAhead` requests). */
  writtenUpTo: number
  /** The write in progress, if any; it never rejects (a failure lands in `writeFailure`). */
  pendingWrite: Promise<void> | undefined
  writeFailure: unknown
}

/** Written bytes between two background flushes of the partial file. */
const SYNC_EVERY_BYTES = 64 * 1024 * 1024

class Superseded extends Error {
  constructor() {
    super('another request delivered this piece first')
  }
}

export async function downloadBlob(options: DownloadBlobOptions): Promise<DownloadedBlob> {
  const {
    size,
    pieceIndex,
    signal,
    connections = 16,
    initialConnectionsPerSource = 2,
    maxConnectionsPerSource = 8,
    hostLimiter,
    stallTimeoutMs = 20_000,
    maxConsecutiveFailures = 8,
    globalBandwidth,
    fileSystem = nodeFileSystem,
    logger = createLogger('downloader'),
  } = options
  const expected = options.sha256
  const startedAt = performance.now()
  const pieceSize = pieceIndex?.pieceSize ?? options.pieceSize ?? defaultPieceSize(size)
  const count = pieceCount(size, pieceSize)
  const digestKey = expected ?? `unknown-${size}`
  const log = logger

  if (options.sources.length === 0)
    throw new DownloadError({
      code: 'LLMESH_NO_SOURCES',
      message: `No source to download ${digestKey} from`,
      digest: expected,
    })

  const header = {
    size,
    pieceSize,
    key: expected ?? `size-${size}`,
    verification: pieceIndex === undefined ? ('none' as const) : ('pieces' as const),
  }
  // Data written under another header (another file, piece size or mode) cannot be trusted.
  if (!(await Journal.matches(options.journalPath, header)))
    await rm(options.partialPath, { force: true })
  const journal = await Journal.open(options.journalPath, header)
  const done = new Set<number>(journal.pieces)
  const resumedBytes = [...done].reduce(
    (sum, index) => sum + rangeOf(index).end - rangeOf(index).start,
    0,
  )

  const noSpace = insufficientSpace({
    path: options.partialPath,
    digest: expected,
    neededBytes: size - resumedBytes,
    freeBytes: await fileSystem.freeBytes(dirname(options.partialPath)),
    advice: 'Free some space (llmesh prune) or point LLMESH_HOME elsewhere.',
  })
  if (noSpace !== undefined) {
    await journal.close()
    throw noSpace
  }

  const file = await fileSystem.openPartial(options.partialPath)
  const states: SourceState[] = options.sources.map((source) => ({
    source,
    host: hostOf(source),
    bandwidth:
      options.sourceBandwidth === undefined ? undefined : new TokenBucket(options.sourceBandwidth),
    allowed: Math.min(initialConnectionsPerSource, maxConnectionsPerSource),
    active: 0,
    strikes: 0,
    consecutiveFailures: 0,
    retryAt: 0,
    dropped: false,
    attempt: {
      source: source.id,
      kind: source.kind,
      bytes: 0,
      pieces: 0,
      durationMs: 0,
      failures: 0,
      corruptPieces: [],
      outcome: 'unused',
      error: undefined,
    },
    roundStartedAt: 0,
    roundPieces: 0,
    roundBytes: 0,
    lastRoundRate: 0,
  }))

  // Twice the connections, so that pieces waiting for the digest do not starve new requests,
  // within the memory budget.
  const slots = new PieceSlots(
    Math.max(
      2,
      Math.min(
        2 * connections,
        Math.floor((options.memoryBudgetBytes ?? 128 * 1024 * 1024) / pieceSize),
      ),
    ),
    pieceSize,
  )
  // Pieces arrive in the slots' shared memory: see SharedMemoryCopier.
  const copier = new SharedMemoryCopier()
  const active = new Map<number, Set<PieceRequest>>()
  /** Requests whose bytes are still arriving. */
  const receiving = new Set<PieceRequest>()
  /**
   * Requests from their start until their piece is journaled or given up: what counts against
   * `connections`. A connection takes its next piece only when its last one is on disk and in the
   * journal, so a crash at any moment costs at most `connections` pieces.
   */
  const unsettled = new Set<PieceRequest>()
  /** Bytes a `writesAhead` request gathers before handing them to the file. */
  const writeAheadBytes = Math.min(1024 * 1024, Math.max(16 * 1024, Math.floor(pieceSize / 4)))
  /** Pieces being written right now. */
  const committing = new Set<number>()
  // The file is flushed to disk in the background as it grows, so the flush that must precede
  // publishing (a blob has to survive a power cut) has little left to do at the end.
  let backgroundSync: Promise<void> = Promise.resolve()
  let syncing = false
  let unsyncedBytes = 0
  /** Sources that served a bad copy of a piece: asked for it again only when nobody else can. */
  const avoid = new Map<number, Set<SourceState>>()
  /** Verified pieces still in their slot, waiting for the digest to reach them. */
  const waiting = new Map<number, number>()
  let hashCursor = 0
  let receivedBytes = 0
  let verifiedBytes = 0
  let wholeDigest: string | undefined
  let fatal: unknown
  let typicalPieceMs = 0
  let lowestMissing = 0
  let lastProgressAt = 0
  /** Since when nothing is in flight while pieces are missing (sources that hold none of them). */
  let idleSince: number | undefined
  let finishSent = false
  /** Pieces from an earlier run that the hasher read back intact. */
  const readBack = new Set<number>()
  const bySource: Record<string, number> = {}

  let wake: (() => void) | undefined
  const notify = () => {
    const resolve = wake
    wake = undefined
    resolve?.()
  }
  const hasherMessages: HasherMessage[] = []
  const hasher = new WholeFileHasher(
    slots,
    options.partialPath,
    (message) => {
      hasherMessages.push(message)
      notify()
    },
    (error) => {
      fatal ??= error
      notify()
    },
  )
  const onAbort = () => notify()
  signal?.addEventListener('abort', onAbort)

  emitProgress(options, 'download:started', {
    sha256: expected,
    size,
    pieceSize,
    pieces: count,
    resumedBytes,
    sources: states.map((state) => state.source.id),
  })
  // Pieces from an earlier run enter the digest first (read back and checked by the worker);
  // until then they do not count as verified, so progress never has to go backwards.
  advanceHasher()

  try {
    for (;;) {
      throwIfAborted(signal)
      if (fatal !== undefined) throw fatal
      for (const message of hasherMessages.splice(0)) onHasherMessage(message)
      if (wholeDigest !== undefined) break
      schedule()
      const inFlight = receivingCount()
      const now = performance.now()
      const usable = states.filter((state) => !state.dropped)
      if (inFlight === 0 && done.size < count && usable.length === 0) throw exhausted()
      // Sources that hold none of the missing pieces (peers still downloading) are waited for,
      // up to the stall timeout.
      if (inFlight > 0 || done.size === count || usable.some(holdsAMissingPiece))
        idleSince = undefined
      else if (idleSince === undefined) idleSince = now
      else if (now - idleSince > stallTimeoutMs) throw exhausted({ idle: true })
      // Wake for the end of a backoff, for a hedge that comes due, and, while something waits on
      // a capacity nobody announces (a host cap shared with other downloads), every 250 ms.
      let wakeAt = Math.min(
        Number.POSITIVE_INFINITY,
        ...usable.filter((state) => state.retryAt > now).map((state) => state.retryAt),
      )
      if (inFlight === 0 && done.size < count) wakeAt = Math.min(wakeAt, now + 250)
      if (inFlight > 0 && lowestMissingIndex() === undefined) {
        const hedgeAt = nextHedgeAt()
        wakeAt = Math.min(wakeAt, hedgeAt > now ? hedgeAt : now + 250)
      }
      await new Promise<void>((resolve) => {
        wake = resolve
        if (hasherMessages.length > 0 || fatal !== undefined || signal?.aborted) notify()
        if (Number.isFinite(wakeAt)) {
          const timer = setTimeout(notify, Math.max(0, wakeAt - performance.now()))
          const clear = wake
          wake = () => {
            clearTimeout(timer)
            clear()
          }
        }
      })
    }
  } catch (error) {
    for (const request of receiving) request.controller.abort(error)
    await hasher.close()
    await file.close().catch(() => {})
    await journal.close()
    signal?.removeEventListener('abort', onAbort)
    finishAttempts()
    throw error
  }
  signal?.removeEventListener('abort', onAbort)
  await hasher.close()
  await journal.close()
  finishAttempts()

  const sha256 = wholeDigest
  if (expected !== undefined && sha256 !== expected) {
    await file.close()
    await rm(options.partialPath, { force: true })
    await rm(options.journalPath, { force: true })
    throw new DownloadError({
      code: 'LLMESH_CHECKSUM_MISMATCH',
      digest: expected,
      message:
        pieceIndex === undefined
          ? `The downloaded file's sha256 is ${sha256}, not ${expected}. Without per-piece hashes the bad bytes cannot be located, so the partial file was deleted; the next pull starts from zero.`
          : `Every piece matched the manifest's piece hashes, but the file's sha256 is ${sha256}, not ${expected}: the manifest contradicts itself. Ask its publisher for a corrected one.`,
    })
  }
  await backgroundSync
  await file.sync()
  await file.close()
  const verification: Verification =
    expected === undefined ? 'size' : pieceIndex === undefined ? 'sha256' : 'pieces+sha256'
  emitProgress(options, 'download:verified', { sha256, size, verification })
  return {
    sha256,
    size,
    verification,
    receivedBytes,
    resumedBytes,
    durationMs: performance.now() - startedAt,
    attempts: states.map((state) => state.attempt),
  }

  function rangeOf(index: number) {
    return pieceRange(index, size, pieceSize)
  }

  /** Requests not yet journaled or given up: what counts against `connections`. */
  function receivingCount(): number {
    return unsettled.size
  }

  function lowestMissingIndex(): number | undefined {
    while (lowestMissing < count && done.has(lowestMissing)) lowestMissing++
    for (let index = lowestMissing; index < count; index++)
      if (!done.has(index) && !active.has(index)) return index
    return undefined
  }

  /**
   * For a source that holds everything (a mirror) beside peers that tell what they hold: a piece
   * that no peer holds, at random. Nodes that pull the same file at once then take different
   * pieces from the mirror and trade them, where in order they would fetch the same ones (two
   * nodes ask for the same piece only where both draw it while neither holds it yet). Pieces are
   * digested in order, so many are read back from the partial file for the whole-file digest.
   */
  function pickPieceNoPeerHolds(
    state: SourceState,
    peers: SourceState[],
    others: SourceState[],
  ): number | undefined {
    let candidates = 0
    let chosen: number | undefined
    for (let index = lowestMissing; index < count; index++) {
      if (done.has(index) || active.has(index)) continue
      if (peers.some((peer) => holds(peer, index))) continue
      if (avoided(state, index, others)) continue
      // Each candidate replaces the choice with probability 1/n: a uniform draw in one pass.
      if (Math.random() * ++candidates < 1) chosen = index
    }
    return chosen
  }

  /** A source that served a bad copy of a piece gets it again only if nobody else can serve it. */
  function avoided(state: SourceState, piece: number, others: SourceState[]): boolean {
    const blamed = avoid.get(piece)
    return blamed?.has(state) === true && others.some((other) => !blamed.has(other))
  }

  function spares(peer: SourceState, piece: number, now: number): boolean {
    return usableNow(peer, now) && holds(peer, piece)
  }

  /** Whether a source holds a piece, as far as it can tell (a peer that is still downloading). */
  function holds(state: SourceState, piece: number): boolean {
    if (state.source.holds === undefined) return true
    const { start, end } = rangeOf(piece)
    return state.source.holds(digestKey, start, end)
  }

  function holdsAMissingPiece(state: SourceState): boolean {
    for (let index = lowestMissing; index < count; index++)
      if (!done.has(index) && holds(state, index)) return true
    return false
  }

  function usableNow(state: SourceState, now: number): boolean {
    return (
      !state.dropped &&
      state.retryAt <= now &&
      state.active < (state.source.sequential === true ? 1 : state.allowed) &&
      (hostLimiter?.canOpen(state.host) ?? true)
    )
  }

  function schedule(): void {
    const now = performance.now()
    let inFlight = receivingCount()
    let progressed = true
    while (progressed && inFlight < connections && ensureSlot()) {
      progressed = false
      // Fastest sources first, so they get the lowest pieces and the hasher's cursor moves.
      const ready = states
        .filter((state) => usableNow(state, now))
        .sort((a, b) => b.lastRoundRate - a.lastRoundRate)
      for (const state of ready) {
        if (inFlight >= connections || !usableNow(state, now) || !ensureSlot()) continue
        const piece = pickPiece(state, now)
        if (piece === undefined) continue
        start(piece, state)
        inFlight++
        progressed = true
      }
    }
  }

  /**
   * True when a slot is free for a new request. When every slot is taken and some hold pieces
   * waiting for the digest, the one furthest from the cursor gives its slot up: it will be read
   * back from the partial file instead, which is rare and cheap next to a stalled download.
   */
  function ensureSlot(): boolean {
    if (slots.available > 0) return true
    let furthest: number | undefined
    for (const piece of waiting.keys())
      if (piece !== hashCursor && (furthest === undefined || piece > furthest)) furthest = piece
    if (furthest === undefined) return false
    slots.release(waiting.get(furthest)!)
    waiting.delete(furthest)
    return true
  }

  function pickPiece(state: SourceState, now: number): number | undefined {
    const others = states.filter((other) => other !== state && !other.dropped)
    // At random beside peers that take part in the blob, even those that hold nothing yet: two
    // nodes that start together hold the same pieces while they go in order, so neither would ever
    // hold one the other lacks. Not beside peers that neither hold nor fetch it: random order
    // would cost the in-order whole-file digest its pace for nothing.
    const telling = others.filter((other) => other.source.holds !== undefined)
    // A source read front to back (it ignores Range) gets its pieces in order: one out of order
    // would have it start over from the first byte.
    const sequential = state.source.sequential === true
    if (
      !sequential &&
      state.source.holds === undefined &&
      telling.some((peer) => peer.source.takesPart?.(digestKey) ?? true)
    ) {
      const piece = pickPieceNoPeerHolds(state, telling, others)
      if (piece !== undefined) return piece
    }
    for (let index = lowestMissing; index < count; index++) {
      if (done.has(index) || active.has(index) || !holds(state, index)) continue
      // Left to a peer that holds it and has a connection to spare: the mirror's egress is what
      // sharing saves.
      if (state.source.holds === undefined && telling.some((peer) => spares(peer, index, now)))
        continue
      if (avoided(state, index, others)) continue
      return index
    }
    // Endgame: nothing left to hand out. Duplicate the slowest lone request, so that one slow
    // connection cannot hold the last percent; the first copy to arrive wins. Not before: pieces
    // left to a peer, or that this source does not hold, are still to be handed out. A source
    // read front to back hedges nothing: the pieces left lie behind where it stands.
    if (lowestMissingIndex() !== undefined || sequential) return undefined
    let candidate: PieceRequest | undefined
    for (const requests of active.values()) {
      if (requests.size !== 1) continue
      const [request] = requests
      if (request === undefined || !request.receiving) continue
      if (now - request.startedAt < hedgeDelay()) continue
      // Another connection to the same source helps only when there is no other source at all.
      if (request.state === state && others.length > 0) continue
      if (!holds(state, request.piece)) continue
      if (candidate === undefined || request.startedAt < candidate.startedAt) candidate = request
    }
    if (candidate !== undefined) {
      log('hedging piece %d of %s on %s', candidate.piece, digestKey, state.source.id)
      emitProgress(options, 'download:hedged', {
        sha256: expected,
        piece: candidate.piece,
        source: state.source.id,
        slowSource: candidate.state.source.id,
      })
    }
    return candidate?.piece
  }

  function hedgeDelay(): number {
    // Twice the usual time for a piece, at least half a second: hedging only what is late.
    return Math.max(500, 2 * typicalPieceMs)
  }

  function nextHedgeAt(): number {
    let earliest = Number.POSITIVE_INFINITY
    for (const requests of active.values()) {
      if (requests.size !== 1) continue
      const [request] = requests
      if (request?.receiving) earliest = Math.min(earliest, request.startedAt + hedgeDelay())
    }
    return earliest
  }

  function start(piece: number, state: SourceState): void {
    const slot = slots.acquire()
    if (slot === undefined) throw new Error('no free piece slot: ensureSlot() must run first')
    const request: PieceRequest = {
      piece,
      slot,
      state,
      controller: new AbortController(),
      startedAt: performance.now(),
      receiving: true,
      // A request that finished or failed keeps its claim until its writes have landed, so no
      // other write to this piece's range can be under way.
      writesAhead: (active.get(piece)?.size ?? 0) === 0,
      writtenUpTo: 0,
      pendingWrite: undefined,
      writeFailure: undefined,
    }
    const requests = active.get(piece) ?? new Set()
    active.set(piece, requests)
    requests.add(request)
    receiving.add(request)
    unsettled.add(request)
    state.active++
    hostLimiter?.opened(state.host)
    if (state.attempt.outcome === 'unused') state.attempt.outcome = 'ok'
    void fetchPiece(request)
  }

  async function fetchPiece(request: PieceRequest): Promise<void> {
    const { state, controller } = request
    const { start: from, end } = rangeOf(request.piece)
    const bytes = slots.view(request.slot, end - from)
    let received = 0
    let failure: unknown
    // The piece is hashed as its bytes stream in: no second pass, no copy, no thread hop.
    const pieceHash = pieceIndex === undefined ? undefined : createHash('sha256')
    // One timer per request, pushed back on every chunk (refresh() is cheaper than a new timer).
    const timer = setTimeout(
      () =>
        controller.abort(
          new ByteSourceError({
            failure: 'unavailable',
            source: state.source.id,
            digest: expected,
            message: `${state.source.id} sent nothing for ${stallTimeoutMs} ms (stalled)`,
          }),
        ),
      stallTimeoutMs,
    )
    const requestSignal =
      signal === undefined ? controller.signal : AbortSignal.any([signal, controller.signal])
    try {
      for await (const chunk of state.source.read({
        digest: digestKey,
        start: from,
        end,
        signal: requestSignal,
      })) {
        // An empty chunk is a sign of life (a source skipping to the piece), not data.
        if (chunk.byteLength === 0) {
          timer.refresh()
          continue
        }
        if (received + chunk.byteLength > bytes.byteLength)
          throw new ByteSourceError({
            failure: 'misbehaved',
            source: state.source.id,
            digest: expected,
            message: `${state.source.id} sent more than the ${bytes.byteLength} bytes of piece ${request.piece}`,
          })
        copier.copy(bytes, received, chunk)
        pieceHash?.update(chunk)
        received += chunk.byteLength
        if (
          request.writesAhead &&
          request.pendingWrite === undefined &&
          received - request.writtenUpTo >= writeAheadBytes &&
          !controller.signal.aborted
        )
          writeAhead(request, bytes, from, received)
        receivedBytes += chunk.byteLength
        state.attempt.bytes += chunk.byteLength
        state.roundBytes += chunk.byteLength
        bySource[state.source.id] = (bySource[state.source.id] ?? 0) + chunk.byteLength
        reportProgress(false)
        timer.refresh()
        if (state.bandwidth !== undefined)
          await state.bandwidth.take(chunk.byteLength, { signal: requestSignal })
        if (globalBandwidth !== undefined)
          await globalBandwidth.take(chunk.byteLength, { signal: requestSignal })
      }
      if (received !== bytes.byteLength)
        throw new ByteSourceError({
          failure: 'misbehaved',
          source: state.source.id,
          digest: expected,
          message: `${state.source.id} sent ${received} of the ${bytes.byteLength} bytes of piece ${request.piece}`,
        })
    } catch (error) {
      failure = controller.signal.aborted ? controller.signal.reason : error
    } finally {
      clearTimeout(timer)
    }
    // The source's connection is free as soon as the bytes are in: verification does not hold it.
    request.receiving = false
    receiving.delete(request)
    state.active--
    hostLimiter?.closed(state.host)
    await request.pendingWrite
    if (request.writeFailure !== undefined) {
      // The disk failed, not the source.
      release(request)
      fatal ??= diskError(request.writeFailure)
    } else if (failure === undefined) void pieceReceived(request, bytes, pieceHash?.digest())
    else {
      release(request)
      onFailure(state, request.piece, failure)
    }
    notify()
  }

  /** Hands the bytes of a piece received so far to the file, one write at a time per request. */
  function writeAhead(request: PieceRequest, bytes: Uint8Array, from: number, upTo: number): void {
    const offset = request.writtenUpTo
    request.writtenUpTo = upTo
    request.pendingWrite = file.write(bytes.subarray(offset, upTo), from + offset).then(
      () => {
        request.pendingWrite = undefined
      },
      (error: unknown) => {
        request.pendingWrite = undefined
        request.writeFailure ??= error
        request.controller.abort(error)
      },
    )
  }

  /** Gives a piece claim up: the piece goes back to the pool, its slot to the free list. */
  function release(request: PieceRequest): void {
    unclaim(request)
    slots.release(request.slot)
  }

  function unclaim(request: PieceRequest): void {
    unsettled.delete(request)
    const requests = active.get(request.piece)
    requests?.delete(request)
    if (requests?.size === 0) active.delete(request.piece)
  }

  /** A piece's bytes are in: verify it, then write and journal it, unless another copy won. */
  async function pieceReceived(
    request: PieceRequest,
    bytes: Uint8Array,
    digest: Buffer | undefined,
  ): Promise<void> {
    const { piece, state } = request
    try {
      if (done.has(piece)) return release(request)
      if (pieceIndex !== undefined && digest !== undefined) {
        if (!digest.equals(pieceIndex.hashOf(piece))) {
          release(request)
          onCorrupt(state, piece)
          return
        }
      }
      // Two copies may both verify: only the first one is written.
      if (done.has(piece) || committing.has(piece)) return release(request)
      committing.add(piece)
      try {
        await commit(request, bytes)
      } finally {
        committing.delete(piece)
      }
      // The slot now belongs to the digest (`waiting`), not to the claim.
      unclaim(request)
    } catch (error) {
      release(request)
      fatal ??= error
    } finally {
      notify()
    }
  }

  async function commit(request: PieceRequest, bytes: Uint8Array): Promise<void> {
    const { piece, state } = request
    // A copy still arriving elsewhere is no longer needed, and must not write once this one has.
    const others = [...(active.get(piece) ?? [])].filter((other) => other !== request)
    for (const other of others) if (other.receiving) other.controller.abort(new Superseded())
    await Promise.all(others.map((other) => other.pendingWrite))
    const { start: position } = rangeOf(piece)
    try {
      // What the request did not write ahead (all of it, for a hedge).
      await file.write(bytes.subarray(request.writtenUpTo), position + request.writtenUpTo)
      await journal.append(piece)
    } catch (error) {
      throw diskError(error)
    }
    done.add(piece)
    verifiedBytes += bytes.byteLength
    unsyncedBytes += bytes.byteLength
    if (unsyncedBytes >= SYNC_EVERY_BYTES && !syncing) {
      unsyncedBytes = 0
      syncing = true
      backgroundSync = file.sync().then(
        () => {
          syncing = false
        },
        (error: unknown) => {
          syncing = false
          fatal ??= error
          notify()
        },
      )
    }
    state.attempt.pieces++
    state.consecutiveFailures = 0
    const elapsed = performance.now() - request.startedAt
    typicalPieceMs = typicalPieceMs === 0 ? elapsed : 0.8 * typicalPieceMs + 0.2 * elapsed
    adapt(state)
    waiting.set(piece, request.slot)
    if (pieceIndex !== undefined) options.onPieceVerified?.(piece)
    emitProgress(options, 'download:piece-verified', {
      sha256: expected,
      piece,
      source: state.source.id,
      bytes: bytes.byteLength,
    })
    advanceHasher()
    reportProgress(done.size === count)
  }

  /** More connections for a source while each new one raised its throughput (slow start). */
  function adapt(state: SourceState): void {
    const now = performance.now()
    if (state.roundStartedAt === 0) {
      state.roundStartedAt = now
      state.roundBytes = 0
      return
    }
    state.roundPieces++
    if (state.roundPieces < state.allowed * 2) return
    const rate = state.roundBytes / Math.max(1, now - state.roundStartedAt)
    if (rate > state.lastRoundRate * 1.05 && state.allowed < maxConnectionsPerSource)
      state.allowed++
    state.lastRoundRate = rate
    state.roundStartedAt = now
    state.roundBytes = 0
    state.roundPieces = 0
  }

  function advanceHasher(): void {
    while (hashCursor < count && done.has(hashCursor)) {
      const slot = waiting.get(hashCursor)
      const { start: from, end } = rangeOf(hashCursor)
      if (slot !== undefined) {
        waiting.delete(hashCursor)
        hasher.digestSlot(hashCursor, slot, end - from)
      } else hasher.readBack(hashCursor, from, end, pieceIndex?.hashOf(hashCursor))
      hashCursor++
    }
    if (hashCursor === count && done.size === count && !finishSent) {
      finishSent = true
      hasher.finish(count)
    }
  }

  function onHasherMessage(message: HasherMessage): void {
    if (message.type === 'digest') {
      wholeDigest = message.hex
      return
    }
    if (message.type === 'digested') {
      slots.release(message.slot)
      return
    }
    if (message.type === 'read') {
      // A piece from an earlier run, read back intact: it now counts as verified.
      if (journal.pieces.has(message.index) && !readBack.has(message.index)) {
        readBack.add(message.index)
        verifiedBytes += message.bytes
        if (pieceIndex !== undefined) options.onPieceVerified?.(message.index)
        reportProgress(false)
      }
      return
    }
    // A journaled piece that is not intact on disk (a crash before the write reached it).
    log('piece %d of %s is damaged on disk; fetching it again', message.index, digestKey)
    // The digest skips what follows until this piece comes back; pieces past the cursor that
    // are still in their slots stay there.
    done.delete(message.index)
    hashCursor = message.index
    finishSent = false
    lowestMissing = Math.min(lowestMissing, message.index)
  }

  /** A source sent a piece whose hash is wrong: blame it, and ask someone else next time. */
  function onCorrupt(state: SourceState, piece: number): void {
    state.attempt.failures++
    state.attempt.corruptPieces.push(piece)
    const sources = avoid.get(piece) ?? new Set()
    avoid.set(piece, sources)
    sources.add(state)
    emitProgress(options, 'download:piece-rejected', {
      sha256: expected,
      piece,
      source: state.source.id,
    })
    strike(state, `served piece ${piece} with the wrong bytes`)
  }

  function onFailure(state: SourceState, piece: number, error: unknown): void {
    if (error instanceof Superseded || (isAbortError(error) && signal?.aborted)) return
    const failure = ByteSourceError.isInstance(error) ? error.failure : 'unavailable'
    const message = error instanceof Error ? error.message : String(error)
    if (failure === 'busy' && state.active > 0) {
      // At its cap while it serves other requests of ours: that many is what it takes now. Not a
      // failure: a pause here would idle a source that works (one at its cap is asked for more
      // than it takes at every growth of its window).
      state.allowed = Math.min(state.allowed, state.active)
      log('%s is busy (piece %d): %d at once from now on', state.source.id, piece, state.allowed)
      return
    }
    state.attempt.failures++
    const now = performance.now()
    state.attempt.error = { code: errorCode(error), message }
    emitProgress(options, 'download:source-failed', {
      sha256: expected,
      piece,
      source: state.source.id,
      code: state.attempt.error.code,
      message,
    })
    log('%s failed on piece %d: %s', state.source.id, piece, message)
    // Busy with none of our requests there: others hold it, so it may take some again later.
    if (failure === 'unavailable' || failure === 'busy') {
      state.consecutiveFailures++
      state.allowed = Math.max(1, Math.floor(state.allowed / 2))
      state.retryAt =
        now +
        backoffDelay({
          attempt: state.consecutiveFailures - 1,
          minDelay: 200,
          maxDelay: 30_000,
          error,
        })
      if (state.consecutiveFailures >= maxConsecutiveFailures)
        drop(state, `${state.consecutiveFailures} failures in a row`)
      return
    }
    // A file that changed upstream will not change back: that source is done for this download.
    const changedUpstream =
      ByteSourceError.isInstance(error) && (error.statusCode === 412 || /ETag/.test(message))
    if (failure === 'misbehaved' && !changedUpstream) strike(state, message)
    else drop(state, message)
  }

  function strike(state: SourceState, why: string): void {
    state.strikes++
    if (state.strikes >= 2) drop(state, `${why} (second offence)`)
  }

  function drop(state: SourceState, why: string): void {
    if (state.dropped) return
    state.dropped = true
    state.attempt.outcome = 'dropped'
    state.attempt.error ??= { code: 'LLMESH_SOURCE_DROPPED', message: why }
    log('dropping %s: %s', state.source.id, why)
    emitProgress(options, 'download:source-dropped', {
      sha256: expected,
      source: state.source.id,
      reason: why,
    })
    for (const request of receiving)
      if (request.state === state) request.controller.abort(new Superseded())
  }

  function diskError(error: unknown): unknown {
    return diskFullError(error, {
      path: options.partialPath,
      digest: expected,
      verifiedPieces: done.size,
    })
  }

  /** Every source failed, or (`idle`) those left held none of the missing pieces for the stall timeout. */
  function exhausted({ idle = false } = {}): DownloadError {
    const failures: SourceFailure[] = states.map((state) => ({
      source: state.source.id,
      code: state.attempt.error?.code ?? 'LLMESH_SOURCE_DROPPED',
      message:
        state.attempt.error?.message ??
        (state.dropped ? 'dropped' : `${state.source.id} held none of the missing pieces`),
    }))
    return new DownloadError({
      code: 'LLMESH_SOURCES_EXHAUSTED',
      digest: expected,
      failures,
      isRetryable: true,
      message: `${idle ? `No source held a missing piece of ${digestKey} for ${stallTimeoutMs} ms` : `Every source failed for ${digestKey}`} (${done.size} of ${count} pieces verified and kept for a resume):\n${failures.map((failure) => `  - ${failure.message}`).join('\n')}`,
    })
  }

  function finishAttempts(): void {
    const durationMs = performance.now() - startedAt
    for (const state of states) {
      state.attempt.durationMs = durationMs
      if (
        state.attempt.outcome === 'ok' &&
        state.attempt.pieces === 0 &&
        state.attempt.failures > 0
      )
        state.attempt.outcome = 'failed'
    }
    try {
      options.onAttempts?.(states.map((state) => state.attempt))
    } catch (error) {
      log.error('recording attempts failed: %s', (error as Error).message)
    }
  }

  function reportProgress(force: boolean): void {
    const now = performance.now()
    if (!force && now - lastProgressAt < 100) return
    lastProgressAt = now
    emitProgress(options, 'download:progress', {
      sha256: expected,
      totalBytes: size,
      receivedBytes,
      verifiedBytes,
      resumedBytes,
      bySource: { ...bySource },
    })
  }
}

function errorCode(error: unknown): string {
  return typeof error === 'object' &&
    error !== null &&
    'code' in error &&
    typeof error.code === 'string'
    ? error.code
    : 'LLMESH_SOURCE_UNAVAILABLE'
}

function hostOf(source: ByteSource): string | undefined {
  if ('host' in source && typeof source.host === 'string') return source.host
  return undefined
}

/**
 * `LLMESH_INSUFFICIENT_SPACE` when `neededBytes` do not fit in `freeBytes` on the file system
 * holding `path`; undefined when they do. Checked before a download asks any source.
 */
export function insufficientSpace(where: {
  path: string
  /** The blob's sha256, when known. */
  digest: string | undefined
  neededBytes: number
  freeBytes: number
  /** What the user can do, after the figures. */
  advice?: string
}): DownloadError | undefined {
  if (where.freeBytes >= where.neededBytes) return undefined
  return new DownloadError({
    code: 'LLMESH_INSUFFICIENT_SPACE',
    digest: where.digest,
    path: where.path,
    message: `Not enough free space in ${dirname(where.path)}: ${formatBytes(where.neededBytes)} still to download, ${formatBytes(where.freeBytes)} free.${where.advice === undefined ? '' : ` ${where.advice}`}`,
  })
}

/**
 * An `ENOSPC` as `LLMESH_DISK_FULL` (retryable: the verified pieces are kept for a resume); any
 * other error as it is.
 */
export function diskFullError(
  error: unknown,
  where: { path: string; digest: string | undefined; verifiedPieces: number },
): unknown {
  if (systemErrorCode(error) !== 'ENOSPC') return error
  return new DownloadError({
    code: 'LLMESH_DISK_FULL',
    digest: where.digest,
    path: where.path,
    cause: error,
    isRetryable: true,
    message: `The disk holding ${where.path} is full. The ${where.verifiedPieces} verified pieces are kept; free some space and run the download again to resume.`,
  })
}

export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB']
  let value = bytes
  let unit = 0
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024
    unit++
  }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`
}
