import { createHash, randomUUID } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { dirname, isAbsolute, join, resolve } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import {
  type AbortOptions,
  type ByteSource,
  createLogger,
  emitProgress,
  InvalidArgumentError,
  type Logger,
  type PartialBlob,
  type PartialBlobSink,
  type ProgressOptions,
} from '@llmesh/core'
import {
  type Artifact,
  defaultPieceSize,
  type Manifest,
  PieceIndex,
  parseManifest,
  readDocument,
  type TrustedKey,
  verifyManifest,
} from '@llmesh/manifest'
import { Agent, type Dispatcher, request } from 'undici'
import {
  type DownloadedBlob,
  downloadBlob,
  HostConnectionLimiter,
  nodeFileSystem,
  type PartialFileSystem,
  type Verification,
} from './download-blob.js'
import { DownloadError, StoreError } from './errors.js'
import { Journal } from './journal.js'
import { tryLock, waitForRelease } from './lock.js'
import type { DownloadProgressEvent } from './progress.js'
import { DEFAULT_HF_ENDPOINT, hfResolveUrl, parseHfUri } from './sources/hf.js'
import { HttpSource } from './sources/http-source.js'
import { RangeSockets } from './sources/range-sockets.js'
import type { ModelStore } from './store.js'
import { TokenBucket } from './token-bucket.js'

export interface DownloaderOptions {
  store: ModelStore
  /** The connection pool shared by every download; by default an undici Agent sized by `maxConnectionsPerHost`. */
  dispatcher?: Dispatcher
  /** Approved mirror hosts (`host` or `host:port`); mirrors elsewhere are skipped. Default: any host. */
  allowHosts?: string[]
  /** Accept `http:` mirrors (a LAN or test mirror). Default false: https and hf: only. */
  allowInsecureMirrors?: boolean
  /** Hub for `hf:` URIs. Default `HF_ENDPOINT`, else https://huggingface.co. */
  hfEndpoint?: string
  /** Token for the hub, sent to the hub's origin only. Default `HF_TOKEN`. */
  hfToken?: string
  /** More sources for an artifact, asked for every download (the peer-to-peer package plugs in here). */
  extraSources?: (artifact: {
    sha256: string | undefined
    size: number
  }) => ByteSource[] | Promise<ByteSource[]>
  /**
   * Told of each download that verifies pieces as they arrive (one with a piece index), and of
   * each piece it verifies, so that they can be served before the download ends (the
   * peer-to-peer package plugs in here: `(blob) => node.sharePartial(blob)`).
   */
  sharePartial?: (blob: PartialBlob) => PartialBlobSink | undefined
  /** Requests in flight per file. Default 16. */
  connections?: number
  /** Default 2. */
  initialConnectionsPerSource?: number
  /** Default 8. */
  maxConnectionsPerSource?: number
  /** Across all downloads. Default 8. */
  maxConnectionsPerHost?: number
  /** Files of one model downloaded at once. Default 3. */
  filesAtOnce?: number
  /** Default 20 000 ms. */
  stallTimeoutMs?: number
  /** Bytes per second over all downloads; off by default. */
  bandwidth?: number
  /** Bytes per second per source; off by default. */
  bandwidthPerSource?: number
  fileSystem?: PartialFileSystem
  logger?: Logger
}

export interface PullOptions extends AbortOptions, ProgressOptions<DownloadProgressEvent> {
  /** Piece indexes for the manifest's artifacts, when they did not come from beside the manifest. */
  pieceIndexes?: PieceIndex[]
  /** More sources for this pull only. */
  sources?: ByteSource[]
  /** Refuse a manifest not signed by one of these keys. */
  trustedKeys?: TrustedKey[]
}

export interface PulledFile {
  path: string
  sha256: string
  size: number
  verification: Verification
  /** Where the verified blob lives. */
  blobPath: string
  /** The readable path under `models/`. */
  modelPath: string
  /** True when the blob was already in the store: nothing was downloaded. */
  cached: boolean
  receivedBytes: number
  resumedBytes: number
  /** Bytes received per source in this run. */
  bySource: Record<string, number>
}

