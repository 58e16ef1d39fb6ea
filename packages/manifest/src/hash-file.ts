import { createHash, webcrypto } from 'node:crypto'
import { open } from 'node:fs/promises'
import { type AbortOptions, LlmeshError, throwIfAborted } from '@llmesh/core'
import { PIECE_HASH_BYTES, pieceCount } from './pieces.js'

export interface FileHashes {
  size: number
  /** Whole-file sha256, hex. */
  sha256: string
  /** Concatenated 32-byte piece hashes. */
  pieceHashes: Uint8Array
}

export interface HashFileOptions extends AbortOptions {
  pieceSize: number
  /** Called after each block with the bytes hashed so far. */
  onBytes?: (bytesHashed: number, totalBytes: number) => void
}

/** Bytes read per block: large enough that per-call overhead vanishes, small enough to stay in cache. */
const BLOCK_BYTES = 8 * 1024 * 1024
/** Most piece digests in flight at once, so that memory stays bounded on a slow thread pool. */
const MAX_PENDING_BYTES = 64 * 1024 * 1024

/**
 * Reads a file once and returns its whole-file sha256 and its piece hashes.
 *
 * Two SHA-256 computations over the same bytes would double the CPU time on one thread. So the
 * whole-file hash runs on the main thread (it must see the bytes in order), while each piece is
 * hashed by WebCrypto's `digest`, which runs on libuv's thread pool: on a machine with two or more
 * cores both finish in about the time of one, and the next block is read while this one is hashed.
 */
export async function hashFile(
  path: string,
  { pieceSize, onBytes, signal }: HashFileOptions,
): Promise<FileHashes> {
  const handle = await open(path, 'r')
  try {
    const { size } = await handle.stat()
    const whole = createHash('sha256')
    const count = pieceCount(size, pieceSize)
    const pieceHashes = new Uint8Array(count * PIECE_HASH_BYTES)
    // A block holds whole pieces, so no piece spans two blocks.
    const blockBytes = Math.max(pieceSize, BLOCK_BYTES)
    const pending: Array<Promise<void>> = []
    let pendingBytes = 0
    let piece = 0
    let position = 0

    const readBlock = async (at: number): Promise<Buffer> => {
      const buffer = Buffer.allocUnsafe(Math.min(blockBytes, size - at))
      let filled = 0
      while (filled < buffer.byteLength) {
        const { bytesRead } = await handle.read(
          buffer,
          filled,
          buffer.byteLength - filled,
          at + filled,
        )
        if (bytesRead === 0) throw fileChanged(path, `it ended at byte ${at + filled} of ${size}`)
        filled += bytesRead
      }
      return buffer
    }

    let next = size > 0 ? readBlock(0) : undefined
    while (next !== undefined) {
      const block = await next
      throwIfAborted(signal)
      position += block.byteLength
      next = position < size ? readBlock(position) : undefined
      whole.update(block)
      for (let offset = 0; offset < block.byteLength; offset += pieceSize) {
        const index = piece++
        const bytes = block.subarray(offset, Math.min(block.byteLength, offset + pieceSize))
        pendingBytes += bytes.byteLength
        // WebCrypto copies the input before hashing on the pool, so the block may be reused.
        pending.push(
          webcrypto.subtle.digest('SHA-256', bytes).then((digest) => {
            pieceHashes.set(new Uint8Array(digest), index * PIECE_HASH_BYTES)
            pendingBytes -= bytes.byteLength
          }),
        )
      }
      while (pendingBytes > MAX_PENDING_BYTES) await pending.shift()
      onBytes?.(position, size)
    }
    await Promise.all(pending)
    const { size: sizeAfter } = await handle.stat()
    if (sizeAfter !== size) throw fileChanged(path, `its size went from ${size} to ${sizeAfter}`)
    return { size, sha256: whole.digest('hex'), pieceHashes }
  } finally {
    await handle.close()
  }
}

function fileChanged(path: string, what: string): LlmeshError {
  return new LlmeshError({
    code: 'LLMESH_FILE_CHANGED',
    message: `${path} changed while it was being hashed: ${what}. Hash it again once nothing writes to it.`,
  })
}
