import { closeSync, openSync, readSync } from 'node:fs'
import { type ByteRangeRequest, type ByteSource, ByteSourceError } from '@llmesh/core'
import { describe, expect, it } from 'vitest'
import type { DownloadProgressEvent } from './progress.js'
import { hfResolveUrl, parseHfUri } from './sources/hf.js'
import { parseRetryAfter } from './sources/http-source.js'
import { createFixture, expectNoBlob, expectVerifiedBlob, PIECE_SIZE } from './test-support.js'
import { TokenBucket } from './token-bucket.js'

describe('hf: URIs', () => {
  it('resolves owner, repository, file and revision against an endpoint', () => {
    const reference = parseHfUri('hf:acme/tiny-gguf/quant/model Q8.gguf#v1.2')
    expect(reference).toEqual({
      owner: 'acme',
      repo: 'tiny-gguf',
      file: 'quant/model Q8.gguf',
      revision: 'v1.2',
    })
    expect(hfResolveUrl(reference, 'http://127.0.0.1:9/').href).toBe(
      'http://127.0.0.1:9/acme/tiny-gguf/resolve/v1.2/quant/model%20Q8.gguf',
    )
    expect(parseHfUri('hf:acme/tiny/model.gguf').revision).toBe('main')
  })

  it('rejects URIs that could leave the repository or name no file', () => {
    expect(() => parseHfUri('hf:acme/tiny')).toThrow(/owner, a repository and a file/)
    expect(() => parseHfUri('hf:acme/tiny/../../etc/passwd')).toThrow(/"\.\."/)
    expect(() => parseHfUri('https://huggingface.co/acme')).toThrow(/not an hf: URI/)
  })
})

describe('Retry-After', () => {
  it('reads seconds and HTTP dates', () => {
    expect(parseRetryAfter('3')).toBe(3000)
    expect(parseRetryAfter(new Date(10_000).toUTCString(), 4000)).toBe(6000)
    expect(parseRetryAfter('soon')).toBeUndefined()
  })
})

describe('TokenBucket', () => {
  it('holds callers to the rate over time', async () => {
    const bucket = new TokenBucket(1_000_000, { burstBytes: 100_000 })
    const started = performance.now()
    for (let index = 0; index < 10; index++) await bucket.take(50_000)
    // 500 kB with a 100 kB burst at 1 MB/s cannot finish in less than 0.4 s: a lower bound.
    expect(performance.now() - started).toBeGreaterThanOrEqual(390)
  })
})

