/**
 * Crashes, restarts and contention: a download killed at any moment resumes without fetching
 * verified pieces again, two processes share one download, and a full disk keeps what was verified.
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { afterEach, beforeAll, describe, expect, it } from 'vitest'
import { nodeFileSystem, type PartialFileSystem } from './download-blob.js'
import { createDownloader } from './downloader.js'
import { DownloadError } from './errors.js'
import {
  createFixture,
  expectNoBlob,
  expectVerifiedBlob,
  type Fixture,
  PIECE_SIZE,
} from './test-support.js'

const distEntry = new URL('../dist/index.js', import.meta.url)
let fixture: Fixture | undefined
afterEach(async () => {
  await fixture?.close()
  fixture = undefined
})

beforeAll(() => {
  if (!existsSync(distEntry))
    throw new Error(
      'build @llmesh/downloader first (pnpm build): the crash tests run it in child processes',
    )
})

function totalServed(current: Fixture): number {
  return current.mirrors.reduce((sum, mirror) => sum + mirror.bodyBytesSent, 0)
}

/** A child process that pulls the fixture's manifest and prints one JSON line per event. */
async function startPullProcess(
  current: Fixture,
  connections: number,
): Promise<ChildProcess & { lines: Array<Record<string, unknown>> }> {
  const script = join(current.directory.path, 'pull-child.mjs')
  await writeFile(
    script,
    `import { createDownloader, ModelStore } from ${JSON.stringify(distEntry.href)}
const [root, manifest] = process.argv.slice(2)
const store = await ModelStore.open({ root })
const downloader = createDownloader({ store, allowInsecureMirrors: true, connections: ${connections}, initialConnectionsPerSource: ${connections}, maxConnectionsPerSource: ${connections} })
const result = await downloader.pull(manifest, {
  onProgress: (event) => console.log(JSON.stringify({ type: event.type, ...event.detail })),
})
console.log(JSON.stringify({ type: 'done', cached: result.files[0].cached, resumedBytes: result.files[0].resumedBytes }))
await downloader.close()
store.close()
`,
  )
  const child = spawn(process.execPath, [script, current.store.root, current.manifestPath], {
    stdio: ['ignore', 'pipe', 'inherit'],
  }) as ChildProcess & { lines: Array<Record<string, unknown>> }
  child.lines = []
  let buffer = ''
  child.stdout!.on('data', (chunk: Buffer) => {
    buffer += chunk.toString()
    const lines = buffer.split('\n')
    buffer = lines.pop() ?? ''
    for (const line of lines)
      if (line.trim() !== '') child.lines.push(JSON.parse(line) as Record<string, unknown>)
    child.emit('lines')
  })
  return child
}

function exitOf(
  child: ChildProcess,
): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  return new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })))
}

