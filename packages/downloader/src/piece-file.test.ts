import { createHash, randomBytes } from 'node:crypto'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { withTempDir } from '@llmesh/testkit'
import { describe, expect, it } from 'vitest'
import { PieceFile } from './piece-file.js'

const PIECE = 64 * 1024

/** Writes `content` in pieces, in the order given, from chunks of uneven sizes. */
async function writePieces(file: PieceFile, content: Buffer, order: number[]): Promise<void> {
  await Promise.all(
    order.map(async (index) => {
      const piece = content.subarray(index * PIECE, (index + 1) * PIECE)
      const chunks = [piece.subarray(0, 1000), piece.subarray(1000, 40_000), piece.subarray(40_000)]
      const staged = await file.stage(chunks)
      await file.write(staged, index * PIECE)
    }),
  )
}

describe('PieceFile', () => {
  // The last piece ends off any 4 KiB boundary, so its tail goes through the page cache.
  const content = randomBytes(4 * PIECE + 1000)

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

  it('hashes staged bytes off the main thread, to the same SHA-256', async () => {
    await withTempDir(async (folder) => {
      const file = await PieceFile.open(join(folder, 'blob'), {
        size: content.length,
        pieceSize: PIECE,
      })
      const last = content.subarray(4 * PIECE)
      const staged = await file.stage([last])
      expect(Buffer.from(await file.sha256(staged)).toString('hex')).toBe(
        createHash('sha256').update(last).digest('hex'),
      )
      file.release(staged)
      await file.close()
    })
  })

  it('stages chunks that start at any alignment, as they come off a network stream', async () => {
    await withTempDir(async (folder) => {
      const pieceSize = 256 * 1024
      const piece = randomBytes(pieceSize)
      // Each chunk starts at an odd place of a larger buffer, as a frame's payload does; one is
      // larger than the room of the staging copy's bounce buffer.
      const cuts = [0, 3, 5000, 5001, 5000 + 150_000, pieceSize]
      const chunks = cuts.slice(1).map((end, position) => {
        const start = cuts[position]!
        const carrier = Buffer.alloc(end - start + 16)
        const lead = 1 + ((position * 3) % 7)
        piece.copy(carrier, lead, start, end)
        return carrier.subarray(lead, lead + end - start)
      })
      const path = join(folder, 'blob')
      const file = await PieceFile.open(path, { size: pieceSize, pieceSize })
      const staged = await file.stage(chunks)
      expect(Buffer.from(staged).equals(piece)).toBe(true)
      expect(Buffer.from(await file.sha256(staged)).toString('hex')).toBe(
        createHash('sha256').update(piece).digest('hex'),
      )
      await file.write(staged, 0)
      await file.close()
      expect((await readFile(path)).equals(piece)).toBe(true)
    })
  })

  it('makes stage() wait while every buffer holds a piece, and lets an abort end the wait', async () => {
    await withTempDir(async (folder) => {
      const file = await PieceFile.open(join(folder, 'blob'), {
        size: content.length,
        pieceSize: PIECE,
        buffers: 1,
      })
      const first = await file.stage([content.subarray(0, PIECE)])
      const controller = new AbortController()
      const aborted = file.stage([content.subarray(PIECE, 2 * PIECE)], controller.signal)
      controller.abort(new Error('no longer needed'))
      await expect(aborted).rejects.toThrow('no longer needed')

      let staged = false
      const second = file.stage([content.subarray(PIECE, 2 * PIECE)]).then((bytes) => {
        staged = true
        return bytes
      })
      await new Promise((resolve) => setImmediate(resolve))
      expect(staged).toBe(false)
      await file.write(first, 0)
      const bytes = await second
      expect(Buffer.from(bytes).equals(content.subarray(PIECE, 2 * PIECE))).toBe(true)
      await file.write(bytes, PIECE)
      await file.close()
    })
  })

  it('refuses a piece larger than the piece size, and frees its buffer', async () => {
    await withTempDir(async (folder) => {
      const file = await PieceFile.open(join(folder, 'blob'), {
        size: content.length,
        pieceSize: PIECE,
        buffers: 1,
      })
      await expect(file.stage([content.subarray(0, PIECE), Buffer.alloc(1)])).rejects.toMatchObject(
        { code: 'LLMESH_INVALID_ARGUMENT' },
      )
      const staged = await file.stage([content.subarray(0, PIECE)])
      expect(staged.byteLength).toBe(PIECE)
      file.release(staged)
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
      for (const index of [2, 0, 1])
        await file.write(
          await file.stage([small.subarray(index * 1024, (index + 1) * 1024)]),
          index * 1024,
        )
      await file.close()
      expect((await readFile(path)).equals(small)).toBe(true)
    })
  })
})
