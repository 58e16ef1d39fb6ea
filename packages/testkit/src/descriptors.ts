import { readdirSync, readlinkSync } from 'node:fs'

/**
 * How many of this process's file descriptors are open on `path`, read from `/proc/self/fd`: for
 * tests that a file is closed when it should be. Linux only; elsewhere it throws.
 */
export function openDescriptorsOf(path: string): number {
  return readdirSync('/proc/self/fd').filter((descriptor) => {
    try {
      return readlinkSync(`/proc/self/fd/${descriptor}`) === path
    } catch {
      return false // closed meanwhile
    }
  }).length
}
