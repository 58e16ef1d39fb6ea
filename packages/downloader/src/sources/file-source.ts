import { open } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import {
  type ByteRangeRequest,
  type ByteSource,
  ByteSourceError,
  throwIfAborted,
} from '@llmesh/core'
import { systemErrorCode } from '../errors.js'

const BLOCK_BYTES = 1024 * 1024

/**
 * A file on a local disk or a mounted share (a path or a `file:` URL): the fastest source when an
 * artifact already sits on a USB drive or an NFS export. Its bytes are verified like any other's.
 */
export class FileSource implements ByteSource {
  readonly kind = 'file'
  readonly id: string
  readonly path: string
  private readonly expectedSize: number | undefined

  constructor(pathOrUrl: string | URL, { expectedSize }: { expectedSize?: number } = {}) {
    this.path =
      pathOrUrl instanceof URL || pathOrUrl.startsWith('file:')
        ? fileURLToPath(pathOrUrl)
        : pathOrUrl
    this.id = `file://${this.path}`
    this.expectedSize = expectedSize
  }

  async *read({ digest, start, end, signal }: ByteRangeRequest): AsyncGenerator<Uint8Array> {
    let handle: Awaited<ReturnType<typeof open>>
    try {
      handle = await open(this.path, 'r')
    } catch (error) {
      const code = systemErrorCode(error)
      throw new ByteSourceError({
        failure: code === 'ENOENT' ? 'not-found' : code === 'EACCES' ? 'forbidden' : 'unavailable',
        source: this.id,
        digest,
        message: `${this.path} cannot be opened: ${(error as Error).message}`,
        cause: error,
      })
    }
    try {
      const { size } = await handle.stat()
      if (this.expectedSize !== undefined && size !== this.expectedSize)
        throw new ByteSourceError({
          failure: 'range-not-satisfiable',
          source: this.id,
          digest,
          message: `${this.path} holds ${size} bytes, not the ${this.expectedSize} the manifest says`,
        })
      if (end > size)
        throw new ByteSourceError({
          failure: 'range-not-satisfiable',
          source: this.id,
          digest,
          message: `${this.path} holds ${size} bytes; bytes ${start}-${end - 1} lie past its end`,
        })
      for (let at = start; at < end; ) {
        throwIfAborted(signal)
        const buffer = Buffer.allocUnsafe(Math.min(BLOCK_BYTES, end - at))
        const { bytesRead } = await handle.read(buffer, 0, buffer.byteLength, at)
        if (bytesRead === 0)
          throw new ByteSourceError({
            failure: 'misbehaved',
            source: this.id,
            digest,
            message: `${this.path} ended at byte ${at} while being read: it changed`,
          })
        at += bytesRead
        yield buffer.subarray(0, bytesRead)
      }
    } finally {
      await handle.close()
    }
  }
}
