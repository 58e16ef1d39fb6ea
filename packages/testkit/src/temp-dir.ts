import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

export interface TempDir {
  path: string
  /** Removes the folder and everything in it; safe to call twice. */
  remove(): Promise<void>
  [Symbol.asyncDispose](): Promise<void>
}

/** A fresh folder under the system temp dir, for `await using` or an explicit `remove()`. */
export async function createTempDir(prefix = 'llmesh-test-'): Promise<TempDir> {
  const path = await mkdtemp(join(tmpdir(), prefix))
  const remove = () => rm(path, { recursive: true, force: true, maxRetries: 3 })
  return { path, remove, [Symbol.asyncDispose]: remove }
}

/** Runs `work` with a fresh temp dir and removes it afterwards, whatever happens. */
export async function withTempDir<Result>(
  work: (path: string) => Promise<Result>,
  prefix?: string,
): Promise<Result> {
  const directory = await createTempDir(prefix)
  try {
    return await work(directory.path)
  } finally {
    await directory.remove()
  }
}
