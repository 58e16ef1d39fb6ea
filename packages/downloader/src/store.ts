import {
  chmod,
  link,
  mkdir,
  readdir,
  readFile,
  rename,
  rm,
  stat,
  symlink,
  unlink,
  writeFile,
} from 'node:fs/promises'
import { homedir, hostname } from 'node:os'
import { dirname, join } from 'node:path'
import {
  type AbortOptions,
  createLogger,
  emitProgress,
  type ProgressEvent,
  type ProgressOptions,
  throwIfAborted,
} from '@llmesh/core'
import {
  defaultPieceSize,
  hashFile,
  type Manifest,
  PieceIndex,
  parseManifest,
} from '@llmesh/manifest'
import semver from 'semver'
import type { Verification } from './download-blob.js'
import { StoreError, systemErrorCode } from './errors.js'
import { isProcessAlive } from './lock.js'
import { type ModelRecord, StoreIndex } from './store-index.js'

const log = createLogger('downloader:store')

/**
 * The default store folder: `LLMESH_HOME`, else the platform's cache folder (`XDG_CACHE_HOME`,
 * `~/Library/Caches`, `%LOCALAPPDATA%`) followed by `llmesh`.
 */
export function defaultStoreRoot(environment: NodeJS.ProcessEnv = process.env): string {
  if (environment.LLMESH_HOME) return environment.LLMESH_HOME
  if (process.platform === 'darwin') return join(homedir(), 'Library', 'Caches', 'llmesh')
  if (process.platform === 'win32' && environment.LOCALAPPDATA)
    return join(environment.LOCALAPPDATA, 'llmesh')
  return join(environment.XDG_CACHE_HOME || join(homedir(), '.cache'), 'llmesh')
}

export interface StoreUsage {
  /** Bytes of complete blobs, each counted once however many models share it. */
  blobBytes: number
  /** Bytes of downloads in progress or interrupted. */
  partialBytes: number
  models: Array<{ id: string; version: string; bytes: number; pinned: boolean; status: string }>
}

export interface DamagedBlob {
  sha256: string
  path: string
  reason: string
  models: string[]
}

export type VerifyStoreProgressEvent = ProgressEvent<
  'store:blob-verified',
  { sha256: string; ok: boolean; index: number; total: number }
>

export interface PruneOptions {
  /** Versions kept per model id, newest first (by semantic version). Default 1. */
  keepVersions?: number
  /** Stop once the blobs use at most this many bytes (least recently used go first). */
  maxBytes?: number
  /** Report what would go, remove nothing. */
  dryRun?: boolean
}

/**
 * A content-addressed model store:
 *
 * ```text
 * blobs/sha256/<hex>        complete, verified, read-only
 * partial/<key>             downloads in progress, and <key>.journal of verified pieces
 * manifests/<id>/<version>.json
 * pieces/<sha256>.json      piece indexes of stored blobs (for peers, and for `verify`)
 * models/<id>/<version>/…   the artifacts under their manifest paths, hard links to blobs
 * locks/                    one lock per blob being downloaded; in-use leases
 * index.db                  SQLite: models, files, blobs, download attempts, source statistics
 * ```
 *
 * A file under `blobs/` is always complete and verified: it gets there only by an atomic rename
 * after verification. Two models sharing a file share its blob.
 */
export class ModelStore {
  readonly root: string
  readonly index: StoreIndex

  private constructor(root: string, index: StoreIndex) {
    this.root = root
    this.index = index
  }

  static async open({ root = defaultStoreRoot() }: { root?: string } = {}): Promise<ModelStore> {
    for (const folder of [
      'blobs/sha256',
      'partial',
      'manifests',
      'pieces',
      'models',
      'locks/in-use',
    ])
      await mkdir(join(root, folder), { recursive: true })
    return new ModelStore(root, new StoreIndex(join(root, 'index.db')))
  }

