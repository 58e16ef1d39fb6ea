import { setFlagsFromString } from 'node:v8'

/**
 * Lets V8 count the bytes of network and file buffers in its global heap limit, instead of
 * starting a full garbage collection each time a few tens of megabytes of them pile up.
 *
 * A download reads hundreds of megabytes per second into short-lived buffers. With V8's default,
 * a 2 GiB pull ran about 80 full collections (one every 100 ms, each pausing the thread that
 * hashes and writes the pieces); with this, about 25. It changes a flag of the whole process, so
 * it is a choice for the program, not for a library: the `llmesh` CLI makes it at startup.
 * Returns false, and changes nothing, on a V8 older than 13 (Node 22), which lacks the flag.
 */
export function countBuffersInHeapLimit(): boolean {
  if (Number(process.versions.v8.split('.')[0]) < 13) return false
  setFlagsFromString('--external-memory-accounted-in-global-limit')
  return true
}
