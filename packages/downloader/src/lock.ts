import { open, readFile, rm, stat, utimes } from 'node:fs/promises'
import { hostname } from 'node:os'
import { type AbortOptions, sleep } from '@llmesh/core'
import { systemErrorCode } from './errors.js'

export interface LockHolder {
  pid: number
  host: string
  startedAt: string
}

/** A held lock; refreshed while held so that other hosts sharing the store see it is alive. */
export interface HeldLock {
  release(): Promise<void>
}

/** A lock not refreshed for this long is stale even if its pid cannot be checked (another host). */
const STALE_AFTER_MS = 60_000
const REFRESH_EVERY_MS = 10_000

/**
 * Tries to take the lock file at `path` (created with O_EXCL). A lock whose holder is dead (same
 * host, no such pid) or that has not been refreshed for a minute is taken over.
 *
 * The lock only saves work: two processes that both download the same blob write the same
 * verified bytes to the same offsets, and publishing is an atomic rename, so correctness never
 * depends on it (a takeover race can at worst make two processes do the same work).
 */
export async function tryLock(path: string): Promise<HeldLock | { holder: LockHolder }> {
  for (let attempt = 0; attempt < 3; attempt++) {
    const holder: LockHolder = {
      pid: process.pid,
      host: hostname(),
      startedAt: new Date().toISOString(),
    }
    try {
      const handle = await open(path, 'wx')
      await handle.writeFile(JSON.stringify(holder))
      await handle.close()
      const timer = setInterval(() => {
        const now = new Date()
        utimes(path, now, now).catch(() => {})
      }, REFRESH_EVERY_MS)
      timer.unref()
      return {
        async release() {
          clearInterval(timer)
          // Remove it only if it is still ours (a takeover may have replaced it).
          const current = await readHolder(path)
          if (current?.pid === holder.pid && current.host === holder.host)
            await rm(path, { force: true })
        },
      }
    } catch (error) {
      if (systemErrorCode(error) !== 'EEXIST') throw error
    }
    const current = await readHolder(path)
    if (current === undefined || (await isStale(path, current))) {
      await rm(path, { force: true })
      continue
    }
    return { holder: current }
  }
  const current = await readHolder(path)
  return { holder: current ?? { pid: 0, host: '', startedAt: '' } }
}

/** Waits until the lock at `path` is released or goes stale, calling `onWait` on every look. */
export async function waitForRelease(
  path: string,
  {
    signal,
    onWait,
    intervalMs = 200,
  }: AbortOptions & { onWait?: (holder: LockHolder) => Promise<void> | void; intervalMs?: number },
): Promise<void> {
  for (;;) {
    const holder = await readHolder(path)
    if (holder === undefined || (await isStale(path, holder))) return
    await onWait?.(holder)
    await sleep(intervalMs, { signal })
  }
}

async function readHolder(path: string): Promise<LockHolder | undefined> {
  try {
    const holder = JSON.parse(await readFile(path, 'utf8')) as LockHolder
    return typeof holder.pid === 'number' ? holder : undefined
  } catch (error) {
    // A lock being written right now reads as empty: treat it as held by an unknown live process.
    if (systemErrorCode(error) === 'ENOENT') return undefined
    return { pid: -1, host: '', startedAt: '' }
  }
}

async function isStale(path: string, holder: LockHolder): Promise<boolean> {
  if (holder.host === hostname() && holder.pid > 0) return !isProcessAlive(holder.pid)
  try {
    const { mtimeMs } = await stat(path)
    return Date.now() - mtimeMs > STALE_AFTER_MS
  } catch {
    return true
  }
}

/** Whether a process with this pid runs on this host (EPERM: it does, under another user). */
export function isProcessAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return systemErrorCode(error) === 'EPERM'
  }
}