  blobPath(sha256: string): string {
    return join(this.root, 'blobs', 'sha256', sha256)
  }
  partialPath(key: string): string {
    return join(this.root, 'partial', key)
  }
  journalPath(key: string): string {
    return join(this.root, 'partial', `${key}.journal`)
  }
  lockPath(key: string): string {
    return join(this.root, 'locks', `${key}.lock`)
  }
  manifestPath(id: string, version: string): string {
    return join(this.root, 'manifests', id, `${encodeURIComponent(version)}.json`)
  }
  piecesPath(sha256: string): string {
    return join(this.root, 'pieces', `${sha256}.json`)
  }
  /** The readable path of a model's artifact, for tools that want a file name. */
  modelPath(id: string, version: string, artifactPath = ''): string {
    return join(this.root, 'models', id, encodeURIComponent(version), artifactPath)
  }

  /** True when the blob is complete in the store (indexed and present). */
  async hasBlob(sha256: string): Promise<boolean> {
    if (this.index.blob(sha256) === undefined) return false
    try {
      const { size } = await stat(this.blobPath(sha256))
      return size === this.index.blob(sha256)?.size
    } catch {
      this.index.deleteBlob(sha256)
      return false
    }
  }

  /** Moves a verified partial file to its blob path (atomically) and indexes it. */
  async publish(
    partialPath: string,
    journalPath: string,
    blob: { sha256: string; size: number; verification: Verification },
  ): Promise<string> {
    const target = this.blobPath(blob.sha256)
    await chmod(partialPath, 0o444)
    await rename(partialPath, target)
    await rm(journalPath, { force: true })
    this.index.addBlob(blob)
    log('published %s (%d bytes, %s)', blob.sha256, blob.size, blob.verification)
    return target
  }

  async savePieceIndex(pieceIndex: PieceIndex): Promise<void> {
    await writeAtomic(this.piecesPath(pieceIndex.sha256), JSON.stringify(pieceIndex.toJSON()))
  }

  async readPieceIndex(sha256: string): Promise<PieceIndex | undefined> {
    try {
      return PieceIndex.fromJSON(JSON.parse(await readFile(this.piecesPath(sha256), 'utf8')))
    } catch {
      return undefined
    }
  }

  async saveManifest(manifest: Manifest): Promise<void> {
    await writeAtomic(
      this.manifestPath(manifest.id, manifest.version),
      `${JSON.stringify(manifest, null, 2)}\n`,
    )
  }

  /** A stored manifest: the given version, or the highest one stored. */
  async readManifest(id: string, version?: string): Promise<Manifest | undefined> {
    const chosen = version ?? this.latestVersion(id)
    if (chosen === undefined) return undefined
    try {
      return parseManifest(await readFile(this.manifestPath(id, chosen), 'utf8'), {
        allowInsecureMirrors: true,
      })
    } catch (error) {
      if (systemErrorCode(error) === 'ENOENT') return undefined
      throw error
    }
  }

  private latestVersion(id: string): string | undefined {
    const versions = this.index.models({ id }).map((model) => model.version)
    return versions.sort(compareVersions).at(-1)
  }

  /** Links every artifact of a stored model under `models/<id>/<version>/` (hard links, else symlinks). */
  async linkModel(
    id: string,
    version: string,
    files: Array<{ path: string; sha256: string }>,
  ): Promise<string> {
    for (const file of files) {
      const target = this.modelPath(id, version, file.path)
      await mkdir(dirname(target), { recursive: true })
      await unlink(target).catch(() => {})
      try {
        await link(this.blobPath(file.sha256), target)
      } catch {
        await symlink(this.blobPath(file.sha256), target)
      }
    }
    return this.modelPath(id, version)
  }

  list(): ModelRecord[] {
    return this.index.models()
  }

  /** Finds a model by `id` or `id@version`; throws `StoreError` when it is not in the store. */
  resolve(reference: string): ModelRecord {
    const at = reference.lastIndexOf('@')
    const id = at > 0 ? reference.slice(0, at) : reference
    const version = at > 0 ? reference.slice(at + 1) : this.latestVersion(id)
    const model = version === undefined ? undefined : this.index.model(id, version)
    if (model === undefined)
      throw new StoreError({
        code: 'LLMESH_MODEL_NOT_FOUND',
        model: reference,
        message: `No model ${reference} in the store at ${this.root}; llmesh ls lists what is there.`,
      })
    return model
  }

