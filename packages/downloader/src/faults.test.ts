/**
 * One test per fault a real mirror has, against the testkit's fault-injecting mirror. Each ends
 * with a verified blob or a typed error, never a damaged file under blobs/.
 */

import { startMirror, testTlsCertificate, testTlsKey } from '@llmesh/testkit'
import { Agent } from 'undici'
import { afterEach, describe, expect, it } from 'vitest'
import { DownloadError } from './errors.js'
import type { DownloadProgressEvent } from './progress.js'
import {
  createFixture,
  expectNoBlob,
  expectVerifiedBlob,
  type Fixture,
  PIECE_SIZE,
} from './test-support.js'

let fixture: Fixture | undefined
afterEach(async () => {
  await fixture?.close()
  fixture = undefined
})

async function pullExpectingError(current: Fixture): Promise<DownloadError> {
  const error = await current.downloader.pull(current.manifestPath).then(
    () => undefined,
    (caught: unknown) => caught,
  )
  expect(DownloadError.isInstance(error)).toBe(true)
  await expectNoBlob(current.store)
  return error as DownloadError
}

describe('faults from a single mirror', () => {
  it('survives a connection reset every 300 kB, losing at most the piece that was arriving', async () => {
    fixture = await createFixture({
      mirrors: 1,
      mirror: { faults: [{ fault: { kind: 'reset', everyBytes: 300_000 } }] },
      // Two connections: every reset cuts a piece that was arriving.
      downloader: { connections: 2, initialConnectionsPerSource: 2 },
    })
    await fixture.downloader.pull(fixture.manifestPath)
    await expectVerifiedBlob(fixture.store, fixture.sha256, fixture.data)
    const mirror = fixture.mirrors[0]!
    const resets = Math.ceil(mirror.bodyBytesSent / 300_000)
    expect(mirror.bodyBytesSent).toBeLessThanOrEqual(fixture.data.byteLength + resets * PIECE_SIZE)
  })

  it('gives up on a request stalled before its headers and asks again', async () => {
    fixture = await createFixture({
      mirrors: 1,
      mirror: { faults: [{ fault: { kind: 'stall-before-headers' }, times: 2 }] },
      downloader: { stallTimeoutMs: 300 },
    })
    const events: DownloadProgressEvent[] = []
    await fixture.downloader.pull(fixture.manifestPath, {
      onProgress: (event) => events.push(event),
    })
    await expectVerifiedBlob(fixture.store, fixture.sha256, fixture.data)
    const stalls = events.filter(
      (event) => event.type === 'download:source-failed' && /stalled/.test(event.detail.message),
    )
    expect(stalls).toHaveLength(2)
  })

  it('gives up on a body that stalls midway and asks again', async () => {
    fixture = await createFixture({
      mirrors: 1,
      mirror: { faults: [{ fault: { kind: 'stall-mid-body', afterBytes: 10_000 }, times: 2 }] },
      downloader: { stallTimeoutMs: 300 },
    })
    await fixture.downloader.pull(fixture.manifestPath)
    await expectVerifiedBlob(fixture.store, fixture.sha256, fixture.data)
  })

  it('waits as long as a 429 Retry-After asks before asking that mirror again', async () => {
    fixture = await createFixture({
      mirrors: 1,
      mirror: {
        faults: [{ fault: { kind: 'status', status: 429, retryAfterSeconds: 1 }, times: 1 }],
      },
    })
    await fixture.downloader.pull(fixture.manifestPath)
    await expectVerifiedBlob(fixture.store, fixture.sha256, fixture.data)
    const requests = fixture.mirrors[0]!.requests
    const limited = requests.find((request) => request.status === 429)!
    const after = requests.filter(
      (request) => request.receivedAt > limited.receivedAt && request.status === 206,
    )
    // Requests already in flight may finish, but no new one starts within the second asked for.
    const started = after.filter((request) => request.receivedAt - limited.receivedAt < 950)
    expect(started.length).toBeLessThanOrEqual(1)
    expect(after.length).toBeGreaterThan(0)
  })

  it('retries 502 answers with backoff', async () => {
    fixture = await createFixture({
      mirrors: 1,
      mirror: { faults: [{ fault: { kind: 'status', status: 502 }, times: 3 }] },
    })
    await fixture.downloader.pull(fixture.manifestPath)
    await expectVerifiedBlob(fixture.store, fixture.sha256, fixture.data)
    expect(fixture.mirrors[0]!.requests.filter((request) => request.status === 502)).toHaveLength(3)
  })

  it('asks a mirror at its cap on requests at once (503 without Retry-After) for no more, with no pause', async () => {
    // nginx's limit_conn: 2 requests at once, each piece 375 ms past its first 64 KiB, where the
    // download starts with 8 requests to the mirror.
    fixture = await createFixture({
      mirrors: 1,
      pieceSize: 256 * 1024,
      mirror: { maxConcurrentRequests: 2, bytesPerSecondPerConnection: 512 * 1024 },
      downloader: { initialConnectionsPerSource: 8 },
    })
    const events: DownloadProgressEvent[] = []
    await fixture.downloader.pull(fixture.manifestPath, {
      onProgress: (event) => events.push(event),
    })
    await expectVerifiedBlob(fixture.store, fixture.sha256, fixture.data)
    expect(
      fixture.mirrors[0]!.requests.filter((request) => request.status === 503).length,
    ).toBeGreaterThan(0)
    // Each "busy" answer came while the mirror served others of ours: no failure, no pause (each
    // halved the requests and paused the mirror 200 ms, doubling, before).
    expect(events.filter((event) => event.type === 'download:source-failed')).toEqual([])
    const attempt = fixture.store.index.attempts(fixture.sha256)[0]
    expect(attempt).toMatchObject({ outcome: 'ok', failures: 0 })
  })

  it('reads a mirror that answers 200 to range requests front to back when it is the only one', async () => {
    // As `python3 -m http.server` does: every answer is the whole file.
    fixture = await createFixture({
      mirrors: 1,
      mirror: { faults: [{ fault: { kind: 'ignore-range' } }] },
    })
    await fixture.downloader.pull(fixture.manifestPath)
    await expectVerifiedBlob(fixture.store, fixture.sha256, fixture.data)
    // Not the whole file again for each of its 32 pieces: the range requests that found it out
    // (one per connection it started with), then one answer read to the end.
    const gets = fixture.mirrors[0]!.requests.filter((request) => request.method === 'GET')
    expect(gets.length).toBeLessThanOrEqual(3)
    const attempts = fixture.store.index.attempts(fixture.sha256)
    expect(
      attempts.find((attempt) => attempt.source.startsWith(fixture!.mirrors[0]!.url)),
    ).toMatchObject({ outcome: 'ok', failures: 0 })
  })

  it('refuses an HTML error page as data when the mirror is the only one', async () => {
    fixture = await createFixture({ mirrors: 1, mirror: { faults: [{ fault: { kind: 'html' } }] } })
    const error = await pullExpectingError(fixture)
    expect(error.failures[0]?.message).toMatch(/HTML page/)
  })

  it('stops on an ETag change when the mirror is the only one', async () => {
    fixture = await createFixture({
      mirrors: 1,
      mirror: { bytesPerSecondPerConnection: 2_000_000 },
    })
    fixture.mirrors[0]!.inject({
      fault: { kind: 'change-etag' },
      coversOffset: 10 * PIECE_SIZE,
      times: 1,
    })
    const error = await pullExpectingError(fixture)
    expect(error.code).toBe('LLMESH_SOURCES_EXHAUSTED')
    expect(error.message).toMatch(/changed upstream/)
  })
})

