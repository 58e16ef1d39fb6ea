import { createHash, randomBytes } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { ManifestError } from './manifest-error.js'
import {
  defaultPieceSize,
  hashPiece,
  PIECE_HASH_BYTES,
  PieceIndex,
  pieceCount,
  pieceRange,
} from './pieces.js'

function indexOf(data: Uint8Array, pieceSize: number): PieceIndex {
  const count = pieceCount(data.byteLength, pieceSize)
  const hashes = new Uint8Array(count * PIECE_HASH_BYTES)
  for (let index = 0; index < count; index++) {
    const { start, end } = pieceRange(index, data.byteLength, pieceSize)
    hashes.set(hashPiece(data.subarray(start, end)), index * PIECE_HASH_BYTES)
  }
  return new PieceIndex({
    sha256: createHash('sha256').update(data).digest('hex'),
    size: data.byteLength,
    pieceSize,
    hashes,
  })
}

describe('per-piece integrity', () => {
  const data = randomBytes(10_000)
  const index = indexOf(data, 1024)

  it('cuts a file into fixed pieces with a shorter last piece', () => {
    expect(index.count).toBe(10)
    expect(index.range(9)).toEqual({ start: 9216, end: 10_000 })
    expect(() => index.range(10)).toThrow(RangeError)
  })

  it('verifies each piece on its own and rejects a flipped byte or a wrong length', () => {
    for (let piece = 0; piece < index.count; piece++) {
      const { start, end } = index.range(piece)
      expect(index.verifyPiece(piece, data.subarray(start, end))).toBe(true)
    }
    const bad = Buffer.from(data.subarray(0, 1024))
    bad[500]! ^= 1
    expect(index.verifyPiece(0, bad)).toBe(false)
    expect(index.verifyPiece(9, data.subarray(9216, 9999))).toBe(false)
    expect(index.verifyPiece(1, data.subarray(0, 1024))).toBe(false)
  })

  it('checks a piece hashed elsewhere by its length and digest', () => {
    const last = data.subarray(9216, 10_000)
    const digest = hashPiece(last)
    expect(index.matchesPiece(9, last.byteLength, digest)).toBe(true)
    expect(index.matchesPiece(9, last.byteLength - 1, digest)).toBe(false)
    expect(index.matchesPiece(8, last.byteLength, digest)).toBe(false)
  })

  it('verifies a piece given in the chunks it arrived in, without joining them', () => {
    const chunks = [data.subarray(2048, 2100), data.subarray(2100, 2100), data.subarray(2100, 3072)]
    expect(index.verifyPiece(2, chunks)).toBe(true)
    const flipped = Buffer.from(data.subarray(2100, 3072))
    flipped[7]! ^= 1
    expect(index.verifyPiece(2, [chunks[0]!, flipped])).toBe(false)
    expect(index.verifyPiece(2, chunks.slice(0, 1))).toBe(false)
    expect(index.verifyPiece(2, [...chunks, new Uint8Array(1)])).toBe(false)
  })

  it('round-trips through JSON and matches the manifest it came from', () => {
    const copy = PieceIndex.fromJSON(JSON.parse(JSON.stringify(index)))
    const artifact = { sha256: index.sha256, size: index.size, pieces: index.integrity }
    expect(() => copy.assertMatches(artifact)).not.toThrow()
    expect(copy.verifyPiece(3, data.subarray(3072, 4096))).toBe(true)
  })

  it('refuses an index whose layer is not the manifest one', () => {
    const document = index.toJSON()
    document.pieces[4] = 'f'.repeat(64)
    const forged = PieceIndex.fromJSON(document)
    try {
      forged.assertMatches({ sha256: index.sha256, size: index.size, pieces: index.integrity })
      expect.unreachable()
    } catch (error) {
      expect(ManifestError.isInstance(error)).toBe(true)
      expect((error as ManifestError).code).toBe('LLMESH_PIECE_INDEX_MISMATCH')
      expect((error as Error).message).toContain('piece layer digest')
    }
  })

  it('refuses a malformed index document with the path of the problem', () => {
    const document = { ...index.toJSON(), pieces: index.toJSON().pieces.slice(1) }
    expect(() => PieceIndex.fromJSON(document)).toThrow(/9 hashes/)
    try {
      PieceIndex.fromJSON({ ...index.toJSON(), size: -1 })
      expect.unreachable()
    } catch (error) {
      expect((error as ManifestError).issues[0]?.path).toBe('size')
    }
  })

  it('chooses piece sizes that keep the index small', () => {
    expect(defaultPieceSize(10)).toBe(1024 * 1024)
    expect(defaultPieceSize(1024 ** 3)).toBe(1024 * 1024)
    expect(defaultPieceSize(100 * 1024 ** 3)).toBe(32 * 1024 * 1024)
    expect(pieceCount(100 * 1024 ** 3, defaultPieceSize(100 * 1024 ** 3))).toBeLessThanOrEqual(4096)
    expect(defaultPieceSize(10 * 1024 ** 4)).toBe(64 * 1024 * 1024)
  })
})