describe('resume', () => {
  it('resumes after SIGKILL at 50 % and fetches at most the pieces that were in flight again', async () => {
    const connections = 4
    fixture = await createFixture({
      size: 4 * 1024 * 1024,
      mirrors: 1,
      mirror: { bytesPerSecondPerConnection: 1_000_000 },
    })
    const size = fixture.data.byteLength
    const first = await startPullProcess(fixture, connections)
    const exited = exitOf(first)
    await new Promise<void>((resolve, reject) => {
      first.once('exit', () => reject(new Error('the first pull exited before reaching 50 %')))
      first.on('lines', () => {
        const progress = first.lines.filter((line) => line.type === 'download:progress').at(-1)
        if (progress !== undefined && Number(progress.verifiedBytes) >= size / 2) {
          first.kill('SIGKILL')
          resolve()
        }
      })
    })
    expect((await exited).signal).toBe('SIGKILL')
    await expectNoBlob(fixture.store)

    fixture.mirrors[0]!.setRate(undefined)
    const second = await startPullProcess(fixture, connections)
    expect(await exitOf(second)).toEqual({ code: 0, signal: null })
    const done = second.lines.find((line) => line.type === 'done')
    expect(Number(done?.resumedBytes)).toBeGreaterThanOrEqual(size / 2)
    await expectVerifiedBlob(fixture.store, fixture.sha256, fixture.data)
    // Fetched again: at most the pieces in flight at the kill, one per connection (a connection
    // takes its next piece only once its last one is written and journaled).
    expect(totalServed(fixture)).toBeLessThanOrEqual(size + connections * PIECE_SIZE)
  })

  it('lets two processes pull the same model at once: one downloads, the other waits, one copy', async () => {
    const connections = 4
    fixture = await createFixture({
      size: 4 * 1024 * 1024,
      mirrors: 1,
      mirror: { bytesPerSecondPerConnection: 1_000_000 },
    })
    const [first, second] = await Promise.all([
      startPullProcess(fixture, connections),
      startPullProcess(fixture, connections),
    ])
    const exits = await Promise.all([exitOf(first!), exitOf(second!)])
    expect(exits).toEqual([
      { code: 0, signal: null },
      { code: 0, signal: null },
    ])
    await expectVerifiedBlob(fixture.store, fixture.sha256, fixture.data)
    const results = [first!, second!].map((child) =>
      child.lines.find((line) => line.type === 'done'),
    )
    expect(results.map((result) => result?.cached).sort()).toEqual([false, true])
    const waiter = [first!, second!].find((child) =>
      child.lines.some((line) => line.type === 'done' && line.cached === true),
    )!
    expect(waiter.lines.some((line) => line.type === 'download:waiting')).toBe(true)
    expect(totalServed(fixture)).toBeLessThanOrEqual(
      fixture.data.byteLength + connections * PIECE_SIZE,
    )
  })

  it('resumes in-process after an abort without fetching verified pieces again, and shares every piece', async () => {
    fixture = await createFixture({
      size: 4 * 1024 * 1024,
      mirrors: 2,
      mirror: { bytesPerSecondPerConnection: 2_000_000 },
    })
    const controller = new AbortController()
    const aborted = await fixture.downloader
      .pull(fixture.manifestPath, {
        signal: controller.signal,
        onProgress: (event) => {
          if (
            event.type === 'download:progress' &&
            event.detail.verifiedBytes > fixture!.data.byteLength / 3
          )
            controller.abort()
        },
      })
      .catch((error: unknown) => error)
    expect((aborted as Error).name).toBe('AbortError')
    await expectNoBlob(fixture.store)
    for (const mirror of fixture.mirrors) mirror.setRate(undefined)
    // The resumed pull shares every piece, those of the first run once read back intact.
    const shared: number[] = []
    const resuming = createDownloader({
      store: fixture.store,
      allowInsecureMirrors: true,
      sharePartial: () => ({ pieceVerified: (index) => shared.push(index), end: () => {} }),
    })
    const result = await resuming.pull(fixture.manifestPath)
    await resuming.close()
    expect(result.files[0]?.resumedBytes).toBeGreaterThan(fixture.data.byteLength / 3)
    await expectVerifiedBlob(fixture.store, fixture.sha256, fixture.data)
    expect(totalServed(fixture)).toBeLessThanOrEqual(fixture.data.byteLength + 16 * PIECE_SIZE)
    const pieces = fixture.data.byteLength / PIECE_SIZE
    expect(shared.sort((a, b) => a - b)).toEqual(
      Array.from({ length: pieces }, (_, index) => index),
    )
  })

  it('fetches again a journaled piece whose bytes on disk were damaged', async () => {
    fixture = await createFixture({
      size: 1024 * 1024,
      mirrors: 1,
      mirror: { bytesPerSecondPerConnection: 1_000_000 },
    })
    const controller = new AbortController()
    await fixture.downloader
      .pull(fixture.manifestPath, {
        signal: controller.signal,
        onProgress: (event) => {
          if (event.type === 'download:progress' && event.detail.verifiedBytes >= 4 * PIECE_SIZE)
            controller.abort()
        },
      })
      .catch(() => {})
    const partial = fixture.store.partialPath(fixture.sha256)
    const journal = await readFile(fixture.store.journalPath(fixture.sha256), 'utf8')
    const damaged = Number(journal.split('\n')[1])
    const bytes = await readFile(partial)
    bytes[damaged * PIECE_SIZE + 7]! ^= 0xff
    await writeFile(partial, bytes)
    fixture.mirrors[0]!.setRate(undefined)
    await fixture.downloader.pull(fixture.manifestPath)
    await expectVerifiedBlob(fixture.store, fixture.sha256, fixture.data)
    const refetched = fixture.mirrors[0]!.requests.filter(
      (request) =>
        request.range === `bytes=${damaged * PIECE_SIZE}-${(damaged + 1) * PIECE_SIZE - 1}`,
    )
    expect(refetched.length).toBeGreaterThanOrEqual(2)
  })
})

describe('disk space', () => {
  it('refuses to start when the disk has less free space than the download needs', async () => {
    fixture = await createFixture({ mirrors: 1 })
    const huge = structuredClone(fixture.manifest)
    huge.artifacts[0]!.size = 2 ** 50
    delete huge.artifacts[0]!.pieces
    const error = await fixture.downloader.pull(huge).catch((caught: unknown) => caught)
    expect(DownloadError.isInstance(error) && error.code).toBe('LLMESH_INSUFFICIENT_SPACE')
    expect((error as Error).message).toMatch(/1\.0 PiB still to download/)
    expect(fixture.mirrors[0]!.requests).toEqual([])
  })

  it('stops with LLMESH_DISK_FULL on ENOSPC, keeps the verified pieces, and resumes later', async () => {
    fixture = await createFixture({ size: 1024 * 1024, mirrors: 1 })
    let budget = 6 * PIECE_SIZE
    const fullDisk: PartialFileSystem = {
      freeBytes: nodeFileSystem.freeBytes,
      async openPartial(path) {
        const handle = await nodeFileSystem.openPartial(path)
        return {
          ...handle,
          async write(bytes, position) {
            if (budget < bytes.byteLength)
              throw Object.assign(new Error('ENOSPC: no space left on device, write'), {
                code: 'ENOSPC',
              })
            budget -= bytes.byteLength
            await handle.write(bytes, position)
          },
        }
      },
    }
    const downloader = createDownloader({
      store: fixture.store,
      allowInsecureMirrors: true,
      fileSystem: fullDisk,
    })
    const error = await downloader.pull(fixture.manifestPath).catch((caught: unknown) => caught)
    await downloader.close()
    expect(DownloadError.isInstance(error) && error.code).toBe('LLMESH_DISK_FULL')
    expect((error as DownloadError).path).toBe(fixture.store.partialPath(fixture.sha256))
    await expectNoBlob(fixture.store)
    const servedBefore = totalServed(fixture)
    const result = await fixture.downloader.pull(fixture.manifestPath)
    expect(result.files[0]?.resumedBytes).toBe(6 * PIECE_SIZE)
    await expectVerifiedBlob(fixture.store, fixture.sha256, fixture.data)
    expect(totalServed(fixture) - servedBefore).toBe(fixture.data.byteLength - 6 * PIECE_SIZE)
    expect(pathToFileURL(fixture.store.root).href).toMatch(/^file:/)
  })
})
