import { type AbortOptions, createLogger, emitProgress, type ProgressEvent } from '@llmesh/core'
import {
  type Catalog,
  type Manifest,
  parseCatalog,
  readDocument,
  SignatureError,
  type TrustedKey,
  verifyCatalog,
} from '@llmesh/manifest'
import type { Dispatcher } from 'undici'
import type { Downloader, PullOptions, PullResult } from './downloader.js'
import { readLocation } from './downloader.js'
import { DownloadError, type SourceFailure } from './errors.js'
import { compareVersions } from './store.js'

const log = createLogger('downloader:catalog')

export interface FetchCatalogOptions extends AbortOptions {
  /** Keys whose signature makes a catalog trusted. */
  trustedKeys?: TrustedKey[]
  /** Accept a catalog with no valid signature from a trusted key. Default false. */
  allowUnsigned?: boolean
  allowInsecureMirrors?: boolean
  dispatcher?: Dispatcher
}

export interface FetchedCatalog {
  catalog: Catalog
  /** The endpoint it came from. */
  endpoint: string
  /** The key that signed it; undefined when accepted unsigned. */
  keyId: string | undefined
}

/**
 * Fetches a catalog from the first endpoint that serves a valid one (URLs or paths, in order),
 * and checks its signature. An unsigned catalog, or one signed by an unknown key, is refused
 * unless `allowUnsigned`; a catalog with a *bad* signature is refused always, since that is
 * what a rewritten catalog looks like. A refusal at one endpoint moves on to the next.
 */
export async function fetchCatalog(
  endpoints: string[],
  options: FetchCatalogOptions = {},
): Promise<FetchedCatalog> {
  const failures: SourceFailure[] = []
  for (const endpoint of endpoints) {
    try {
      const text = await readLocation(endpoint, options.dispatcher, options.signal)
      const parseOptions = {
        source: endpoint,
        allowInsecureMirrors: options.allowInsecureMirrors ?? false,
      }
      try {
        const { catalog, keyId } = verifyCatalog(text, options.trustedKeys ?? [], parseOptions)
        return { catalog, endpoint, keyId }
      } catch (error) {
        const unsigned =
          SignatureError.isInstance(error) &&
          (error.code === 'LLMESH_UNSIGNED' || error.code === 'LLMESH_UNTRUSTED_KEY')
        if (!(unsigned && options.allowUnsigned)) throw error
        log('accepting unsigned catalog from %s', endpoint)
        return {
          catalog: parseCatalog(readDocument(text, parseOptions), parseOptions),
          endpoint,
          keyId: undefined,
        }
      }
    } catch (error) {
      if (options.signal?.aborted) throw error
      const code = errorCode(error, 'LLMESH_CATALOG_UNAVAILABLE')
      const text = (error as Error).message
      const hint =
        code === 'LLMESH_UNSIGNED' || code === 'LLMESH_UNTRUSTED_KEY'
          ? ' (trust its signing key, or allow unsigned catalogs)'
          : ''
      failures.push({
        source: endpoint,
        code,
        message: `${text.includes(endpoint) ? text : `${endpoint}: ${text}`}${hint}`,
      })
      log('catalog endpoint %s failed: %s', endpoint, (error as Error).message)
    }
  }
  throw new DownloadError({
    code: 'LLMESH_CATALOG_UNAVAILABLE',
    failures,
    message: `No endpoint served a valid, trusted catalog:\n${failures.map((failure) => `  - ${failure.message}`).join('\n')}`,
  })
}

/** The manifests a catalog requires, each `id` resolved to its highest version. */
export function requiredModels(catalog: Catalog): Manifest[] {
  return catalog.required.map((reference) => {
    const at = reference.lastIndexOf('@')
    const id = at > 0 ? reference.slice(0, at) : reference
    const version = at > 0 ? reference.slice(at + 1) : undefined
    const matches = catalog.models.filter(
      (model) => model.id === id && (version === undefined || model.version === version),
    )
    // The catalog schema guarantees at least one match.
    return matches.sort((a, b) => compareVersions(a.version, b.version)).at(-1)!
  })
}

export type PrecacheProgressEvent = ProgressEvent<
  'precache:model-done',
  { model: string; ok: boolean; error?: string }
>

export interface PrecacheResult {
  pulled: PullResult[]
  failed: Array<{ model: string; code: string; message: string }>
}

/**
 * Pulls every model a catalog marks as required. It goes on past a failure, then throws
 * `LLMESH_PRECACHE_FAILED` naming every model that failed (the result is on the error too).
 */
export async function precache(
  downloader: Downloader,
  catalog: Catalog,
  options: PullOptions & { onModel?: (event: PrecacheProgressEvent) => void } = {},
): Promise<PrecacheResult> {
  const result: PrecacheResult = { pulled: [], failed: [] }
  for (const manifest of requiredModels(catalog)) {
    const model = `${manifest.id}@${manifest.version}`
    try {
      result.pulled.push(await downloader.pull(manifest, options))
      emitProgress({ onProgress: options.onModel }, 'precache:model-done', { model, ok: true })
    } catch (error) {
      if (options.signal?.aborted) throw error
      const code = errorCode(error, 'LLMESH_UNKNOWN')
      result.failed.push({ model, code, message: (error as Error).message })
      emitProgress({ onProgress: options.onModel }, 'precache:model-done', {
        model,
        ok: false,
        error: (error as Error).message,
      })
    }
  }
  if (result.failed.length > 0)
    throw Object.assign(
      new DownloadError({
        code: 'LLMESH_PRECACHE_FAILED',
        failures: result.failed.map((failure) => ({
          source: failure.model,
          code: failure.code,
          message: failure.message,
        })),
        message: `${result.failed.length} of ${result.failed.length + result.pulled.length} required models failed:\n${result.failed.map((failure) => `  - ${failure.model}: ${failure.message.split('\n')[0]}`).join('\n')}`,
      }),
      { result },
    )
  return result
}

function errorCode(error: unknown, fallback: string): string {
  return typeof error === 'object' && error !== null && 'code' in error
    ? String(error.code)
    : fallback
}
