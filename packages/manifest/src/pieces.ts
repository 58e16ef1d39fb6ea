/**
 * Per-piece integrity: the scheme that lets a downloader or a peer check every piece of an
 * artifact on its own, before the whole file is there.
 *
 * An artifact is cut into pieces of `pieceSize` bytes (a power of two; the last piece may be
 * shorter). Each piece's SHA-256 is a 32-byte piece hash. The piece hashes, concatenated in order,
 * form the *piece layer*; its SHA-256 is the `layer` digest written in the manifest. The layer
 * itself travels separately as a *piece index* (JSON, about 70 bytes per piece) fetched from any
 * mirror or peer and checked against `layer` before use. This is BitTorrent v2's "piece layer"
 * without the Merkle tree above it: a tree would let a peer prove one piece without the layer,
 * but every llmesh client downloads whole artifacts, so it needs the layer anyway, and a flat
 * layer is simpler to compute (one pass with the whole-file sha256) and to check.
 *
 * The manifest's `sha256` of the whole file stays the final word: a file is published only when
 * every piece and the whole-file digest agree.
 */
import { createHash } from 'node:crypto'
import { z } from 'zod'
import { ManifestError } from './manifest-error.js'
import { issuesFromZod } from './parse.js'
import { byteCountSchema, type PieceIntegrity, SCHEMA_VERSION, sha256Schema } from './schema.js'

export const PIECE_HASH_BYTES = 32
export const MIN_PIECE_SIZE = 1024
export const MAX_PIECE_SIZE = 64 * 1024 * 1024

/**
 * The piece size used when none is given: the smallest power of two of at least 1 MiB that keeps
 * an artifact at or under 4096 pieces (1 GiB → 1 MiB pieces, 100 GiB → 32 MiB pieces), capped at
 * 64 MiB. Enough pieces to spread a swarm's work, few enough that the index stays small.
 */
export function defaultPieceSize(size: number): number {
  let pieceSize = 1024 * 1024
  while (pieceSize < MAX_PIECE_SIZE && Math.ceil(size / pieceSize) > 4096) pieceSize *= 2
  return pieceSize
}

export function pieceCount(size: number, pieceSize: number): number {
  return Math.ceil(size / pieceSize)
}

/** Bytes [start, end) of piece `index`. */
export function pieceRange(
  index: number,
  size: number,
  pieceSize: number,
): { start: number; end: number } {
  const start = index * pieceSize
  return { start, end: Math.min(size, start + pieceSize) }
}

/** SHA-256 of one piece, whole or in the chunks it arrived in (no need to join them first). */
export function hashPiece(bytes: Uint8Array | readonly Uint8Array[]): Uint8Array {
  const hash = createHash('sha256')
  for (const chunk of bytes instanceof Uint8Array ? [bytes] : bytes) hash.update(chunk)
  return hash.digest()
}

/** The `layer` digest of concatenated piece hashes. */
export function pieceLayerDigest(pieceHashes: Uint8Array): string {
  return createHash('sha256').update(pieceHashes).digest('hex')
}

const pieceIndexSchema = z.strictObject({
  schemaVersion: z.literal(SCHEMA_VERSION),
  /** The whole-file digest of the artifact these pieces belong to. */
  sha256: sha256Schema,
  size: byteCountSchema,
  pieceSize: z.number().int().min(MIN_PIECE_SIZE).max(MAX_PIECE_SIZE),
  pieces: z.array(sha256Schema),
})

export type PieceIndexDocument = z.output<typeof pieceIndexSchema>

/**
 * The piece hashes of one artifact, checked against the manifest. Answers "is this piece right?"
 * for the downloader and the peer-to-peer exchange.
 */
export class PieceIndex {
  readonly sha256: string
  readonly size: number
  readonly pieceSize: number
  readonly count: number
  /** The concatenated 32-byte piece hashes. */
  readonly hashes: Uint8Array

  constructor({
    sha256,
    size,
    pieceSize,
    hashes,
  }: { sha256: string; size: number; pieceSize: number; hashes: Uint8Array }) {
    const count = pieceCount(size, pieceSize)
    if (hashes.byteLength !== count * PIECE_HASH_BYTES)
      throw new ManifestError({
        code: 'LLMESH_PIECE_INDEX_INVALID',
        issues: [
          {
            path: 'pieces',
            message: `has ${hashes.byteLength / PIECE_HASH_BYTES} hashes, but ${size} bytes in pieces of ${pieceSize} make ${count}`,
          },
        ],
      })
    this.sha256 = sha256
    this.size = size
    this.pieceSize = pieceSize
    this.count = count
    this.hashes = hashes
  }

