import { type ByteRangeRequest, type ByteSource, ByteSourceError } from '@llmesh/core'
import { describe, expect, it } from 'vitest'
import type { DownloadProgressEvent } from './progress.js'
import { hfResolveUrl, parseHfUri } from './sources/hf.js'
import { parseRetryAfter } from './sources/http-source.js'
import { createFixture, expectVerifiedBlob, PIECE_SIZE } from './test-support.js'
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
    // Should the second mirror be asked first, it answers 503 once, so the first one gets it.
    fixture.mirrors[1]!.inject({
      fault: { kind: 'status', status: 503 },
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