describe('faults from one of two mirrors', () => {
  it('completes from both mirrors when one answers 200 to range requests', async () => {
    fixture = await createFixture()
    fixture.mirrors[0]!.inject({ fault: { kind: 'ignore-range' } })
    await fixture.downloader.pull(fixture.manifestPath)
    await expectVerifiedBlob(fixture.store, fixture.sha256, fixture.data)
  })

  it('uses the good mirror when the other sends an HTML error page', async () => {
    fixture = await createFixture()
    fixture.mirrors[0]!.inject({ fault: { kind: 'html' } })
    await fixture.downloader.pull(fixture.manifestPath)
    await expectVerifiedBlob(fixture.store, fixture.sha256, fixture.data)
    const attempts = fixture.store.index.attempts(fixture.sha256)
    expect(
      attempts.find((attempt) => attempt.source.startsWith(fixture!.mirrors[0]!.url)),
    ).toMatchObject({ outcome: 'dropped' })
  })

  it('refetches a piece with wrong bytes from the other mirror and blames the liar in the attempt log', async () => {
    fixture = await createFixture()
    const badPiece = 5
    fixture.mirrors[0]!.inject({
      fault: { kind: 'corrupt', offset: badPiece * PIECE_SIZE + 100 },
      coversOffset: badPiece * PIECE_SIZE + 100,
    })
    // If the honest mirror is asked for piece 5 first, it answers 502 once and backs off, so
    // the liar always serves piece 5 at least once.
    fixture.mirrors[1]!.inject({
      fault: { kind: 'status', status: 502 },
      coversOffset: badPiece * PIECE_SIZE,
      times: 1,
    })
    const events: DownloadProgressEvent[] = []
    await fixture.downloader.pull(fixture.manifestPath, {
      onProgress: (event) => events.push(event),
    })
    await expectVerifiedBlob(fixture.store, fixture.sha256, fixture.data)
    const liar = fixture.mirrors[0]!.urlOf('/model.gguf')
    const rejected = events.filter((event) => event.type === 'download:piece-rejected')
    expect(rejected.map((event) => event.detail)).toEqual([
      expect.objectContaining({ piece: badPiece, source: liar }),
    ])
    const attempt = fixture.store.index
      .attempts(fixture.sha256)
      .find((entry) => entry.source === liar)
    expect(attempt?.corruptPieces).toEqual([badPiece])
    expect(
      fixture.store.index.sourceStatistics().find((entry) => entry.source === liar)?.corruptPieces,
    ).toBe(1)
  })

  it('drops a mirror whose file changed upstream (ETag) and finishes from the other', async () => {
    fixture = await createFixture()
    // Its fourth request sees a new file: the mirror learned the old ETag on its first.
    fixture.mirrors[0]!.inject({ fault: { kind: 'change-etag' }, afterRequests: 3, times: 1 })
    const events: DownloadProgressEvent[] = []
    await fixture.downloader.pull(fixture.manifestPath, {
      onProgress: (event) => events.push(event),
    })
    await expectVerifiedBlob(fixture.store, fixture.sha256, fixture.data)
    const dropped = events.filter((event) => event.type === 'download:source-dropped')
    expect(dropped.map((event) => event.detail.source)).toEqual([
      fixture.mirrors[0]!.urlOf('/model.gguf'),
    ])
  })
})