  pin(reference: string, pinned = true): ModelRecord {
    const model = this.resolve(reference)
    this.index.setPinned(model.id, model.version, pinned)
    return { ...model, pinned }
  }

  /**
   * Marks a model as in use by this process until `release()` (or until the process dies), so
   * that `prune` and `rm` leave it alone. The inference package holds one per loaded model.
   */
  async acquireUse(reference: string): Promise<{ release(): Promise<void> }> {
    const model = this.resolve(reference)
    const path = join(
      this.root,
      'locks',
      'in-use',
      `${encodeURIComponent(`${model.id}@${model.version}`)}.${hostname()}.${process.pid}`,
    )
    await writeFile(path, '')
    this.index.touch(model.id, model.version)
    return { release: () => rm(path, { force: true }) }
  }

  async isInUse(id: string, version: string): Promise<boolean> {
    const prefix = `${encodeURIComponent(`${id}@${version}`)}.`
    for (const name of await readdir(join(this.root, 'locks', 'in-use'))) {
      if (!name.startsWith(prefix)) continue
      const rest = name.slice(prefix.length)
      const dot = rest.lastIndexOf('.')
      const host = rest.slice(0, dot)
      const pid = Number(rest.slice(dot + 1))
      if (host !== hostname() || isProcessAlive(pid)) return true
      await rm(join(this.root, 'locks', 'in-use', name), { force: true })
    }
    return false
  }

  /** Removes a model, and every blob no other model uses. Refuses a pinned or in-use one unless forced. */
  async remove(
    reference: string,
    { force = false }: { force?: boolean } = {},
  ): Promise<{ removed: ModelRecord; freedBytes: number }> {
    const model = this.resolve(reference)
    if (!force && model.pinned)
      throw new StoreError({
        code: 'LLMESH_MODEL_PINNED',
        model: reference,
        message: `${model.id}@${model.version} is pinned; unpin it first (llmesh pin --remove) or force.`,
      })
    if (!force && (await this.isInUse(model.id, model.version)))
      throw new StoreError({
        code: 'LLMESH_MODEL_IN_USE',
        model: reference,
        message: `${model.id}@${model.version} is in use by a running process; stop it first or force.`,
      })
    this.index.deleteModel(model.id, model.version)
    await rm(this.modelPath(model.id, model.version), { recursive: true, force: true })
    await rm(this.manifestPath(model.id, model.version), { force: true })
    let freedBytes = 0
    for (const file of model.files) {
      if (this.index.referencesTo(file.sha256) > 0) continue
      const blob = this.index.blob(file.sha256)
      await rm(this.blobPath(file.sha256), { force: true })
      await rm(this.piecesPath(file.sha256), { force: true })
      this.index.deleteBlob(file.sha256)
      freedBytes += blob?.size ?? 0
    }
    return { removed: model, freedBytes }
  }

  /**
   * Keeps the newest `keepVersions` versions of each model and removes older ones, least recently
   * used first, never a pinned or in-use one; with `maxBytes`, stops once the store fits.
   */
  async prune({
    keepVersions = 1,
    maxBytes,
    dryRun = false,
  }: PruneOptions = {}): Promise<{ removed: ModelRecord[]; freedBytes: number }> {
    const byId = new Map<string, ModelRecord[]>()
    for (const model of this.list()) byId.set(model.id, [...(byId.get(model.id) ?? []), model])
    const candidates: ModelRecord[] = []
    for (const versions of byId.values()) {
      const newestFirst = [...versions].sort((a, b) => compareVersions(b.version, a.version))
      candidates.push(...newestFirst.slice(keepVersions))
    }
    candidates.sort((a, b) => (a.lastUsedAt ?? a.addedAt).localeCompare(b.lastUsedAt ?? b.addedAt))
    const removed: ModelRecord[] = []
    let freedBytes = 0
    let usage = (await this.usage()).blobBytes
    for (const model of candidates) {
      if (maxBytes !== undefined && usage <= maxBytes) break
      if (model.pinned || (await this.isInUse(model.id, model.version))) continue
      if (dryRun) {
        const bytes = model.files
          .filter((file) => this.index.referencesTo(file.sha256) === 1)
          .reduce((sum, file) => sum + file.size, 0)
        removed.push(model)
        freedBytes += bytes
        usage -= bytes
        continue
      }
      const result = await this.remove(`${model.id}@${model.version}`)
      removed.push(model)
      freedBytes += result.freedBytes
      usage -= result.freedBytes
    }
    return { removed, freedBytes }
  }

