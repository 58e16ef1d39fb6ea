import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { Agent, fetch as undiciFetch } from 'undici'
import { afterEach, describe, expect, it, vi } from 'vitest'
import { openDescriptorsOf } from './descriptors.js'
import { type Mirror, startMirror } from './mirror.js'
import { createTempDir } from './temp-dir.js'
import { testTlsCertificate, testTlsKey } from './test-tls.js'

const data = Uint8Array.from({ length: 300_000 }, (_, index) => (index * 7) % 251)
let mirror: Mirror | undefined

afterEach(async () => {
  await mirror?.close()
  mirror = undefined
})

async function get(path: string, headers: Record<string, string> = {}) {
  const response = await fetch(mirror!.urlOf(path), { headers })
  return { response, body: new Uint8Array(await response.arrayBuffer()) }
}

describe('startMirror', () => {
  it('serves byte ranges with Content-Range and a stable ETag', async () => {
    mirror = await startMirror({ files: { '/model.gguf': data } })
    const { response, body } = await get('/model.gguf', { range: 'bytes=1000-1999' })
    expect(response.status).toBe(206)
    expect(response.headers.get('content-range')).toBe(`bytes 1000-1999/${data.byteLength}`)
    expect(body).toEqual(data.subarray(1000, 2000))
    const whole = await get('/model.gguf')
    expect(whole.response.status).toBe(200)
    expect(whole.body).toEqual(data)
    expect(whole.response.headers.get('etag')).toBe(response.headers.get('etag'))
    expect(mirror.requests.map((request) => request.range)).toEqual(['bytes=1000-1999', undefined])
  })

  it('answers 416 to a range past the end and 404 to an unknown path', async () => {
    mirror = await startMirror({ files: { '/model.gguf': data } })
    expect((await get('/model.gguf', { range: `bytes=${data.byteLength}-` })).response.status).toBe(
      416,
    )
    expect((await get('/other')).response.status).toBe(404)
  })

  it('injects faults for the requests a rule matches, as many times as it says', async () => {
    mirror = await startMirror({ files: { '/model.gguf': data } })
    mirror.inject({ fault: { kind: 'status', status: 429, retryAfterSeconds: 3 }, times: 1 })
    const limited = await get('/model.gguf', { range: 'bytes=0-9' })
    expect(limited.response.status).toBe(429)
    expect(limited.response.headers.get('retry-after')).toBe('3')
    expect((await get('/model.gguf', { range: 'bytes=0-9' })).response.status).toBe(206)

    mirror.inject({ fault: { kind: 'corrupt', offset: 5000, length: 2 }, coversOffset: 5000 })
    const corrupted = await get('/model.gguf', { range: 'bytes=4096-8191' })
    expect(corrupted.body[5000 - 4096]).toBe(data[5000]! ^ 0xff)
    expect(corrupted.body[5002 - 4096]).toBe(data[5002])
    expect((await get('/model.gguf', { range: 'bytes=0-99' })).body).toEqual(data.subarray(0, 100))

    mirror.inject({ fault: { kind: 'ignore-range' }, times: 1 })
    const ignored = await get('/model.gguf', { range: 'bytes=10-19' })
    expect(ignored.response.status).toBe(200)
    expect(ignored.body.byteLength).toBe(data.byteLength)

    mirror.inject({ fault: { kind: 'html' }, times: 1 })
    const html = await get('/model.gguf', { range: 'bytes=10-19' })
    expect(html.response.headers.get('content-type')).toMatch(/text\/html/)
  })

  it('changes the ETag on demand and answers 412 to an If-Match on the old one', async () => {
    mirror = await startMirror({ files: { '/model.gguf': data } })
    const etag = (await get('/model.gguf', { range: 'bytes=0-0' })).response.headers.get('etag')!
    mirror.inject({ fault: { kind: 'change-etag' }, times: 1 })
    const changed = await get('/model.gguf', { range: 'bytes=0-0' })
    expect(changed.response.headers.get('etag')).not.toBe(etag)
    expect(
      (await get('/model.gguf', { range: 'bytes=0-0', 'if-match': etag })).response.status,
    ).toBe(412)
  })

  it('resets a connection after every N bytes it carried', async () => {
    mirror = await startMirror({
      files: { '/model.gguf': data },
      faults: [{ fault: { kind: 'reset', everyBytes: 100_000 } }],
    })
    await expect(get('/model.gguf')).rejects.toThrow()
    expect(mirror.bodyBytesSent).toBe(100_000)
  })

  it('paces each connection at the configured rate', async () => {
    mirror = await startMirror({ files: { '/model.gguf': data }, bytesPerSecondPerConnection: 1e6 })
    const started = performance.now()
    await get('/model.gguf')
    // 300 kB at 1 MB/s after a 64 KiB burst cannot take less than 0.23 s (a lower bound, never flaky).
    expect(performance.now() - started).toBeGreaterThanOrEqual(220)
  })

  it.runIf(process.platform === 'linux')(
    'closes the file it serves from when the client goes away mid-body',
    async () => {
      const directory = await createTempDir('llmesh-mirror-')
      try {
        const path = join(directory.path, 'model.gguf')
        await writeFile(path, data)
        // Paced, so that the client leaves while the mirror waits to send its next chunk.
        mirror = await startMirror({
          files: { '/model.gguf': path },
          bytesPerSecondPerConnection: 2e5,
        })
        const leaving = new AbortController()
        const response = await fetch(mirror.urlOf('/model.gguf'), { signal: leaving.signal })
        const reader = response.body!.getReader()
        await reader.read()
        expect(openDescriptorsOf(path)).toBe(1)
        leaving.abort()
        await vi.waitFor(() => expect(openDescriptorsOf(path)).toBe(0), { timeout: 5_000 })
      } finally {
        await directory.remove()
      }
    },
  )

  it('answers 503 past its cap on requests at once, as nginx limit_conn does', async () => {
    mirror = await startMirror({
      files: { '/model.gguf': data },
      maxConcurrentRequests: 1,
      bytesPerSecondPerConnection: 1024,
    })
    // The first answer's body comes at 1 KiB/s: it is being served while the second arrives.
    const first = await fetch(mirror.urlOf('/model.gguf'))
    expect(first.status).toBe(200)
    const refused = await get('/model.gguf', { range: 'bytes=0-9' })
    expect(refused.response.status).toBe(503)
    expect(refused.response.headers.get('retry-after')).toBeNull()
    await first.body!.cancel()
    await vi.waitFor(
      async () =>
        expect((await get('/model.gguf', { range: 'bytes=0-9' })).response.status).toBe(206),
      { timeout: 5_000 },
    )
  })

  it('serves https with the test certificate', async () => {
    mirror = await startMirror({
      files: { '/model.gguf': data },
      tls: { key: testTlsKey, cert: testTlsCertificate },
    })
    expect(mirror.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/)
    const dispatcher = new Agent({ connect: { ca: testTlsCertificate } })
    const response = await undiciFetch(mirror.urlOf('/model.gguf'), { dispatcher })
    expect(new Uint8Array(await response.arrayBuffer())).toEqual(data)
    await dispatcher.close()
  })
})
