import { type FileHandle, open } from 'node:fs/promises'
import { systemErrorCode } from './errors.js'

/** Opens a partial file for reading and writing, keeping what an earlier run wrote, or creates it. */
export async function openPartialFile(path: string): Promise<FileHandle> {
  try {
    return await open(path, 'r+')
  } catch (error) {
    if (systemErrorCode(error) !== 'ENOENT') throw error
    return await open(path, 'w+')
  }
}

/** Writes all of `bytes` at `position`, however many writes the system makes of it. */
export async function writeAll(
  handle: FileHandle,
  bytes: Uint8Array,
  position: number,
): Promise<void> {
  let written = 0
  while (written < bytes.byteLength) {
    const { bytesWritten } = await handle.write(
      bytes,
      written,
      bytes.byteLength - written,
      position + written,
    )
    written += bytesWritten
  }
}
