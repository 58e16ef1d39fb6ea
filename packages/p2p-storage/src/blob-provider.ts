/**
 * What a node serves to its peers: every complete blob of its store that has a piece index (a
 * peer needs the piece size to ask, and verifies with its own copy of the index), and the
 * verified pieces of the downloads it runs now, so that a node that is still downloading already
 * serves what it has.
 */
import { type FileHandle, open } from 'node:fs/promises'
import type { ModelStore } from '@llmesh/downloader'
import { pieceCount } from '@llmesh/manifest'
import { Bitfield } from './bitfield.js'

export interface ServedBlob {
  size: number
  pieceSize: number
  /** Verified pieces only. */
  have: Bitfield
  /** Bytes [start, end) of the blob. */
  read(start: number, end: number): Promise<Uint8Array>
}

export interface BlobProvider {
  lookup(digest: string): Promise<ServedBlob | undefined>
}

/** Complete blobs of a store, plus downloads in progress registered with `serve()`. */
export class StoreBlobProvider implements BlobProvider {
  private readonly inProgress = new Map<string, ServedBlob>()
  private readonly complete = new Map<string, ServedBlob>()
  /** The files open for serving, closed by `close()`. */
  private readonly readers = new Set<{ close(): void }>()

  constructor(private readonly store?: ModelStore) {}

  /** Serves a download in progress: `have` grows as pieces are verified; `path` holds them. */
  serve(
    digest: string,
    blob: { size: number; pieceSize: number; have: Bitfield; path: string },
  ): () => void {
    const reader = fileReader(blob.path)
    this.readers.add(reader)
    const served = { ...blob, read: reader.read }
    this.inProgress.set(digest, served)
    return () => {
      if (this.inProgress.get(digest) === served) this.inProgress.delete(digest)
      this.readers.delete(reader)
      reader.close()
    }
  }

  async lookup(digest: string): Promise<ServedBlob | undefined> {
    const running = this.inProgress.get(digest)
    if (running !== undefined) return running
    const known = this.complete.get(digest)
    if (known !== undefined) return known
    if (this.store === undefined || !(await this.store.hasBlob(digest))) return undefined
    const pieceIndex = await this.store.readPieceIndex(digest)
    if (pieceIndex === undefined) return undefined
    const reader = fileReader(this.store.blobPath(digest))
    this.readers.add(reader)
    const served: ServedBlob = {
      size: pieceIndex.size,
      pieceSize: pieceIndex.pieceSize,
      have: Bitfield.full(pieceCount(pieceIndex.size, pieceIndex.pieceSize)),
      read: reader.read,
    }
    this.complete.set(digest, served)
    return served
  }

  /**
   * Stops serving every blob and closes their files (once the reads under way are done): a node
   * stopping calls it for the provider it made. Reads after it fail.
   */
  close(): void {
    for (const reader of this.readers) reader.close()
    this.readers.clear()
    this.inProgress.clear()
    this.complete.clear()
  }

  /** The digests served now: complete blobs with a piece index, and downloads in progress. */
  async digests(): Promise<string[]> {
    const digests = new Set(this.inProgress.keys())
    for (const blob of this.store?.index.blobs() ?? [])
      if ((await this.store!.readPieceIndex(blob.sha256)) !== undefined) digests.add(blob.sha256)
    return [...digests]
  }
}

/**
 * Reads ranges of a file through one handle, opened on first use and kept (seeds read many
 * pieces). `close()` closes it once the reads under way are done; a read after it fails.
 */
function fileReader(path: string): { read: ServedBlob['read']; close(): void } {
  let handle: Promise<FileHandle> | undefined
  let closed = false
  const read: ServedBlob['read'] = async (start, end) => {
    if (closed) throw new Error(`${path} is no longer served`)
    handle ??= open(path, 'r')
    const file = await handle
    const buffer = Buffer.allocUnsafe(end - start)
    let offset = 0
    while (offset < buffer.length) {
      const { bytesRead } = await file.read(buffer, offset, buffer.length - offset, start + offset)
      if (bytesRead === 0) throw new Error(`${path} ends before byte ${start + offset}`)
      offset += bytesRead
    }
    return buffer
  }
  return {
    read,
    close() {
      closed = true
      // FileHandle.close() waits for the reads under way.
      void handle?.then((file) => file.close()).catch(() => {})
    },
  }
}