export interface PullResult {
  id: string
  version: string
  files: PulledFile[]
  durationMs: number
}

export interface Downloader {
  /**
   * Pulls a model into the store: from a manifest object, a manifest file or URL, an `hf:` URI,
   * or the `id[@version]` of a manifest already in the store. Resolves once every file is
   * verified and published.
   */
  pull(target: Manifest | string, options?: PullOptions): Promise<PullResult>
  /** Downloads one blob into the store (no model record); the level below `pull`. */
  fetchBlob(request: BlobRequest, options?: PullOptions): Promise<PulledBlob>
  close(): Promise<void>
}

export interface BlobRequest {
  sha256: string | undefined
  size: number
  pieceIndex?: PieceIndex | undefined
  sources: ByteSource[]
  /** Key for partial files when the sha256 is unknown. */
  key?: string
}

export interface PulledBlob extends Omit<DownloadedBlob, 'attempts'> {
  blobPath: string
  cached: boolean
  bySource: Record<string, number>
}

export function createDownloader(options: DownloaderOptions): Downloader {
  const { store } = options
  const log = options.logger ?? createLogger('downloader')
  const maxConnectionsPerHost = options.maxConnectionsPerHost ?? 8
  const ownsDispatcher = options.dispatcher === undefined
  const dispatcher =
    options.dispatcher ??
    new Agent({
      connections: maxConnectionsPerHost,
      keepAliveTimeout: 10_000,
      headersTimeout: 300_000,
      bodyTimeout: 300_000,
    })
  // Piece bodies are read into reused buffers, unless the caller brought its own dispatcher (a
  // proxy, a mock), which must then see every request.
  const sockets = ownsDispatcher
    ? new RangeSockets({ maxIdlePerOrigin: maxConnectionsPerHost })
    : undefined
  const hostLimiter = new HostConnectionLimiter(maxConnectionsPerHost)
  const globalBandwidth =
    options.bandwidth === undefined ? undefined : new TokenBucket(options.bandwidth)
  const hfEndpoint = options.hfEndpoint ?? process.env.HF_ENDPOINT ?? DEFAULT_HF_ENDPOINT
  const hfToken = options.hfToken ?? process.env.HF_TOKEN
  const fileSystem = options.fileSystem ?? nodeFileSystem

  function httpSource(url: URL, expectedSize: number | undefined, token?: string): HttpSource {
    return new HttpSource({ url, dispatcher, expectedSize, token, sockets })
  }

  function allowed(url: URL): boolean {
    if (options.allowHosts === undefined) return true
    return options.allowHosts.includes(url.host) || options.allowHosts.includes(url.hostname)
  }

  /**
   * The sources for an artifact: its mirrors (filtered by policy), then extra ones. `created` are
   * those made for it (its mirrors' and `extraSources`'), closed when its download ends.
   */
  async function sourcesFor(
    artifact: Artifact,
    extra: ByteSource[] | undefined,
  ): Promise<{ sources: ByteSource[]; skipped: string[]; created: ByteSource[] }> {
    const sources: ByteSource[] = []
    const skipped: string[] = []
    for (const mirror of artifact.mirrors) {
      const url = new URL(mirror)
      const resolved = url.protocol === 'hf:' ? hfResolveUrl(parseHfUri(mirror), hfEndpoint) : url
      if (resolved.protocol === 'http:' && !options.allowInsecureMirrors) {
        skipped.push(`${mirror} (http mirrors need allowInsecureMirrors)`)
        continue
      }
      if (!allowed(resolved)) {
        skipped.push(`${mirror} (host ${resolved.host} is not on the allow-list)`)
        continue
      }
      const token = url.protocol === 'hf:' ? hfToken : undefined
      sources.push(httpSource(resolved, artifact.size, token))
    }
    const mirrors = [...sources]
    sources.push(...(extra ?? []))
    const extraCreated =
      (await options.extraSources?.({ sha256: artifact.sha256, size: artifact.size })) ?? []
    sources.push(...extraCreated)
    return { sources: rankSources(sources), skipped, created: [...mirrors, ...extraCreated] }
  }

  /** Sources that served well before come first; ones that sent bad bytes come last. */
  function rankSources(sources: ByteSource[]): ByteSource[] {
    const statistics = new Map(store.index.sourceStatistics().map((entry) => [entry.source, entry]))
    const score = (source: ByteSource) => {
      const entry = statistics.get(source.id)
      if (entry === undefined) return 0
      return entry.corruptPieces > 0 ? -1 : entry.throughput
    }
    return [...sources].sort((a, b) => score(b) - score(a))
  }

  async function fetchBlob(blob: BlobRequest, pullOptions: PullOptions = {}): Promise<PulledBlob> {
    const { signal } = pullOptions
    const key = blob.sha256 ?? blob.key ?? `unknown-${blob.size}`
    const cachedResult = (sha256: string, size: number): PulledBlob => {
      emitProgress(pullOptions, 'download:cached', { sha256, size })
      const record = store.index.blob(sha256)
      return {
        sha256,
        size,
        verification: record?.verification ?? 'sha256',
        receivedBytes: 0,
        resumedBytes: 0,
        durationMs: 0,
        blobPath: store.blobPath(sha256),
        cached: true,
        bySource: {},
      }
    }
    if (blob.sha256 !== undefined && (await store.hasBlob(blob.sha256)))
      return cachedResult(blob.sha256, blob.size)
    if (blob.pieceIndex !== undefined) await store.savePieceIndex(blob.pieceIndex)

    for (;;) {
      const lock = await tryLock(store.lockPath(key))
      if ('holder' in lock) {
        // Another process downloads this blob: report its progress until it is done.
        // The same piece size the holder's engine uses, so its journal converts to bytes.
        const pieceSize = blob.pieceIndex?.pieceSize ?? defaultPieceSize(blob.size)
        await waitForRelease(store.lockPath(key), {
          signal,
          onWait: async (holder) => {
            const pieces = await Journal.countPieces(store.journalPath(key))
            emitProgress(pullOptions, 'download:waiting', {
              sha256: key,
              holderPid: holder.pid,
              verifiedBytes: Math.min(blob.size, pieces * pieceSize),
              totalBytes: blob.size,
            })
          },
        })
        if (blob.sha256 !== undefined && (await store.hasBlob(blob.sha256)))
          return cachedResult(blob.sha256, blob.size)
        continue
      }
      const startedAt = new Date().toISOString()
      const downloadId = randomUUID()
      const bySource: Record<string, number> = {}
      let shared: PartialBlobSink | undefined
      try {
        if (blob.sha256 !== undefined && (await store.hasBlob(blob.sha256)))
          return cachedResult(blob.sha256, blob.size)
        // Only pieces checked against a piece index are shared: without one, nothing is verified
        // before the whole file is.
        if (blob.sha256 !== undefined && blob.pieceIndex !== undefined)
          shared = options.sharePartial?.({
            sha256: blob.sha256,
            size: blob.size,
            pieceSize: blob.pieceIndex.pieceSize,
            path: store.partialPath(key),
          })
        const result = await downloadBlob({
          sha256: blob.sha256,
          size: blob.size,
          pieceIndex: blob.pieceIndex,
          sources: blob.sources,
          partialPath: store.partialPath(key),
          journalPath: store.journalPath(key),
          connections: options.connections,
          initialConnectionsPerSource: options.initialConnectionsPerSource,
          maxConnectionsPerSource: options.maxConnectionsPerSource,
          hostLimiter,
          stallTimeoutMs: options.stallTimeoutMs,
          globalBandwidth,
          sourceBandwidth: options.bandwidthPerSource,
          fileSystem,
          logger: log,
          signal,
          onProgress: (event) => {
            if (event.type === 'download:progress') Object.assign(bySource, event.detail.bySource)
            pullOptions.onProgress?.(event)
          },
          ...(shared === undefined
            ? {}
            : { onPieceVerified: (index) => shared?.pieceVerified(index) }),
          onAttempts: (attempts) =>
            store.index.recordAttempts(downloadId, blob.sha256 ?? key, startedAt, attempts),
        })
        // Before the partial file moves into place; the blob is then served from the store.
        shared?.end()
        shared = undefined
        const blobPath = await store.publish(store.partialPath(key), store.journalPath(key), result)
        const { attempts: _attempts, ...rest } = result
        return { ...rest, blobPath, cached: false, bySource }
      } finally {
        shared?.end()
        await lock.release()
      }
    }
  }

  async function pieceIndexFor(
    artifact: Artifact,
    given: PieceIndex[] | undefined,
    location: string | undefined,
    signal: AbortSignal | undefined,
  ): Promise<PieceIndex | undefined> {
    if (artifact.pieces === undefined) return undefined
    const candidates: PieceIndex[] = [
      ...(given ?? []).filter((index) => index.sha256 === artifact.sha256),
    ]
    const stored = await store.readPieceIndex(artifact.sha256)
    if (stored !== undefined) candidates.push(stored)
    if (location !== undefined) {
      const document = await readNearby(
        location,
        `pieces/${artifact.sha256}.json`,
        dispatcher,
        signal,
      ).catch(() => undefined)
      if (document !== undefined)
        candidates.push(PieceIndex.fromJSON(JSON.parse(document), location))
    }
    for (const candidate of candidates) {
      try {
        candidate.assertMatches(artifact)
        return candidate
      } catch (error) {
        log('ignoring a piece index for %s: %s', artifact.sha256, (error as Error).message)
      }
    }
    return undefined
  }

  async function pullManifest(
    manifest: Manifest,
    location: string | undefined,
    pullOptions: PullOptions,
  ): Promise<PullResult> {
    const startedAt = performance.now()
    const model = `${manifest.id}@${manifest.version}`
    const files = manifest.artifacts.map((artifact) => ({
      path: artifact.path,
      sha256: artifact.sha256,
      size: artifact.size,
    }))
    await store.saveManifest(manifest)
    if (
      store.index.model(manifest.id, manifest.version) === undefined ||
      store.index.model(manifest.id, manifest.version)?.status === 'failed'
    )
      store.index.upsertModel({
        id: manifest.id,
        version: manifest.version,
        stage: manifest.stage,
        status: 'downloading',
        files,
      })
    const pullArtifact = async (artifact: Artifact): Promise<PulledFile> => {
      emitProgress(pullOptions, 'pull:file-started', {
        model,
        path: artifact.path,
        sha256: artifact.sha256,
        size: artifact.size,
      })
      const pieceIndex = await pieceIndexFor(
        artifact,
        pullOptions.pieceIndexes,
        location,
        pullOptions.signal,
      )
      let sources: ByteSource[] = []
      let skipped: string[] = []
      let created: ByteSource[] = []
      let blob: PulledBlob
      try {
        if (!(await store.hasBlob(artifact.sha256))) {
          ;({ sources, skipped, created } = await sourcesFor(artifact, pullOptions.sources))
          if (sources.length === 0)
            throw new DownloadError({
              code: skipped.length > 0 ? 'LLMESH_HOST_NOT_ALLOWED' : 'LLMESH_NO_SOURCES',
              digest: artifact.sha256,
              message: `No usable source for ${artifact.path} of ${model}${skipped.length > 0 ? `: skipped ${skipped.join('; ')}` : ': the manifest lists no mirrors and no peer has it'}`,
            })
        }
        blob = await fetchBlob(
          { sha256: artifact.sha256, size: artifact.size, pieceIndex, sources },
          pullOptions,
        )
      } finally {
        await Promise.allSettled(created.map(async (source) => source.close?.()))
      }
      emitProgress(pullOptions, 'pull:file-done', {
        model,
        path: artifact.path,
        sha256: blob.sha256,
        size: blob.size,
        verification: blob.verification,
        cached: blob.cached,
      })
      return {
        path: artifact.path,
        sha256: blob.sha256,
        size: blob.size,
        verification: blob.verification,
        blobPath: blob.blobPath,
        modelPath: store.modelPath(manifest.id, manifest.version, artifact.path),
        cached: blob.cached,
        receivedBytes: blob.receivedBytes,
        resumedBytes: blob.resumedBytes,
        bySource: blob.bySource,
      }
    }
    // Several files at once (a model split in shards), sharing the per-host connection caps. A
    // file that fails does not stop the others: their verified pieces are kept either way.
    const pulled: PulledFile[] = []
    const failures: unknown[] = []
    let next = 0
    const filesAtOnce = Math.max(1, options.filesAtOnce ?? 3)
    try {
      await Promise.all(
        Array.from({ length: Math.min(filesAtOnce, manifest.artifacts.length) }, async () => {
          while (next < manifest.artifacts.length) {
            const index = next++
            try {
              pulled[index] = await pullArtifact(manifest.artifacts[index]!)
            } catch (error) {
              failures.push(error)
            }
          }
        }),
      )
      if (failures.length > 0) throw failures[0]
    } catch (error) {
      const current = store.index.model(manifest.id, manifest.version)
      if (current?.status === 'downloading')
        store.index.setStatus(manifest.id, manifest.version, 'failed', (error as Error).message)
      throw error
    }
    await store.linkModel(manifest.id, manifest.version, files)
    const current = store.index.model(manifest.id, manifest.version)
    // A model a smoke test already made available stays so; a fresh one is now verified.
    if (current?.status !== 'available')
      store.index.setStatus(manifest.id, manifest.version, 'verified')
    return {
      id: manifest.id,
      version: manifest.version,
      files: pulled,
      durationMs: performance.now() - startedAt,
    }
  }

  async function pullHf(uri: string, pullOptions: PullOptions): Promise<PullResult> {
    const startedAt = performance.now()
    const reference = parseHfUri(uri)
    const url = hfResolveUrl(reference, hfEndpoint)
    if (!allowed(url))
      throw new DownloadError({
        code: 'LLMESH_HOST_NOT_ALLOWED',
        message: `${uri} resolves to ${url.host}, which is not on the allow-list`,
      })
    const probeSource = httpSource(url, undefined, hfToken)
    const probe = await probeSource.probe({ signal: pullOptions.signal })
    if (probe.size === undefined)
      throw new DownloadError({
        code: 'LLMESH_SIZE_UNKNOWN',
        message: `${uri}: the hub did not say how large the file is (no Content-Length or X-Linked-Size), so it cannot be downloaded in pieces`,
      })
    const source = httpSource(url, probe.size, hfToken)
    const blob = await fetchBlob(
      {
        sha256: probe.sha256,
        size: probe.size,
        sources: [source, ...(pullOptions.sources ?? [])],
        key: `hf-${createHash('sha256').update(url.href).digest('hex').slice(0, 32)}-${probe.size}`,
      },
      pullOptions,
    )
    const id = `${reference.owner}/${reference.repo}`
    const version = reference.revision
    const files = [{ path: reference.file, sha256: blob.sha256, size: blob.size }]
    const existing = store.index.model(id, version)
    const merged = [
      ...(existing?.files ?? []).filter((file) => file.path !== reference.file),
      ...files,
    ]
    store.index.upsertModel({
      id,
      version,
      stage: existing?.stage ?? 'experimental',
      status: existing?.status === 'available' ? 'available' : 'verified',
      files: merged,
    })
    await store.linkModel(id, version, files)
    emitProgress(pullOptions, 'pull:file-done', {
      model: `${id}@${version}`,
      path: reference.file,
      sha256: blob.sha256,
      size: blob.size,
      verification: blob.verification,
      cached: blob.cached,
    })
    return {
      id,
      version,
      durationMs: performance.now() - startedAt,
      files: [
        {
          path: reference.file,
          sha256: blob.sha256,
          size: blob.size,
          verification: blob.verification,
          blobPath: blob.blobPath,
          modelPath: store.modelPath(id, version, reference.file),
          cached: blob.cached,
          receivedBytes: blob.receivedBytes,
          resumedBytes: blob.resumedBytes,
          bySource: blob.bySource,
        },
      ],
    }
  }

  async function loadManifest(
    target: string,
    pullOptions: PullOptions,
  ): Promise<{ manifest: Manifest; location: string }> {
    const location = /^https?:\/\//.test(target) ? target : pathToFileURL(resolve(target)).href
    const text = await readLocation(location, dispatcher, pullOptions.signal)
    const parseOptions = {
      source: target,
      allowInsecureMirrors: options.allowInsecureMirrors ?? false,
    }
    if (pullOptions.trustedKeys !== undefined)
      return {
        manifest: verifyManifest(text, pullOptions.trustedKeys, parseOptions).manifest,
        location,
      }
    return { manifest: parseManifest(readDocument(text, parseOptions), parseOptions), location }
  }

  return {
    fetchBlob,
    async pull(target, pullOptions = {}) {
      if (typeof target !== 'string') {
        const manifest = parseManifest(target, {
          allowInsecureMirrors: options.allowInsecureMirrors ?? false,
        })
        return pullManifest(manifest, undefined, pullOptions)
      }
      if (target.startsWith('hf:')) return pullHf(target, pullOptions)
      if (looksLikeLocation(target)) {
        const { manifest, location } = await loadManifest(target, pullOptions)
        return pullManifest(manifest, location, pullOptions)
      }
      const at = target.lastIndexOf('@')
      const id = at > 0 ? target.slice(0, at) : target
      const version = at > 0 ? target.slice(at + 1) : undefined
      const manifest = await store.readManifest(id, version)
      if (manifest === undefined)
        throw new StoreError({
          code: 'LLMESH_MODEL_NOT_FOUND',
          model: target,
          message: `No manifest for ${target} in the store; pull a manifest file, a catalog entry (--catalog) or an hf: URI first.`,
        })
      return pullManifest(manifest, undefined, pullOptions)
    },
    async close() {
      sockets?.close()
      if (ownsDispatcher) await dispatcher.close()
    },
  }
}