describe('redirects', () => {
  it('follows a hub redirect to another origin without sending the token there', async () => {
    fixture = await createFixture({ mirrors: 1 })
    const cdn = fixture.mirrors[0]!
    const hubPath = '/acme/tiny/resolve/main/model.gguf'
    const hub = await startMirror({
      files: {
        [hubPath]: {
          data: fixture.file,
          headers: {
            'x-linked-etag': `"${fixture.sha256}"`,
            'x-linked-size': String(fixture.data.byteLength),
          },
        },
      },
      faults: [{ fault: { kind: 'redirect', location: cdn.urlOf('/model.gguf') } }],
    })
    fixture.mirrors.push(hub)
    const { createDownloader } = await import('./downloader.js')
    const downloader = createDownloader({
      store: fixture.store,
      hfEndpoint: hub.url,
      hfToken: 'hf_secret_token',
    })
    try {
      const result = await downloader.pull('hf:acme/tiny/model.gguf')
      expect(result.files[0]).toMatchObject({ sha256: fixture.sha256, verification: 'sha256' })
      await expectVerifiedBlob(fixture.store, fixture.sha256, fixture.data)
      expect(hub.requests.length).toBeGreaterThan(0)
      expect(
        hub.requests.every((request) => request.headers.authorization === 'Bearer hf_secret_token'),
      ).toBe(true)
      expect(cdn.requests.length).toBeGreaterThan(0)
      expect(cdn.requests.some((request) => 'authorization' in request.headers)).toBe(false)
      expect(fixture.store.list()).toMatchObject([
        { id: 'acme/tiny', version: 'main', status: 'verified' },
      ])
    } finally {
      await downloader.close()
    }
  })

  it('pulls a bare hf: URI with no digest by size, and says so', async () => {
    fixture = await createFixture({ mirrors: 0 })
    const hub = await startMirror({ files: { '/acme/tiny/resolve/v2/model.gguf': fixture.file } })
    fixture.mirrors.push(hub)
    const { createDownloader } = await import('./downloader.js')
    const downloader = createDownloader({ store: fixture.store, hfEndpoint: hub.url })
    try {
      const result = await downloader.pull('hf:acme/tiny/model.gguf#v2')
      expect(result.files[0]).toMatchObject({ sha256: fixture.sha256, verification: 'size' })
      await expectVerifiedBlob(fixture.store, fixture.sha256, fixture.data)
    } finally {
      await downloader.close()
    }
  })

  it('refuses a redirect from https to http and sends nothing to the http origin', async () => {
    const plain = await startMirror({ files: {} })
    fixture = await createFixture({
      mirrors: 1,
      mirror: {
        tls: { key: testTlsKey, cert: testTlsCertificate },
        faults: [{ fault: { kind: 'redirect', location: `${plain.url}/model.gguf` } }],
      },
      downloader: { dispatcher: new Agent({ connect: { ca: testTlsCertificate } }) },
    })
    fixture.mirrors.push(plain)
    const error = await pullExpectingError(fixture)
    expect(error.code).toBe('LLMESH_SOURCES_EXHAUSTED')
    expect(error.failures[0]).toMatchObject({ code: 'LLMESH_SOURCE_FORBIDDEN' })
    expect(error.failures[0]?.message).toMatch(/redirected from https to http/)
    expect(plain.requests).toEqual([])
  })
})
