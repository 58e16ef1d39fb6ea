import { Worker } from 'node:worker_threads'

/**
 * The whole-file sha256, computed on a worker thread in the same pass as the download, on pieces
 * that live in a shared slot pool (`PieceSlots`): no byte is copied to reach the worker and no
 * buffer is allocated per piece. (Each piece's own hash is computed on the main thread as its
 * bytes stream in, which needs no copy and no thread hop.)
 *
 * SHA-256 must see the bytes in order, but pieces land in any order. Pieces reach the digest in
 * order: from their slot while they still hold one, or read back from the partial file when they
 * do not (pieces that landed far ahead of the cursor, and pieces from a previous run). A piece
 * read back is checked against its expected hash before it enters the digest, so a piece damaged
 * on disk is reported as `bad` and fetched again; the digest skips everything until it comes back.
 */
const workerSource = `
const { parentPort, workerData } = require('node:worker_threads')
const { createHash } = require('node:crypto')
const { openSync, readSync, closeSync } = require('node:fs')
const shared = new Uint8Array(workerData.shared)
const slotBytes = workerData.slotBytes
const whole = createHash('sha256')
let next = 0
let fd
// Pieces are read back one at a time, into one buffer kept for the whole download.
let readBuffer = Buffer.alloc(0)
const slot = (index, length) => shared.subarray(index * slotBytes, index * slotBytes + length)
parentPort.on('message', (message) => {
  switch (message.type) {
    case 'finish':
      if (message.count !== next) return
      if (fd !== undefined) closeSync(fd)
      parentPort.postMessage({ type: 'digest', hex: whole.digest('hex') })
      return
    case 'digest':
      if (message.index === next) {
        whole.update(slot(message.slot, message.length))
        next++
      }
      parentPort.postMessage({ type: 'digested', index: message.index, slot: message.slot })
      return
    case 'read': {
      if (message.index !== next) return
      fd ??= openSync(workerData.path, 'r')
      if (readBuffer.length < message.end - message.start)
        readBuffer = Buffer.allocUnsafe(message.end - message.start)
      const buffer = readBuffer.subarray(0, message.end - message.start)
      let filled = 0
      while (filled < buffer.length) {
        const count = readSync(fd, buffer, filled, buffer.length - filled, message.start + filled)
        if (count === 0) break
        filled += count
      }
      const intact =
        filled === buffer.length &&
        (message.expected === undefined ||
          createHash('sha256').update(buffer).digest().equals(Buffer.from(message.expected)))
      if (!intact) {
        parentPort.postMessage({ type: 'bad', index: message.index })
        return
      }
      whole.update(buffer)
      next++
      parentPort.postMessage({ type: 'read', index: message.index, bytes: buffer.length })
    }
  }
})
`

/**
 * Fixed piece buffers in one SharedArrayBuffer, allocated once per download: a request takes a
 * slot before it starts and gives it back once its piece is on disk and digested. Their number
 * bounds the memory of a download whatever the speed of its sources, and no buffer is ever
 * garbage-collected.
 */
export class PieceSlots {
  readonly shared: SharedArrayBuffer
  readonly slotBytes: number
  readonly count: number
  private readonly free: number[]

  constructor(count: number, slotBytes: number) {
    this.count = count
    this.slotBytes = slotBytes
    this.shared = new SharedArrayBuffer(count * slotBytes)
    this.free = Array.from({ length: count }, (_, index) => count - 1 - index)
  }

  get available(): number {
    return this.free.length
  }

  acquire(): number | undefined {
    return this.free.pop()
  }

  release(slot: number): void {
    this.free.push(slot)
  }

  view(slot: number, length: number): Uint8Array {
    return new Uint8Array(this.shared, slot * this.slotBytes, length)
  }
}

export type HasherMessage =
  | { type: 'digest'; hex: string }
  | { type: 'digested'; index: number; slot: number }
  | { type: 'bad'; index: number }
  | { type: 'read'; index: number; bytes: number }

export class WholeFileHasher {
  private readonly worker: Worker

  constructor(
    slots: PieceSlots,
    partialPath: string,
    onMessage: (message: HasherMessage) => void,
    onError: (error: Error) => void,
  ) {
    this.worker = new Worker(workerSource, {
      eval: true,
      workerData: { shared: slots.shared, slotBytes: slots.slotBytes, path: partialPath },
    })
    this.worker.on('message', onMessage)
    this.worker.on('error', onError)
  }

  /** Piece `index` enters the digest from its slot; `digested` frees the slot. */
  digestSlot(index: number, slot: number, length: number): void {
    this.worker.postMessage({ type: 'digest', index, slot, length })
  }

  /** Piece `index` enters the digest after being read back from the partial file and checked. */
  readBack(index: number, start: number, end: number, expected: Uint8Array | undefined): void {
    this.worker.postMessage({
      type: 'read',
      index,
      start,
      end,
      expected: expected === undefined ? undefined : Uint8Array.from(expected),
    })
  }

  /** Asks for the digest once `count` pieces went in; ignored by the worker if one was bad. */
  finish(count: number): void {
    this.worker.postMessage({ type: 'finish', count })
  }

  async close(): Promise<void> {
    await this.worker.terminate()
  }
}
