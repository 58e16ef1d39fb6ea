import { type FileHandle, open, readFile, rm } from 'node:fs/promises'
import { systemErrorCode } from './errors.js'

/** What a journal describes; a journal written for anything else is discarded, with its data. */
export interface JournalHeader {
  size: number
  pieceSize: number
  /** The expected sha256, or a key derived from the URL when it is not known yet. */
  key: string
  /** Whether pieces were checked against per-piece hashes before being journaled. */
  verification: 'pieces' | 'none'
}

/**
 * The record of pieces already written to a partial file: a header line, then one line per piece
 * index, appended after the piece's bytes are written. A crash mid-append leaves a torn last line,
 * which is ignored, so the journal never claims a piece whose write it did not see finish.
 * Pieces it claims are checked again on resume when per-piece hashes exist.
 */
export class Journal {
  private constructor(
    private readonly handle: FileHandle,
    readonly pieces: ReadonlySet<number>,
  ) {}

  static async open(path: string, header: JournalHeader): Promise<Journal> {
    const line = headerLine(header)
    const pieces = new Set<number>()
    let text: string | undefined
    try {
      text = await readFile(path, 'utf8')
    } catch (error) {
      if (systemErrorCode(error) !== 'ENOENT') throw error
    }
    const count = Math.ceil(header.size / header.pieceSize)
    if (text?.startsWith(`${line}\n`)) {
      const lines = text.slice(line.length + 1).split('\n')
      lines.pop() // the last element is '' after a complete line, or a torn line
      for (const entry of lines) {
        const index = Number(entry)
        if (/^\d+$/.test(entry) && index < count) pieces.add(index)
      }
    } else if (text !== undefined) await rm(path, { force: true })
    const handle = await open(path, 'a')
    if (text === undefined || !text.startsWith(`${line}\n`)) await handle.write(`${line}\n`)
    return new Journal(handle, pieces)
  }

  /** Whether the journal at `path` was written for something other than `header` (so its data is stale). */
  static async matches(path: string, header: JournalHeader): Promise<boolean> {
    try {
      return (await readFile(path, 'utf8')).startsWith(`${headerLine(header)}\n`)
    } catch {
      return false
    }
  }

  /** Reads the piece indexes of a journal without opening it for writing (for progress of another process). */
  static async countPieces(path: string): Promise<number> {
    try {
      const lines = (await readFile(path, 'utf8')).split('\n')
      return Math.max(0, lines.length - 2)
    } catch {
      return 0
    }
  }

  async append(index: number): Promise<void> {
    await this.handle.write(`${index}\n`)
  }

  async close(): Promise<void> {
    await this.handle.close()
  }
}

function headerLine({ size, pieceSize, key, verification }: JournalHeader): string {
  return `llmesh-journal 1 size=${size} pieceSize=${pieceSize} key=${key} verification=${verification}`
}
