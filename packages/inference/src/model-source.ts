/**
 * Where a model's file comes from: the store (by `id`, `id@version` or `sha256:<digest>`), or a
 * path. The pool asks a resolver; a resolver answers with the file and the manifest's settings.
 */
import { access } from 'node:fs/promises'
import { resolve as resolvePath } from 'node:path'
import type { ModelStore } from '@llmesh/downloader'
import type { Manifest } from '@llmesh/manifest'
import { InferenceError } from './errors.js'

export interface ModelSource {
  /** The name requests and reports use. */
  name: string
  path: string
  /** From the manifest's entrypoint. */
  contextSize?: number
  gpuLayers?: number | 'auto' | 'max'
  manifest?: Manifest
  /** A store model: its id and version, for recording a smoke test. */
  stored?: { id: string; version: string }
  /** Taken while the model is loaded (the store's in-use mark, so prune leaves it alone). */
  hold?: () => Promise<{ release(): Promise<void> }>
}

export type ModelResolver = (
  reference: string,
  options: { signal?: AbortSignal | undefined },
) => Promise<ModelSource>

/** The reference is a path to a GGUF file. */
export const pathModelResolver: ModelResolver = async (reference) => {
  const path = resolvePath(reference)
  try {
    await access(path)
  } catch (error) {
    throw new InferenceError({
      code: 'LLMESH_MODEL_NOT_FOUND',
      model: reference,
      path,
      message: `No model file at ${path}.`,
      cause: error,
    })
  }
  return { name: reference, path }
}

export interface StoreModelResolverOptions {
  /** Refuse models that have not passed their smoke test (`status` other than `available`). */
  requireAvailable?: boolean
  /** Accept paths too (for `llmesh run ./model.gguf`); default true. */
  allowPaths?: boolean
}

/** Resolves `id`, `id@version` and `sha256:<hex>` in `store`, then (unless turned off) paths to files. */
export function storeModelResolver(
  store: ModelStore,
  options: StoreModelResolverOptions = {},
): ModelResolver {
  return async (reference, context) => {
    const digest = /^sha256:([0-9a-f]{64})$/.exec(reference)?.[1]
    if (digest !== undefined) {
      if (!(await store.hasBlob(digest)))
        throw new InferenceError({
          code: 'LLMESH_MODEL_NOT_FOUND',
          model: reference,
          message: `No blob ${reference} in the store at ${store.root}.`,
        })
      return { name: reference, path: store.blobPath(digest) }
    }
    let record: ReturnType<ModelStore['resolve']>
    try {
      record = store.resolve(reference)
    } catch (error) {
      // Not a stored model: a file, when paths are allowed and it exists.
      if (options.allowPaths !== false && (await exists(reference)))
        return pathModelResolver(reference, context)
      throw new InferenceError({
        code: 'LLMESH_MODEL_NOT_FOUND',
        model: reference,
        message: error instanceof Error ? error.message : String(error),
        cause: error,
      })
    }
    if (options.requireAvailable && record.status !== 'available')
      throw new InferenceError({
        code: 'LLMESH_MODEL_UNAVAILABLE',
        model: reference,
        message: `${record.id}@${record.version} is ${record.status}${record.statusReason === undefined ? '' : ` (${record.statusReason})`}, not available: it serves only after its smoke test passes.`,
      })
    const manifest = await store.readManifest(record.id, record.version)
    const entrypoint = manifest?.entrypoint
    const artifactPath =
      entrypoint?.artifact ??
      record.files
        .map((file) => file.path)
        .filter((path) => path.toLowerCase().endsWith('.gguf'))
        .sort()[0]
    const file = record.files.find((candidate) => candidate.path === artifactPath)
    if (file === undefined)
      throw new InferenceError({
        code: 'LLMESH_MODEL_NOT_FOUND',
        model: reference,
        message: `${record.id}@${record.version} has no GGUF file to load.`,
      })
    // The linked folder keeps the artifacts' names, which llama.cpp needs to find a split model's parts.
    const linked = store.modelPath(record.id, record.version, file.path)
    const path = (await exists(linked)) ? linked : store.blobPath(file.sha256)
    return {
      name: reference,
      path,
      ...(entrypoint?.contextSize === undefined ? {} : { contextSize: entrypoint.contextSize }),
      ...(entrypoint?.gpuLayers === undefined ? {} : { gpuLayers: entrypoint.gpuLayers }),
      ...(manifest === undefined ? {} : { manifest }),
      stored: { id: record.id, version: record.version },
      hold: () => store.acquireUse(`${record.id}@${record.version}`),
    }
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path)
    return true
  } catch {
    return false
  }
}
