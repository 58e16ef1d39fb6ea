/**
 * @packageDocumentation
 * Verified, resumable, multi-source downloads of large model files into a content-addressed
 * store with an SQLite index.
 *
 * @example
 * ```ts
 * import { createDownloader, ModelStore } from '@llmesh/downloader'
 *
 * const store = await ModelStore.open() // LLMESH_HOME or ~/.cache/llmesh
 * const downloader = createDownloader({ store })
 * const result = await downloader.pull('./tiny.manifest.json', {
 *   onProgress: (event) => {
 *     if (event.type === 'download:progress')
 *       console.log(`${event.detail.verifiedBytes} / ${event.detail.totalBytes} bytes verified`)
 *   },
 * })
 * console.log(result.files[0]?.modelPath, result.files[0]?.verification)
 * await downloader.close()
 * store.close()
 * ```
 */
export {
  type FetchCatalogOptions,
  type FetchedCatalog,
  fetchCatalog,
  type PrecacheProgressEvent,
  type PrecacheResult,
  precache,
  requiredModels,
} from './catalog.js'
export {
  type DownloadBlobOptions,
  type DownloadedBlob,
  diskFullError,
  downloadBlob,
  formatBytes,
  HostConnectionLimiter,
  insufficientSpace,
  nodeFileSystem,
  type PartialFileHandle,
  type PartialFileSystem,
  type SourceAttempt,
  type Verification,
} from './download-blob.js'
export {
  type BlobRequest,
  createDownloader,
  type Downloader,
  type DownloaderOptions,
  type PulledBlob,
  type PulledFile,
  type PullOptions,
  type PullResult,
} from './downloader.js'
export {
  DownloadError,
  type DownloadErrorCode,
  type SourceFailure,
  StoreError,
  type StoreErrorCode,
} from './errors.js'
export { tuneHeapForTransfers } from './garbage-collection.js'
export { Journal, type JournalHeader } from './journal.js'
export { PieceFile, type PieceFileOptions, type VerifyAndWriteOptions } from './piece-file.js'
export type { DownloadProgressEvent } from './progress.js'
export { FileSource } from './sources/file-source.js'
export { DEFAULT_HF_ENDPOINT, type HfReference, hfResolveUrl, parseHfUri } from './sources/hf.js'
export {
  type HttpProbe,
  HttpSource,
  type HttpSourceOptions,
  parseRetryAfter,
} from './sources/http-source.js'
export {
  compareVersions,
  type DamagedBlob,
  defaultStoreRoot,
  ModelStore,
  type PruneOptions,
  type StoreUsage,
  type VerifyStoreProgressEvent,
} from './store.js'
export type {
  AttemptRecord,
  BlobRecord,
  FileRecord,
  ModelRecord,
  ModelStatus,
  SourceStatistics,
} from './store-index.js'
export { TokenBucket } from './token-bucket.js'
