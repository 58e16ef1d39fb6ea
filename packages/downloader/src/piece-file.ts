import { constants } from 'node:fs'
import { type FileHandle, open } from 'node:fs/promises'
import { Worker } from 'node:worker_threads'
import {
  AbortedError,
  abortReason,
  createLogger,
  InvalidArgumentError,
  throwIfAborted,
} from '@llmesh/core'
import { systemErrorCode } from './errors.js'
import { openPartialFile, writeAll } from './partial-files.js'

/** What O_DIRECT asks of a write: its buffer's address, its length and its file offset aligned to this. */
const DIRECT_ALIGNMENT = 4096

export interface PieceFileOptions {
  /** The file's final size: it is created (or kept, for a resume) at this size. */
  size: number
  pieceSize: number
  /**
   * How many pieces `verifyAndWrite()` holds at once (each in a buffer of its own on the writing
   * thread); past it, it waits. Default: 32 MiB of pieces, 2 to 8.
   */
  buffers?: number
  /** Bypass the page cache where the filesystem allows it; default true. */
  direct?: boolean
}

export interface VerifyAndWriteOptions {
  /** Where the piece starts in the file. */
  position: number
  /** The SHA-256 the piece must have (from the piece index). */
  sha256: Uint8Array
  /** Write the piece when it matches; default true. False only checks it (a second copy, say). */
  write?: boolean
  /** Ends the wait for a free buffer; a piece handed over is checked and written regardless. */
  signal?: AbortSignal
}

const log = createLogger('downloader:piece-file')

/**
 * A file written one piece at a time, past the page cache (O_DIRECT) where the filesystem allows
 * it, so that writing a model costs the download almost no CPU.
 *
 * Through the page cache, every byte is copied into kernel memory, and on a virtual machine whose
 * memory is backed on first touch that copy is what a download spends most on: `dd` of 1 GiB took
 * 2.5 s of CPU that way here, and 0.1 s with O_DIRECT, at 1.4 GB/s. O_DIRECT needs the buffer's
 * address, the length and the offset aligned, so a piece is copied from the chunks it arrived in
 * into a page-aligned buffer, reused; the tail of a last piece that is not a multiple of 4 KiB goes
 * through the page cache. Where O_DIRECT is refused (a filesystem without it, a platform without
 * the flag, a piece size under 4 KiB), the same buffers are written through the page cache.
 *
 * `verifyAndWrite()` does all of a piece's work (the copy, SHA-256, the write) on a worker thread,
 * so that the thread that reads the network only hands chunks over; `write()` writes bytes the
 * caller has aligned already, from the calling thread. Writes go one at a time on each: writes to
 * one file take its inode lock in turn anyway.
 */
export class PieceFile {
  private readonly waiting: Array<() => void> = []
  private lastWrite: Promise<unknown> = Promise.resolve()
  private writer: PieceWriter | undefined
  /** Pieces handed to the writer and not answered yet. */
  private readonly handedOver = new Set<Promise<boolean>>()
  /** The filesystem took the O_DIRECT open but refused an aligned write from this thread. */
  private directRefused = false
  private closing = false

  private constructor(
    /** Reads, the tail of an unaligned last piece, and every write when `direct` is false. */
    private readonly handle: FileHandle,
    private readonly directHandle: FileHandle | undefined,
    private readonly options: Required<Pick<PieceFileOptions, 'size' | 'pieceSize'>>,
    private readonly buffers: number,
  ) {}

  static async open(path: string, options: PieceFileOptions): Promise<PieceFile> {
    const handle = await openPartialFile(path)
    try {
      await handle.truncate(options.size)
      let directHandle: FileHandle | undefined
      if (
        options.direct !== false &&
        constants.O_DIRECT !== undefined &&
        options.pieceSize % DIRECT_ALIGNMENT === 0
      ) {
        try {
          directHandle = await open(path, constants.O_WRONLY | constants.O_DIRECT)
        } catch (error) {
          log('O_DIRECT refused for %s (%s): writing through the page cache', path, error)
        }
      }
      const buffers =
        options.buffers ??
        Math.min(8, Math.max(2, Math.floor((32 * 1024 * 1024) / options.pieceSize)))
      return new PieceFile(handle, directHandle, options, buffers)
    } catch (error) {
      await handle.close()
      throw error
    }
  }

