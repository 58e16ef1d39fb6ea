import { readdir, stat } from 'node:fs/promises'
import { basename, join, relative, resolve, sep } from 'node:path'
import {
  type AbortOptions,
  emitProgress,
  InvalidArgumentError,
  type ProgressEvent,
  type ProgressOptions,
} from '@llmesh/core'
import { hashFile } from './hash-file.js'
import { ManifestError } from './manifest-error.js'
import { parseManifest } from './parse.js'
import { defaultPieceSize, PieceIndex } from './pieces.js'
import { type Manifest, type ManifestInput, unsafePathReason } from './schema.js'

export type CreateManifestProgressEvent =
  | ProgressEvent<'manifest:file-started', { path: string; size: number }>
  | ProgressEvent<
      'manifest:hash-progress',
      {
        path: string
        bytesHashed: number
        size: number
        totalBytesHashed: number
        totalBytes: number
      }
    >
  | ProgressEvent<'manifest:file-hashed', { path: string; size: number; sha256: string }>

export interface ArtifactFile {
  /** The file on disk. */
  file: string
  /** Its path inside the model, `/`-separated. Default: the file's base name. */
  path?: string
  mirrors?: string[]
  mediaType?: string
}

export interface CreateManifestOptions
  extends AbortOptions,
    ProgressOptions<CreateManifestProgressEvent> {
  /** Files to include: paths on disk, or objects naming the artifact path and mirrors. */
  files?: Array<string | ArtifactFile>
  /** A folder whose files (recursively, following links, skipping dot-files) become the artifacts. */
  folder?: string
  /** The manifest's other fields: id, version and license at least; profile is guessed when absent. */
  manifest: Omit<ManifestInput, 'schemaVersion' | 'artifacts' | 'profile'> & {
    profile?: ManifestInput['profile']
  }
  /** Piece size for per-piece integrity; default chosen per file by `defaultPieceSize`. */
  pieceSize?: number
  /** Accept http mirrors in `files[].mirrors`. */
  allowInsecureMirrors?: boolean
}

export interface CreatedManifest {
  manifest: Manifest
  /** One piece index per artifact, in the order of `manifest.artifacts`; publish them beside the manifest. */
  pieceIndexes: PieceIndex[]
}

const mediaTypes: Record<string, string> = {
  '.gguf': 'application/vnd.gguf',
  '.safetensors': 'application/vnd.safetensors',
  '.json': 'application/json',
  '.txt': 'text/plain',
  '.md': 'text/markdown',
}

/**
 * Creates a manifest from files: each file is read once, computing its sha256 and its piece hashes
 * in the same pass. The result is validated like any parsed manifest.
 */
export async function createManifest(options: CreateManifestOptions): Promise<CreatedManifest> {
  const files = await collectFiles(options)
  if (files.length === 0)
    throw new InvalidArgumentError({
      argument: 'options',
      message: 'give files or a folder with at least one file',
    })
  const sizes = await Promise.all(files.map(async (file) => (await stat(file.file)).size))
  const totalBytes = sizes.reduce((sum, size) => sum + size, 0)
  let totalBytesHashed = 0

  const artifacts: ManifestInput['artifacts'] = []
  const pieceIndexes: PieceIndex[] = []
  for (const [position, file] of files.entries()) {
    const path = file.path ?? basename(file.file)
    const size = sizes[position]!
    emitProgress(options, 'manifest:file-started', { path, size })
    const pieceSize = options.pieceSize ?? defaultPieceSize(size)
    const before = totalBytesHashed
    const hashes = await hashFile(file.file, {
      pieceSize,
      signal: options.signal,
      onBytes: (bytesHashed) => {
        totalBytesHashed = before + bytesHashed
        emitProgress(options, 'manifest:hash-progress', {
          path,
          bytesHashed,
          size,
          totalBytesHashed,
          totalBytes,
        })
      },
    })
    const pieceIndex = new PieceIndex({
      sha256: hashes.sha256,
      size: hashes.size,
      pieceSize,
      hashes: hashes.pieceHashes,
    })
    pieceIndexes.push(pieceIndex)
    artifacts.push({
      path,
      size: hashes.size,
      sha256: hashes.sha256,
      mediaType: file.mediaType ?? mediaTypes[extensionOf(path)] ?? 'application/octet-stream',
      mirrors: file.mirrors ?? [],
      pieces: pieceIndex.integrity,
    })
    emitProgress(options, 'manifest:file-hashed', {
      path,
      size: hashes.size,
      sha256: hashes.sha256,
    })
  }

  const profile =
    options.manifest.profile ??
    (artifacts.some((artifact) => artifact.path.endsWith('.gguf')) ? 'gguf' : 'custom')
  const entrypoint =
    options.manifest.entrypoint ??
    (profile === 'gguf'
      ? { artifact: artifacts.find((artifact) => artifact.path.endsWith('.gguf'))!.path }
      : undefined)
  const manifest = parseManifest(
    {
      schemaVersion: 1,
      ...options.manifest,
      profile,
      ...(entrypoint === undefined ? {} : { entrypoint }),
      createdAt: options.manifest.createdAt ?? new Date().toISOString(),
      artifacts,
    },
    { allowInsecureMirrors: options.allowInsecureMirrors ?? false },
  )
  return { manifest, pieceIndexes }
}

function extensionOf(path: string): string {
  const dot = path.lastIndexOf('.')
  return dot === -1 ? '' : path.slice(dot).toLowerCase()
}

async function collectFiles(options: CreateManifestOptions): Promise<ArtifactFile[]> {
  const files: ArtifactFile[] = (options.files ?? []).map((entry) =>
    typeof entry === 'string' ? { file: entry } : entry,
  )
  if (options.folder !== undefined) {
    const root = resolve(options.folder)
    for (const file of await walk(root))
      files.push({ file, path: relative(root, file).split(sep).join('/') })
  }
  const issues = files.flatMap((file, index) => {
    const reason = unsafePathReason(file.path ?? basename(file.file))
    return reason === undefined ? [] : [{ path: `files[${index}].path`, message: reason }]
  })
  if (issues.length > 0) throw new ManifestError({ issues })
  return files
}

/** Regular files under `folder`, sorted, following symbolic links (a Hugging Face snapshot is all links). */
async function walk(folder: string): Promise<string[]> {
  const found: string[] = []
  const entries = await readdir(folder, { withFileTypes: true })
  entries.sort((left, right) => (left.name < right.name ? -1 : left.name > right.name ? 1 : 0))
  for (const entry of entries) {
    if (entry.name.startsWith('.')) continue
    const path = join(folder, entry.name)
    const info = await stat(path)
    if (info.isDirectory()) found.push(...(await walk(path)))
    else if (info.isFile()) found.push(path)
  }
  return found
}