  /** The `pieces` entry a manifest artifact carries for this index. */
  get integrity(): PieceIntegrity {
    return {
      algorithm: 'sha256-pieces',
      pieceSize: this.pieceSize,
      layer: pieceLayerDigest(this.hashes),
    }
  }

  range(index: number): { start: number; end: number } {
    this.assertIndex(index)
    return pieceRange(index, this.size, this.pieceSize)
  }

  hashOf(index: number): Uint8Array {
    this.assertIndex(index)
    return this.hashes.subarray(index * PIECE_HASH_BYTES, (index + 1) * PIECE_HASH_BYTES)
  }

  /** True when `bytes` (whole, or in chunks) are exactly piece `index`. */
  verifyPiece(index: number, bytes: Uint8Array | readonly Uint8Array[]): boolean {
    const { start, end } = this.range(index)
    const length =
      bytes instanceof Uint8Array
        ? bytes.byteLength
        : bytes.reduce((sum, chunk) => sum + chunk.byteLength, 0)
    if (length !== end - start) return false
    return this.matchesPiece(index, length, hashPiece(bytes))
  }

  /** True when `length` bytes whose SHA-256 is `digest` (hashed elsewhere, say on a worker) are piece `index`. */
  matchesPiece(index: number, length: number, digest: Uint8Array): boolean {
    const { start, end } = this.range(index)
    return length === end - start && Buffer.from(digest).equals(this.hashOf(index))
  }

  /**
   * Checks that this index belongs to `artifact` of a trusted manifest: same file digest and size,
   * same piece size, and a layer whose digest is the manifest's. Throws `ManifestError` otherwise.
   */
  assertMatches(artifact: {
    sha256: string
    size: number
    pieces?: PieceIntegrity | undefined
  }): void {
    const problems: string[] = []
    if (artifact.pieces === undefined) problems.push('the artifact has no piece integrity data')
    else {
      if (artifact.sha256 !== this.sha256)
        problems.push(`sha256 ${this.sha256} is not the artifact's ${artifact.sha256}`)
      if (artifact.size !== this.size)
        problems.push(`size ${this.size} is not the artifact's ${artifact.size}`)
      if (artifact.pieces.pieceSize !== this.pieceSize)
        problems.push(
          `pieceSize ${this.pieceSize} is not the artifact's ${artifact.pieces.pieceSize}`,
        )
      const layer = pieceLayerDigest(this.hashes)
      if (layer !== artifact.pieces.layer)
        problems.push(`piece layer digest ${layer} is not the manifest's ${artifact.pieces.layer}`)
    }
    if (problems.length > 0)
      throw new ManifestError({
        code: 'LLMESH_PIECE_INDEX_MISMATCH',
        issues: problems.map((message) => ({ path: 'pieces', message })),
      })
  }

  toJSON(): PieceIndexDocument {
    const pieces: string[] = []
    for (let index = 0; index < this.count; index++)
      pieces.push(Buffer.from(this.hashOf(index)).toString('hex'))
    return {
      schemaVersion: SCHEMA_VERSION,
      sha256: this.sha256,
      size: this.size,
      pieceSize: this.pieceSize,
      pieces,
    }
  }

  /** Reads a piece index document (already JSON-parsed); use `assertMatches` before trusting it. */
  static fromJSON(value: unknown, source?: string): PieceIndex {
    const result = pieceIndexSchema.safeParse(value)
    if (!result.success)
      throw new ManifestError({
        code: 'LLMESH_PIECE_INDEX_INVALID',
        source,
        issues: issuesFromZod(result.error),
      })
    const { sha256, size, pieceSize, pieces } = result.data
    const hashes = new Uint8Array(pieces.length * PIECE_HASH_BYTES)
    for (const [index, hex] of pieces.entries())
      hashes.set(Buffer.from(hex, 'hex'), index * PIECE_HASH_BYTES)
    return new PieceIndex({ sha256, size, pieceSize, hashes })
  }

  private assertIndex(index: number): void {
    if (!Number.isInteger(index) || index < 0 || index >= this.count)
      throw new RangeError(`piece index ${index} is outside 0..${this.count - 1}`)
  }
}
