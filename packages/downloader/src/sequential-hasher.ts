import { Worker } from 'node:worker_threads'

/**
 * The whole-file sha256, computed on a worker thread while pieces land, so the main thread stays
 * free for the network and the file is never read a second time in the normal case.
 *
 * SHA-256 must see the bytes in order, but pieces land in any order. Pieces are handed over in
 * order: from memory when they are still there (transferred, not copied), or read back from the
 * partial file by the worker when they are not (pieces that landed far ahead of the cursor, and
 * pieces from a previous run). A piece read back is checked against its expected hash before it
 * enters the digest, so a piece damaged on disk is reported as `bad` and fetched again.
 */
const workerSource = `
const { parentPort, workerData } = require('node:worker_threads')
const { createHash } = require('node:crypto')
const { openSync, readSync, closeSync } = require('node:fs')
const whole = createHash('sha256')
let next = 0
let fd
parentPort.on('message', (message) => {
  if (message.type === 'finish') {
    if (message.count !== next) return
    if (fd !== undefined) closeSync(fd)
    parentPort.postMessage({ type: 'digest', hex: whole.digest('hex') })
    return
  }
  // After a bad piece, everything is ignored until that piece comes again.
  if (message.index !== next) return
  if (message.type === 'bytes') {
    whole.update(new Uint8Array(message.buffer, message.byteOffset, message.byteLength))
    next++
    return
  }
  fd ??= openSync(workerData.path, 'r')
  const buffer = Buffer.allocUnsafe(message.end - message.start)
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
})
`

export type HasherMessage =
  | { type: 'digest'; hex: string }
  | { type: 'bad'; index: number }
  | { type: 'read'; index: number; bytes: number }

export class SequentialHasher {
  private readonly worker: Worker

  constructor(
    partialPath: string,
    onMessage: (message: HasherMessage) => void,
    onError: (error: Error) => void,
  ) {
    this.worker = new Worker(workerSource, { eval: true, workerData: { path: partialPath } })
    this.worker.on('message', onMessage)
    this.worker.on('error', onError)
  }

  /** Hands over piece `index`'s bytes; `bytes` is transferred and unusable afterwards. */
  bytes(index: number, bytes: Uint8Array): void {
    this.worker.postMessage(
      {
        type: 'bytes',
        index,
        buffer: bytes.buffer,
        byteOffset: bytes.byteOffset,
        byteLength: bytes.byteLength,
      },
      [bytes.buffer as ArrayBuffer],
    )
  }

  /** Asks the worker to read piece `index` back from the partial file and check it. */
  read(index: number, start: number, end: number, expected: Uint8Array | undefined): void {
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