function looksLikeLocation(target: string): boolean {
  return (
    /^(https?|file):/.test(target) ||
    /\.(json|ya?ml)$/i.test(target) ||
    isAbsolute(target) ||
    target.startsWith('.')
  )
}

/** Reads a file path, `file:` URL or http(s) URL as text (at most 16 MiB). */
export async function readLocation(
  location: string,
  dispatcher: Dispatcher | undefined,
  signal: AbortSignal | undefined,
): Promise<string> {
  if (location.startsWith('file:')) return readFile(fileURLToPath(location), 'utf8')
  if (!/^https?:/.test(location)) return readFile(location, 'utf8')
  const response = await request(location, {
    dispatcher,
    signal,
    headers: { accept: 'application/json, application/yaml, text/yaml, */*' },
  })
  if (response.statusCode !== 200) {
    await response.body.dump().catch(() => {})
    throw new DownloadError({
      code: 'LLMESH_SOURCES_EXHAUSTED',
      isRetryable: response.statusCode >= 500,
      message: `${location} answered ${response.statusCode}`,
    })
  }
  const length = Number(response.headers['content-length'] ?? 0)
  if (length > 16 * 1024 * 1024) {
    response.body.on('error', () => {})
    response.body.destroy()
    throw new InvalidArgumentError({
      argument: 'location',
      message: `${location} is ${length} bytes, more than a manifest or catalog may be (16 MiB)`,
    })
  }
  return response.body.text()
}

/** A document next to `location` (a piece index beside its manifest). */
async function readNearby(
  location: string,
  relative: string,
  dispatcher: Dispatcher,
  signal: AbortSignal | undefined,
): Promise<string> {
  if (location.startsWith('file:'))
    return readFile(join(dirname(fileURLToPath(location)), relative), 'utf8')
  return readLocation(new URL(relative, location).href, dispatcher, signal)
}