describe('engine', () => {
  /**
   * The first mirror stalls on the last piece after `afterBytes` (far from the stall timeout),
   * optionally sending wrong bytes before: the pull completes only through a hedge on the second.
   */
  async function pullWithLastPieceStalled(afterBytes: number, corrupt = false): Promise<void> {
    fixture = await createFixture({ mirrors: 2, downloader: { stallTimeoutMs: 120_000 } })
    const last = fixture.data.byteLength / PIECE_SIZE - 1
    if (corrupt)
      fixture.mirrors[0]!.inject({
        fault: { kind: 'corrupt', offset: last * PIECE_SIZE + 100, length: 8 },
        coversOffset: last * PIECE_SIZE,
      })
    fixture.mirrors[0]!.inject({
      fault: { kind: 'stall-mid-body', afterBytes },
      coversOffset: last * PIECE_SIZE,
    })
    // Should the second mirror be asked first, it answers 502 once, so the first one gets it.
    fixture.mirrors[1]!.inject({
      fault: { kind: 'status', status: 502 },
      coversOffset: last * PIECE_SIZE,
      times: 1,
    })
    const events: DownloadProgressEvent[] = []
    await fixture.downloader.pull(fixture.manifestPath, {
      onProgress: (event) => events.push(event),
    })
    expect(
      events.some((event) => event.type === 'download:hedged' && event.detail.piece === last),
    ).toBe(true)
    await expectVerifiedBlob(fixture.store, fixture.sha256, fixture.data)
    await fixture.close()
  }

  it('hedges a piece stuck on a slow mirror near the end, so the tail does not wait for it', async () => {
    await pullWithLastPieceStalled(1000)
  })

  it('overwrites what a lying request wrote ahead when a hedge delivers the piece', async () => {
    // Most of the piece, wrong bytes included, is written to the partial file ahead of
    // verification before the stall; the hedge's copy must replace all of it.
    await pullWithLastPieceStalled(PIECE_SIZE - 1000, true)
  })

  it('limits bandwidth over all sources when asked', async () => {
    fixture = await createFixture({
      size: 1024 * 1024,
      mirrors: 2,
      downloader: { bandwidth: 500_000 },
    })
    const started = performance.now()
    await fixture.downloader.pull(fixture.manifestPath)
    // 1 MiB at 500 kB/s after a burst of 500 kB takes at least 1.1 s: a lower bound, never flaky.
    expect(performance.now() - started).toBeGreaterThanOrEqual(1000)
    await expectVerifiedBlob(fixture.store, fixture.sha256, fixture.data)
    await fixture.close()
  })

  it('asks a source that tells what it holds only for those pieces, shares each verified piece, and closes the sources it made', async () => {
    const pieces = 32
    const held = new Set<number>([0, 1, 2, 5, 9, 30])
    const asked: Array<{ start: number; end: number; held: boolean }> = []
    let closed = 0
    // A peer still downloading: it gets one more piece (out of order) each time this pull
    // verifies one.
    const growing: ByteSource = {
      id: 'peer:growing',
      kind: 'peer',
      holds: (_digest, start, end) => {
        for (let piece = Math.floor(start / PIECE_SIZE); piece * PIECE_SIZE < end; piece++)
          if (!held.has(piece)) return false
        return true
      },
      async *read({ start, end }) {
        asked.push({ start, end, held: growing.holds!('', start, end) })
        yield fixture!.data.subarray(start, end)
      },
      close: () => {
        closed++
      },
    }
    const shared: number[] = []
    let sharedPath = ''
    let ended = 0
    fixture = await createFixture({
      size: pieces * PIECE_SIZE,
      mirrors: 0,
      downloader: {
        extraSources: () => [growing],
        sharePartial: (blob) => {
          sharedPath = blob.path
          expect(blob).toMatchObject({ sha256: fixture!.sha256, pieceSize: PIECE_SIZE })
          return {
            pieceVerified: (index) => {
              // The piece's bytes are in the partial file by now.
              const bytes = Buffer.alloc(PIECE_SIZE)
              const descriptor = openSync(blob.path, 'r')
              readSync(descriptor, bytes, 0, PIECE_SIZE, index * PIECE_SIZE)
              closeSync(descriptor)
              expect(
                bytes.equals(fixture!.data.subarray(index * PIECE_SIZE, (index + 1) * PIECE_SIZE)),
              ).toBe(true)
              shared.push(index)
            },
            end: () => {
              ended++
            },
          }
        },
      },
    })
    const order = [
      31, 3, 7, 4, 6, 8, 10, 11, 29, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27,
      28,
    ]
    const result = await fixture.downloader.pull(fixture.manifestPath, {
      onProgress: (event) => {
        if (event.type === 'download:piece-verified' && order.length > 0) held.add(order.shift()!)
      },
    })
    await expectVerifiedBlob(fixture.store, fixture.sha256, fixture.data)
    expect(asked.length).toBeGreaterThanOrEqual(pieces)
    expect(asked.filter((request) => !request.held)).toEqual([])
    expect(result.files[0]!.bySource['peer:growing']).toBe(pieces * PIECE_SIZE)
    expect(shared.sort((a, b) => a - b)).toEqual(
      Array.from({ length: pieces }, (_, index) => index),
    )
    expect(ended).toBe(1)
    expect(sharedPath).toBe(fixture.store.partialPath(fixture.sha256))
    expect(closed).toBe(1)
    await fixture.close()
  })

  it('asks a mirror for pieces in order beside peers that take no part in the blob, and at random beside one that does', async () => {
    const pieces = 32
    for (const takesPart of [false, true]) {
      fixture = await createFixture({ size: pieces * PIECE_SIZE, mirrors: 0 })
      const data = fixture.data
      const starts: number[] = []
      const mirror: ByteSource = {
        id: 'mirror:recording',
        kind: 'http',
        async *read({ start, end }) {
          starts.push(start)
          yield data.subarray(start, end)
        },
      }
      // A peer that holds nothing; by `takesPart`, it fetches the blob too, or does not serve it.
      const peer: ByteSource = {
        id: 'peer:idle',
        kind: 'peer',
        holds: () => false,
        takesPart: () => takesPart,
        // Never asked, as it holds nothing.
        async *read() {},
      }
      await fixture.downloader.pull(fixture.manifestPath, { sources: [mirror, peer] })
      await expectVerifiedBlob(fixture.store, fixture.sha256, data)
      expect(starts).toHaveLength(pieces)
      const ascending = starts.every((start, index) => index === 0 || start > starts[index - 1]!)
      expect(ascending).toBe(!takesPart)
      await fixture.close()
    }
  })

  it('gives up with a typed error when the sources hold none of the missing pieces for the stall timeout', async () => {
    let reads = 0
    const empty: ByteSource = {
      id: 'peer:empty',
      kind: 'peer',
      holds: () => false,
      // biome-ignore lint/correctness/useYield: never asked, as it holds nothing
      async *read() {
        reads++
      },
    }
    fixture = await createFixture({ mirrors: 0, downloader: { stallTimeoutMs: 600 } })
    const failure = await fixture.downloader
      .pull(fixture.manifestPath, { sources: [empty] })
      .catch((error: unknown) => error)
    expect(failure).toMatchObject({ code: 'LLMESH_SOURCES_EXHAUSTED' })
    expect(String((failure as Error).message)).toMatch(
      /No source held a missing piece .* for 600 ms/,
    )
    expect(String((failure as Error).message)).toContain(
      'peer:empty held none of the missing pieces',
    )
    expect(reads).toBe(0)
    await expectNoBlob(fixture.store)
    await fixture.close()
  })

  it('mixes any ByteSource with mirrors, and drops one that fails with not-found', async () => {
    fixture = await createFixture({ mirrors: 1 })
    const requests: ByteRangeRequest[] = []
    const missing: ByteSource = {
      id: 'peer:missing',
      kind: 'peer',
      // biome-ignore lint/correctness/useYield: it fails before yielding, as a peer without the blob does
      async *read(request) {
        requests.push(request)
        throw new ByteSourceError({
          failure: 'not-found',
          source: 'peer:missing',
          message: 'peer:missing does not hold it',
        })
      },
    }
    const result = await fixture.downloader.pull(fixture.manifestPath, { sources: [missing] })
    await expectVerifiedBlob(fixture.store, fixture.sha256, fixture.data)
    // Asked at most once per starting connection, then dropped for good.
    expect(requests.length).toBeGreaterThanOrEqual(1)
    expect(requests.length).toBeLessThanOrEqual(2)
    expect(requests[0]?.digest).toBe(fixture.sha256)
    expect(result.files[0]?.bySource['peer:missing']).toBeUndefined()
    await fixture.close()
  })
})

let fixture: Awaited<ReturnType<typeof createFixture>> | undefined