  /** Whether writes bypass the page cache (false after the filesystem refused an aligned write). */
  get direct(): boolean {
    return (
      this.directHandle !== undefined && !this.directRefused && this.writer?.directRefused !== true
    )
  }

  /**
   * Checks a piece against its SHA-256 and, when it matches, writes it at `position`: on a worker
   * thread, so that the calling thread only hands the chunks over.
   *
   * Chunks that each own their whole ArrayBuffer (a TLS stream's records do) are moved there, not
   * copied, and are empty here afterwards; others are copied. Waits while `buffers` pieces are
   * with the worker. Resolves true once a matching piece is written (with `write: false`, once it
   * is known to match); false when it does not match, and then nothing is written. Rejects with
   * the disk's error when the write fails.
   */
  async verifyAndWrite(
    chunks: readonly Uint8Array[],
    options: VerifyAndWriteOptions,
  ): Promise<boolean> {
    return (await this.handOver(chunks, options)).written
  }

  /**
   * `verifyAndWrite()` in two steps: resolves once the piece is with the writing thread (after
   * waiting for a free buffer), and `written` then settles as `verifyAndWrite()` does. A caller
   * that bounds the pieces it holds can count a piece out once it is handed over, and fetch the
   * next one while this one is hashed and written.
   */
  async handOver(
    chunks: readonly Uint8Array[],
    options: VerifyAndWriteOptions,
  ): Promise<{ written: Promise<boolean> }> {
    throwIfAborted(options.signal)
    const length = chunks.reduce((sum, chunk) => sum + chunk.byteLength, 0)
    if (length > this.options.pieceSize)
      throw new InvalidArgumentError({
        argument: 'chunks',
        message: `a piece is at most ${this.options.pieceSize} bytes (the piece size)`,
      })
    while (!this.closing && this.handedOver.size >= this.buffers) {
      throwIfAborted(options.signal)
      const signal = options.signal
      await new Promise<void>((resolve, reject) => {
        const onAbort = () => {
          this.waiting.splice(this.waiting.indexOf(wake), 1)
          reject(abortReason(signal!))
        }
        const wake = () => {
          signal?.removeEventListener('abort', onAbort)
          resolve()
        }
        this.waiting.push(wake)
        signal?.addEventListener('abort', onAbort, { once: true })
      })
    }
    if (this.closing)
      throw new AbortedError({ message: 'the piece file closed before the piece was handed over' })
    this.writer ??= new PieceWriter({
      fd: this.handle.fd,
      directFd: this.directHandle?.fd,
      pieceSize: this.options.pieceSize,
      buffers: this.buffers,
    })
    const answer = this.writer.submit(chunks, options)
    this.handedOver.add(answer)
    const written = answer.finally(() => {
      this.handedOver.delete(answer)
      this.waiting.shift()?.()
    })
    return { written }
  }

  /** Writes bytes at `position` from this thread, after the writes before it. */
  write(bytes: Uint8Array, position: number): Promise<void> {
    const write = this.lastWrite.then(() => this.writeNow(bytes, position))
    this.lastWrite = write.catch(() => {})
    return write
  }

  async read(length: number, position: number): Promise<Uint8Array> {
    const bytes = Buffer.allocUnsafe(length)
    const { bytesRead } = await this.handle.read(bytes, 0, length, position)
    return bytes.subarray(0, bytesRead)
  }

  /** Waits for the writes, then makes the file durable. */
  async sync(): Promise<void> {
    await this.settled()
    await this.handle.sync()
  }

  /** Waits for the writes, then closes the file; pieces not handed over yet are refused. */
  async close(): Promise<void> {
    this.closing = true
    for (const wake of this.waiting.splice(0)) wake()
    await this.settled()
    // The writer uses the handles' descriptors: it stops before they close.
    await this.writer?.stop()
    await this.directHandle?.close()
    await this.handle.close()
  }

  private async settled(): Promise<void> {
    await this.lastWrite
    await Promise.allSettled(this.handedOver)
  }

