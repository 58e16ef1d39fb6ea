import { ByteSourceError } from '@llmesh/core'
import { type Mirror, startMirror } from '@llmesh/testkit'
import { afterEach, describe, expect, it } from 'vitest'
import { HttpSource } from './http-source.js'
import { RangeSockets } from './range-sockets.js'

const data = new Uint8Array(3_000_000).map((_, index) => (index * 7) % 251)
const PIECE = 256 * 1024
const open: Array<{ close(): Promise<void> | void }> = []
afterEach(async () => {
  for (const item of open.splice(0).reverse()) await item.close()
})

/** A mirror that answers every request with the whole file (200), as `python3 -m http.server` does. */
async function startMirrorIgnoringRange(): Promise<Mirror> {
  const mirror = await startMirror({
    files: { '/model.bin': data },
    faults: [{ fault: { kind: 'ignore-range' } }],
  })
  open.push(mirror)
  return mirror
}

/** Reads [start, end) and returns its bytes. */
async function read(source: HttpSource, start: number, end: number) {
  const chunks: Buffer[] = []
  for await (const chunk of source.read({ digest: 'a'.repeat(64), start, end }))
    chunks.push(Buffer.from(chunk))
  return Buffer.concat(chunks)
}

// Through undici, and through the reused-buffer sockets, whose chunks are views valid only until
// the next is asked for (what a range leaves of its last chunk must survive until the next read).
describe.each([
  ['undici', () => undefined],
  ['reused-buffer sockets', () => new RangeSockets()],
])('HttpSource from a server that ignores Range (%s)', (_name, sockets) => {
  function sourceFor(mirror: Mirror, expectedSize = data.byteLength) {
    const rangeSockets = sockets()
    if (rangeSockets !== undefined) open.push(rangeSockets)
    const source = new HttpSource({
      url: mirror.urlOf('/model.bin'),
      expectedSize,
      ...(rangeSockets === undefined ? {} : { sockets: rangeSockets }),
    })
    open.push(source)
    return source
  }

  it('reads ranges in order from one whole-file answer, every byte right', async () => {
    const mirror = await startMirrorIgnoringRange()
    const source = sourceFor(mirror)
    expect(source.sequential).toBe(false)
    // Pieces that do not line up with the server's chunks, and a gap (a piece another source got).
    const ranges = [
      [0, PIECE],
      [PIECE, 2 * PIECE + 1],
      [2 * PIECE + 1, 3 * PIECE],
      [5 * PIECE, 6 * PIECE - 7],
      [6 * PIECE - 7, data.byteLength],
    ] as const
    for (const [start, end] of ranges)
      expect((await read(source, start, end)).equals(data.subarray(start, end))).toBe(true)
    expect(source.sequential).toBe(true)
    // The first answer (to the first range request) is cut and closed; every read after it takes
    // its range from one answer, kept open between reads.
    expect(mirror.requests.filter((request) => request.method === 'GET')).toHaveLength(2)
  })

  it('starts over from the first byte for a range behind the last one read', async () => {
    const mirror = await startMirrorIgnoringRange()
    const source = sourceFor(mirror)
    await read(source, 0, PIECE)
    await read(source, 4 * PIECE, 5 * PIECE)
    // A piece retried, say: behind where the open answer stands.
    expect((await read(source, PIECE, 2 * PIECE)).equals(data.subarray(PIECE, 2 * PIECE))).toBe(
      true,
    )
    expect(mirror.requests.filter((request) => request.method === 'GET')).toHaveLength(3)
  })

  it('refuses a whole-file answer of another size than the artifact', async () => {
    const mirror = await startMirrorIgnoringRange()
    const source = sourceFor(mirror, data.byteLength + 1)
    const error = await read(source, 0, PIECE).catch((caught: unknown) => caught)
    expect(ByteSourceError.isInstance(error)).toBe(true)
    expect(error).toMatchObject({ failure: 'range-not-satisfiable' })
    expect((error as Error).message).toMatch(/answered 200 with 3000000 bytes, not the 3000001/)
  })

  it('closes the answer when a read is given up; the next read starts over from the first byte', async () => {
    const mirror = await startMirrorIgnoringRange()
    const source = sourceFor(mirror)
    await read(source, 0, PIECE)
    // A read stopped after its first chunk (a faster source won the piece, say).
    for await (const _chunk of source.read({
      digest: 'a'.repeat(64),
      start: PIECE,
      end: 2 * PIECE,
    }))
      break
    expect(
      (await read(source, 2 * PIECE, 3 * PIECE)).equals(data.subarray(2 * PIECE, 3 * PIECE)),
    ).toBe(true)
    expect(mirror.requests.filter((request) => request.method === 'GET')).toHaveLength(3)
  })
})

describe('HttpSource answers', () => {
  it('calls a 429 or 503 without Retry-After busy, and one with it unavailable for that long', async () => {
    const mirror = await startMirror({ files: { '/model.bin': data } })
    open.push(mirror)
    const source = new HttpSource({
      url: mirror.urlOf('/model.bin'),
      expectedSize: data.byteLength,
    })
    open.push(source)
    const failureOf = async () => {
      try {
        await read(source, 0, PIECE)
      } catch (error) {
        if (ByteSourceError.isInstance(error)) return [error.failure, error.retryAfterMs]
        throw error
      }
      return ['read', undefined]
    }
    for (const status of [429, 503]) {
      mirror.inject({ fault: { kind: 'status', status }, times: 1 })
      expect(await failureOf()).toEqual(['busy', undefined])
      mirror.inject({ fault: { kind: 'status', status, retryAfterSeconds: 2 }, times: 1 })
      expect(await failureOf()).toEqual(['unavailable', 2000])
    }
    mirror.inject({ fault: { kind: 'status', status: 502 }, times: 1 })
    expect(await failureOf()).toEqual(['unavailable', undefined])
    expect(await failureOf()).toEqual(['read', undefined])
  })
})
