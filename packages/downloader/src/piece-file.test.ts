import { createHash, randomBytes } from 'node:crypto'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { withTempDir } from '@llmesh/testkit'
import { describe, expect, it } from 'vitest'
import { PieceFile } from './piece-file.js'

const PIECE = 64 * 1024

const sha256 = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest()

/** Writes `content` in pieces, in the order given, from chunks of uneven sizes. */
async function writePieces(file: PieceFile, content: Buffer, order: number[]): Promise<void> {
  await Promise.all(
    order.map(async (index) => {
      const piece = content.subarray(index * PIECE, (index + 1) * PIECE)
      const chunks = [piece.subarray(0, 1000), piece.subarray(1000, 40_000), piece.subarray(40_000)]
      expect(
        await file.verifyAndWrite(chunks, { position: index * PIECE, sha256: sha256(piece) }),
      ).toBe(true)
    }),
  )
}

describe('PieceFile', () => {
  // The last piece ends off any 4 KiB boundary, so its tail goes through the page cache.
  const content = randomBytes(4 * PIECE + 1000)
  /** Piece `index` of `content`, and where and what it must be. */
  const pieceOf = (index: number) => {
    const bytes = content.subarray(index * PIECE, (index + 1) * PIECE)
    return { bytes, target: { position: index * PIECE, sha256: sha256(bytes) } }
  }
  /** A file for `content` whose writing thread holds one piece at a time. */
  const openWithOneBuffer = (path: string) =>
    PieceFile.open(path, { size: content.length, pieceSize: PIECE, buffers: 1 })

  for (const direct of [true, false])
    it(`writes pieces in any order into a file of the final size (${direct ? 'past the page cache where allowed' : 'through the page cache'})`, async () => {
      await withTempDir(async (folder) => {
        const path = join(folder, 'blob')
        const file = await PieceFile.open(path, {
          size: content.length,
          pieceSize: PIECE,
          buffers: 2,
          direct,
        })
        // Linux filesystems of temp dirs (ext4, xfs, btrfs, tmpfs since 6.6) take O_DIRECT, so the
        // aligned path and the page-cache tail are both exercised here.
        expect(file.direct).toBe(direct && process.platform === 'linux')
        await writePieces(file, content, [4, 1, 0, 3, 2])
        await file.sync()
        await file.close()
        expect((await readFile(path)).equals(content)).toBe(true)
      })
    })

  it('keeps what an earlier run wrote, and reads it back', async () => {
    await withTempDir(async (folder) => {
      const path = join(folder, 'blob')
      const first = await PieceFile.open(path, { size: content.length, pieceSize: PIECE })
      await writePieces(first, content, [0, 2])
      await first.close()
      const second = await PieceFile.open(path, { size: content.length, pieceSize: PIECE })
      expect(
        Buffer.from(await second.read(PIECE, 2 * PIECE)).equals(
          content.subarray(2 * PIECE, 3 * PIECE),
        ),
      ).toBe(true)
      await writePieces(second, content, [1, 3, 4])
      await second.close()
      expect((await readFile(path)).equals(content)).toBe(true)
    })
  })

  it('checks a piece against its SHA-256, and writes nothing when it does not match', async () => {
    await withTempDir(async (folder) => {
      const path = join(folder, 'blob')
      const file = await PieceFile.open(path, { size: content.length, pieceSize: PIECE })
      const piece = pieceOf(1)
      const forged = Buffer.from(piece.bytes)
      forged[100]! ^= 0xff
      expect(await file.verifyAndWrite([forged], piece.target)).toBe(false)
      // A second copy is checked without being written.
      expect(await file.verifyAndWrite([piece.bytes], { ...piece.target, write: false })).toBe(true)
      await file.close()
      expect((await readFile(path)).subarray(PIECE, 2 * PIECE).equals(Buffer.alloc(PIECE))).toBe(
        true,
      )
    })
  })

  it('takes chunks that start at any alignment, and moves those that own their whole buffer', async () => {
    await withTempDir(async (folder) => {
      const pieceSize = 256 * 1024
      const piece = randomBytes(pieceSize)
      // Some chunks start at an odd place of a larger buffer, as a frame's payload does; others
      // own all of theirs, as a TLS record does.
      const cuts = [0, 3, 5000, 5001, 5000 + 150_000, 200_000, pieceSize]
      const chunks = cuts.slice(1).map((end, position) => {
        const start = cuts[position]!
        if (position % 2 === 1) return new Uint8Array(piece.subarray(start, end))
        const carrier = Buffer.alloc(end - start + 16)
        const lead = 1 + ((position * 3) % 7)
        piece.copy(carrier, lead, start, end)
        return carrier.subarray(lead, lead + end - start)
      })
      const path = join(folder, 'blob')
      const file = await PieceFile.open(path, { size: pieceSize, pieceSize })
      expect(await file.verifyAndWrite(chunks, { position: 0, sha256: sha256(piece) })).toBe(true)
      await file.close()
      expect((await readFile(path)).equals(piece)).toBe(true)
      // Moved to the writing thread: empty here. The views of larger buffers were copied.
      expect(chunks.map((chunk) => chunk.byteLength > 0)).toEqual([
        true,
        false,
        true,
        false,
        true,
        false,
      ])
    })
  })

  it('makes verifyAndWrite() wait while every buffer holds a piece, and lets an abort end the wait', async () => {
    await withTempDir(async (folder) => {
      const path = join(folder, 'blob')
      const file = await openWithOneBuffer(path)
      const first = pieceOf(0)
      const second = pieceOf(1)
      const written = file.verifyAndWrite([first.bytes], first.target)
      const controller = new AbortController()
      const aborted = file.verifyAndWrite([second.bytes], {
        ...second.target,
        signal: controller.signal,
      })
      controller.abort(new Error('no longer needed'))
      await expect(aborted).rejects.toThrow('no longer needed')
      // Handed over once the first is written.
      let done = false
      const next = file.verifyAndWrite([second.bytes], second.target).finally(() => {
        done = true
      })
      expect(await written).toBe(true)
      expect(done).toBe(false)
      expect(await next).toBe(true)
      await file.close()
      expect(
        (await readFile(path)).subarray(0, 2 * PIECE).equals(content.subarray(0, 2 * PIECE)),
      ).toBe(true)
    })
  })

  it('refuses pieces once it closes, those waiting for a buffer included', async () => {
    await withTempDir(async (folder) => {
      const file = await openWithOneBuffer(join(folder, 'blob'))
      const first = pieceOf(0)
      const second = pieceOf(1)
      const written = file.verifyAndWrite([first.bytes], first.target)
      const waiting = file.verifyAndWrite([second.bytes], second.target)
      const refused = expect(waiting).rejects.toMatchObject({ code: 'LLMESH_ABORTED' })
      const closed = file.close()
      // The piece handed over is written before the file closes; the one waiting is refused.
      expect(await written).toBe(true)
      await refused
      await closed
      await expect(file.verifyAndWrite([second.bytes], second.target)).rejects.toMatchObject({
        code: 'LLMESH_ABORTED',
      })
    })
  })

  it('refuses a piece larger than the piece size', async () => {
    await withTempDir(async (folder) => {
      const file = await openWithOneBuffer(join(folder, 'blob'))
      const piece = pieceOf(0)
      await expect(
        file.verifyAndWrite([piece.bytes, Buffer.alloc(1)], piece.target),
      ).rejects.toMatchObject({ code: 'LLMESH_INVALID_ARGUMENT' })
      expect(await file.verifyAndWrite([piece.bytes], piece.target)).toBe(true)
      await file.close()
    })
  })

  it('writes through the page cache when pieces are too small to align', async () => {
    await withTempDir(async (folder) => {
      const path = join(folder, 'blob')
      await writeFile(path, Buffer.alloc(0))
      const file = await PieceFile.open(path, { size: 3000, pieceSize: 1024 })
      expect(file.direct).toBe(false)
      const small = randomBytes(3000)
      for (const index of [2, 0, 1]) {
        const piece = small.subarray(index * 1024, (index + 1) * 1024)
        expect(
          await file.verifyAndWrite([piece], { position: index * 1024, sha256: sha256(piece) }),
        ).toBe(true)
      }
      await file.close()
      expect((await readFile(path)).equals(small)).toBe(true)
    })
  })
})