  private async writeNow(bytes: Uint8Array, position: number): Promise<void> {
    const aligned = bytes.byteLength - (bytes.byteLength % DIRECT_ALIGNMENT)
    if (this.directHandle !== undefined && !this.directRefused && aligned > 0) {
      try {
        await writeAll(this.directHandle, bytes.subarray(0, aligned), position)
        if (aligned < bytes.byteLength)
          await writeAll(this.handle, bytes.subarray(aligned), position + aligned)
        return
      } catch (error) {
        if (systemErrorCode(error) !== 'EINVAL') throw error
        // The filesystem took the open but wants another alignment: page cache from now on.
        log('O_DIRECT write refused (%s): writing through the page cache', error)
        this.directRefused = true
      }
    }
    await writeAll(this.handle, bytes, position)
  }
}

interface WriterSetup {
  fd: number
  directFd: number | undefined
  pieceSize: number
  buffers: number
}

type WriterAnswer =
  | { id: number; valid: boolean }
  | { id: number; error: { message: string; code?: string; syscall?: string; errno?: number } }
  | { directRefused: string }

/**
 * The worker thread of `verifyAndWrite()`: it copies a piece into a page-aligned buffer of its own
 * (`buffers` of them), hashes it there, compares, and writes it, one write at a time, while the
 * next piece is hashed. It writes through the file's descriptors, which the file closes only after
 * the worker stops.
 */
const WRITER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads')
const { createHash } = require('node:crypto')
const { write } = require('node:fs')
const { fd, directFd, pieceSize, buffers } = workerData
const stride = Math.ceil(pieceSize / ${DIRECT_ALIGNMENT}) * ${DIRECT_ALIGNMENT}
// A WebAssembly memory is page-aligned, as O_DIRECT wants its buffers.
const pages = Math.ceil((stride * buffers) / 65536)
const memory = new WebAssembly.Memory({ initial: pages, maximum: pages })
const free = []
for (let index = 0; index < buffers; index++) free.push(new Uint8Array(memory.buffer, index * stride, stride))
let direct = directFd !== undefined
const queue = []
let writing = false

function writeAll(descriptor, bytes, position, done) {
  write(descriptor, bytes, 0, bytes.byteLength, position, (error, written) => {
    if (error) return done(error)
    if (written < bytes.byteLength) return writeAll(descriptor, bytes.subarray(written), position + written, done)
    done(null)
  })
}

function writePiece(bytes, position, done) {
  const aligned = direct ? bytes.byteLength - (bytes.byteLength % ${DIRECT_ALIGNMENT}) : 0
  if (aligned === 0) return writeAll(fd, bytes, position, done)
  writeAll(directFd, bytes.subarray(0, aligned), position, (error) => {
    if (error && error.code === 'EINVAL') {
      // The filesystem took the open but wants another alignment: page cache from now on.
      direct = false
      parentPort.postMessage({ directRefused: String(error) })
      return writeAll(fd, bytes, position, done)
    }
    if (error) return done(error)
    if (aligned === bytes.byteLength) return done(null)
    writeAll(fd, bytes.subarray(aligned), position + aligned, done)
  })
}

// A chunk's memory, freed once it is copied or hashed: every chunk here was moved or cloned to
// this thread, so none is shared. Left to this thread's garbage collector, which runs seldom (it
// allocates little), the chunks of many pieces would wait, and the thread that reads the network
// would take fresh memory for its next ones: 220,000 fresh pages per GiB in pieces of 64 MiB.
function release(chunk) {
  if (chunk.buffer.transfer !== undefined) chunk.buffer.transfer(0)
}

function nextWrite() {
  if (writing || queue.length === 0) return
  writing = true
  const { id, buffer, bytes, position } = queue.shift()
  writePiece(bytes, position, (error) => {
    writing = false
    free.push(buffer)
    if (error) parentPort.postMessage({ id, error: { message: error.message, code: error.code, syscall: error.syscall, errno: error.errno } })
    else parentPort.postMessage({ id, valid: true })
    nextWrite()
  })
}

