import { readFile } from 'node:fs/promises'
import { afterEach, describe, expect, it } from 'vitest'
import type { DownloadProgressEvent } from './progress.js'
import { createFixture, expectVerifiedBlob, type Fixture } from './test-support.js'

let fixture: Fixture | undefined
afterEach(async () => {
  await fixture?.close()
  fixture = undefined
})

describe('pull', () => {
  it('downloads from two mirrors at once, verifies every piece and publishes the blob', async () => {
    fixture = await createFixture()
    const events: DownloadProgressEvent[] = []
    const result = await fixture.downloader.pull(fixture.manifestPath, {
      onProgress: (event) => events.push(event),
    })
    await expectVerifiedBlob(fixture.store, fixture.sha256, fixture.data)
    const [file] = result.files
    expect(file?.verification).toBe('pieces+sha256')
    expect(Buffer.compare(await readFile(file!.modelPath), Buffer.from(fixture.data))).toBe(0)
    // Both mirrors served pieces.
    expect(fixture.mirrors.every((mirror) => mirror.bodyBytesSent > 0)).toBe(true)
    expect(fixture.mirrors.reduce((sum, mirror) => sum + mirror.bodyBytesSent, 0)).toBe(
      fixture.data.byteLength,
    )
    // Progress only grows.
    const progress = events
      .filter((event) => event.type === 'download:progress')
      .map((event) => event.detail)
    for (let index = 1; index < progress.length; index++) {
      expect(progress[index]!.receivedBytes).toBeGreaterThanOrEqual(
        progress[index - 1]!.receivedBytes,
      )
      expect(progress[index]!.verifiedBytes).toBeGreaterThanOrEqual(
        progress[index - 1]!.verifiedBytes,
      )
    }
    expect(progress.at(-1)?.verifiedBytes).toBe(fixture.data.byteLength)
    expect(fixture.store.list()).toMatchObject([
      { id: 'acme/tiny', version: '1.0.0', status: 'verified' },
    ])
  })

  it('does not download a blob the store already holds', async () => {
    fixture = await createFixture()
    await fixture.downloader.pull(fixture.manifestPath)
    const served = fixture.mirrors.reduce((sum, mirror) => sum + mirror.bodyBytesSent, 0)
    const again = await fixture.downloader.pull('acme/tiny@1.0.0')
    expect(again.files[0]?.cached).toBe(true)
    expect(fixture.mirrors.reduce((sum, mirror) => sum + mirror.bodyBytesSent, 0)).toBe(served)
  })
})
