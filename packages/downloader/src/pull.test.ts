import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { createManifest } from '@llmesh/manifest'
import { startMirror } from '@llmesh/testkit'
import { afterEach, describe, expect, it } from 'vitest'
import type { DownloadProgressEvent } from './progress.js'
import { createFixture, expectVerifiedBlob, type Fixture, modelBytes } from './test-support.js'

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

  it('downloads the files of a sharded model at the same time', async () => {
    fixture = await createFixture({ mirrors: 0 })
    const shards = [
      join(fixture.directory.path, 'model-00001-of-00002.gguf'),
      join(fixture.directory.path, 'model-00002-of-00002.gguf'),
    ]
    await writeFile(shards[0]!, modelBytes(1024 * 1024, 11))
    await writeFile(shards[1]!, modelBytes(1024 * 1024, 12))
    // A slow mirror, so that both files are surely in flight together.
    const mirror = await startMirror({
      files: { '/a.gguf': shards[0]!, '/b.gguf': shards[1]! },
      bytesPerSecondPerConnection: 2_000_000,
    })
    fixture.mirrors.push(mirror)
    const { manifest, pieceIndexes } = await createManifest({
      files: [
        { file: shards[0]!, mirrors: [mirror.urlOf('/a.gguf')] },
        { file: shards[1]!, mirrors: [mirror.urlOf('/b.gguf')] },
      ],
      manifest: { id: 'acme/sharded', version: '1.0.0', license: { id: 'mit' } },
      pieceSize: 64 * 1024,
      allowInsecureMirrors: true,
    })
    const events: DownloadProgressEvent[] = []
    const result = await fixture.downloader.pull(manifest, {
      pieceIndexes,
      onProgress: (event) => events.push(event),
    })
    const order = events
      .filter((event) => event.type === 'pull:file-started' || event.type === 'pull:file-done')
      .map((event) => event.type)
    expect(order).toEqual([
      'pull:file-started',
      'pull:file-started',
      'pull:file-done',
      'pull:file-done',
    ])
    expect(result.files.map((file) => file.path)).toEqual([
      'model-00001-of-00002.gguf',
      'model-00002-of-00002.gguf',
    ])
    for (const file of result.files) expect(file.verification).toBe('pieces+sha256')
  })
})