parentPort.on('message', ({ id, chunks, position, sha256, write }) => {
  const expected = Buffer.from(sha256.buffer, sha256.byteOffset, sha256.byteLength)
  if (!write) {
    const hash = createHash('sha256')
    for (const chunk of chunks) {
      hash.update(chunk)
      release(chunk)
    }
    return parentPort.postMessage({ id, valid: hash.digest().equals(expected) })
  }
  // The file holds no more pieces than buffers at once: one is free.
  const buffer = free.pop()
  let length = 0
  for (const chunk of chunks) {
    buffer.set(chunk, length)
    length += chunk.byteLength
    release(chunk)
  }
  const bytes = buffer.subarray(0, length)
  if (!createHash('sha256').update(bytes).digest().equals(expected)) {
    free.push(buffer)
    return parentPort.postMessage({ id, valid: false })
  }
  queue.push({ id, buffer, bytes, position })
  nextWrite()
})
`

class PieceWriter {
  private readonly worker: Worker
  private readonly pending = new Map<
    number,
    { resolve: (valid: boolean) => void; reject: (error: Error) => void }
  >()
  private nextId = 0
  /** Why the worker stopped (it answers nothing more). */
  private failure: Error | undefined
  /** The filesystem refused an aligned write from the worker: it writes through the page cache. */
  directRefused = false

  constructor(setup: WriterSetup) {
    this.worker = new Worker(WRITER_SOURCE, { eval: true, workerData: setup })
    // A download that forgets to close its file does not keep the process alive for it.
    this.worker.unref()
    this.worker.on('message', (answer: WriterAnswer) => {
      if ('directRefused' in answer) {
        log('O_DIRECT write refused (%s): writing through the page cache', answer.directRefused)
        this.directRefused = true
        return
      }
      const waiting = this.pending.get(answer.id)
      this.pending.delete(answer.id)
      if ('error' in answer)
        waiting?.reject(Object.assign(new Error(answer.error.message), answer.error))
      else waiting?.resolve(answer.valid)
    })
    const fail = (error: Error) => {
      this.failure ??= error
      for (const { reject } of this.pending.values()) reject(error)
      this.pending.clear()
    }
    this.worker.on('error', fail)
    this.worker.on('exit', (code) => fail(new Error(`the writing thread exited with code ${code}`)))
  }

  submit(chunks: readonly Uint8Array[], options: VerifyAndWriteOptions): Promise<boolean> {
    if (this.failure !== undefined) return Promise.reject(this.failure)
    return new Promise((resolve, reject) => {
      const id = this.nextId++
      this.pending.set(id, { resolve, reject })
      const message = {
        id,
        position: options.position,
        // A copy: a view is cloned with all of the buffer it views (a whole piece index, say).
        sha256: new Uint8Array(options.sha256),
        write: options.write !== false,
      }
      try {
        const moving = movable(chunks)
        this.worker.postMessage({ ...message, chunks: moving.chunks }, moving.transfer)
      } catch {
        // A buffer that cannot move (a WebAssembly memory's, say): copies, then.
        const copies = chunks.map((chunk) => new Uint8Array(chunk))
        this.worker.postMessage(
          { ...message, chunks: copies },
          copies.map((copy) => copy.buffer),
        )
      }
    })
  }

  async stop(): Promise<void> {
    await this.worker.terminate()
  }
}

/**
 * Chunks ready to go to another thread cheaply: one that views all of its own ArrayBuffer moves
 * with it (detached here); another is copied first, since a view is cloned with all of the buffer
 * it views.
 */
function movable(chunks: readonly Uint8Array[]): { chunks: Uint8Array[]; transfer: ArrayBuffer[] } {
  const transfer = new Set<ArrayBuffer>()
  const moving = chunks.map((chunk) => {
    const owned =
      chunk.buffer instanceof ArrayBuffer &&
      chunk.byteOffset === 0 &&
      chunk.byteLength === chunk.buffer.byteLength &&
      !transfer.has(chunk.buffer)
    const bytes = owned ? chunk : new Uint8Array(chunk)
    transfer.add(bytes.buffer as ArrayBuffer)
    return bytes
  })
  return { chunks: moving, transfer: [...transfer] }
}
