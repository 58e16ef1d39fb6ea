import { setFlagsFromString } from 'node:v8'

/**
 * Tunes V8's garbage collector for a process that moves large files. It changes flags of the
 * whole process, so it is a choice for the program, not for a library: the `llmesh` CLI makes it
 * at startup. Two flags:
 *
 * - **Buffers count in the global heap limit.** A transfer reads hundreds of megabytes per
 *   second into short-lived buffers. With V8's default, a full collection starts each time a few
 *   tens of megabytes of them pile up: a 2 GiB pull through undici ran about 80 (one every 100 ms,
 *   each pausing the thread that hashes and writes the pieces); with this, about 25. HTTP piece
 *   bodies are now read into reused buffers, which made this moot for them (same speed without
 *   it, and about 40 MiB less peak memory); libp2p streams still allocate per read.
 * - **The heap may grow to five times what the last full collection kept** before the next one.
 *   V8's own factor falls when the CPU is contended, which is when collections cost most: in the
 *   peer-to-peer swarm benchmark (nine processes on two cores) each process ran a full collection
 *   about every two seconds, and the swarm took about 10 % longer than with a factor of three.
 *   Buffers count in that limit (above), so at three times a small heap, the TLS records of a
 *   fast libp2p stream (16 KiB each) still started a full collection about every 100 MiB: the
 *   one-to-one section of the peer-to-peer benchmark (24 GiB over libp2p) ran 192 in all its
 *   processes against 38 at five times, and a verified GiB took 2.85 s against 3.17 s (TLS). The
 *   swarm of 8 ran 27 against 37 in as long, and the peak RSS of a 4 GiB pull did not change
 *   (184 MiB).
 *
 * Returns false, and changes nothing, on a V8 older than 13 (Node 22), which lacks the first flag.
 */
export function tuneHeapForTransfers(): boolean {
  if (Number(process.versions.v8.split('.')[0]) < 13) return false
  setFlagsFromString('--external-memory-accounted-in-global-limit')
  setFlagsFromString('--heap-growing-percent=400')
  return true
}