  async usage(): Promise<StoreUsage> {
    const blobBytes = this.index.blobs().reduce((sum, blob) => sum + blob.size, 0)
    let partialBytes = 0
    for (const name of await readdir(join(this.root, 'partial'))) {
      const info = await stat(join(this.root, 'partial', name)).catch(() => undefined)
      partialBytes +=
        info?.blocks === undefined ? (info?.size ?? 0) : Math.min(info.size, info.blocks * 512)
    }
    const models = this.list().map((model) => ({
      id: model.id,
      version: model.version,
      bytes: model.files.reduce((sum, file) => sum + file.size, 0),
      pinned: model.pinned,
      status: model.status,
    }))
    return { blobBytes, partialBytes, models }
  }

  /**
   * Re-hashes every blob and reports those that are damaged (missing, wrong size, wrong sha256).
   * With `remove`, a damaged blob is deleted and its models marked `failed`, so the next pull
   * fetches it again.
   */
  async verify(
    options: AbortOptions & ProgressOptions<VerifyStoreProgressEvent> & { remove?: boolean } = {},
  ): Promise<{ checked: number; damaged: DamagedBlob[] }> {
    const blobs = this.index.blobs()
    const damaged: DamagedBlob[] = []
    for (const [position, blob] of blobs.entries()) {
      throwIfAborted(options.signal)
      const path = this.blobPath(blob.sha256)
      let reason: string | undefined
      try {
        const hashes = await hashFile(path, {
          pieceSize: defaultPieceSize(blob.size),
          signal: options.signal,
        })
        if (hashes.size !== blob.size) reason = `holds ${hashes.size} bytes, not ${blob.size}`
        else if (hashes.sha256 !== blob.sha256) reason = `its sha256 is ${hashes.sha256}`
      } catch (error) {
        if (systemErrorCode(error) !== 'ENOENT') throw error
        reason = 'is missing'
      }
      emitProgress(options, 'store:blob-verified', {
        sha256: blob.sha256,
        ok: reason === undefined,
        index: position,
        total: blobs.length,
      })
      if (reason === undefined) continue
      const models = this.list().filter((model) =>
        model.files.some((file) => file.sha256 === blob.sha256),
      )
      damaged.push({
        sha256: blob.sha256,
        path,
        reason,
        models: models.map((model) => `${model.id}@${model.version}`),
      })
      if (options.remove) {
        await rm(path, { force: true })
        this.index.deleteBlob(blob.sha256)
        for (const model of models)
          this.index.setStatus(model.id, model.version, 'failed', `blob ${blob.sha256} ${reason}`)
      }
    }
    return { checked: blobs.length, damaged }
  }

  close(): void {
    this.index.close()
  }
}

/** Semantic versions compare by precedence; anything else (an hf revision) by text. */
export function compareVersions(a: string, b: string): number {
  if (semver.valid(a) && semver.valid(b)) return semver.compare(a, b)
  return a.localeCompare(b)
}

async function writeAtomic(path: string, text: string): Promise<void> {
  await mkdir(dirname(path), { recursive: true })
  const temporary = `${path}.${process.pid}.${Date.now()}.tmp`
  await writeFile(temporary, text)
  await rename(temporary, path)
}
