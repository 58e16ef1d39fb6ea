import { randomBytes } from 'node:crypto'
import { mkdir, rename, rm, writeFile } from 'node:fs/promises'
import { dirname } from 'node:path'

/** Writes a file atomically: a temporary file in the same folder, renamed into place. */
export async function writeFileAtomic(
  path: string,
  data: string | Uint8Array,
  { mode }: { mode?: number } = {},
): Promise<void> {
  await mkdir(dirname(path), { recursive: true })
  const temporary = `${path}.partial-${randomBytes(6).toString('hex')}`
  try {
    await writeFile(temporary, data, { mode, flag: 'wx' })
    await rename(temporary, path)
  } catch (error) {
    await rm(temporary, { force: true })
    throw error
  }
}
