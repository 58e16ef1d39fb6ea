import type { ProgressEvent } from '@llmesh/core'
import type { Verification } from './download-blob.js'

/**
 * Every event a download reports, through `onProgress`. Byte counts only grow: `receivedBytes`
 * counts everything that arrived (bad pieces included), `verifiedBytes` what is proven right.
 */
export type DownloadProgressEvent =
  | ProgressEvent<
      'download:started',
      {
        sha256: string | undefined
        size: number
        pieceSize: number
        pieces: number
        resumedBytes: number
        sources: string[]
      }
    >
  | ProgressEvent<
      'download:progress',
      {
        sha256: string | undefined
        totalBytes: number
        receivedBytes: number
        verifiedBytes: number
        resumedBytes: number
        /** Bytes received per source id in this run. */
        bySource: Record<string, number>
      }
    >
  | ProgressEvent<
      'download:piece-verified',
      { sha256: string | undefined; piece: number; source: string; bytes: number }
    >
  | ProgressEvent<
      'download:piece-rejected',
      { sha256: string | undefined; piece: number; source: string }
    >
  | ProgressEvent<
      'download:source-failed',
      { sha256: string | undefined; piece: number; source: string; code: string; message: string }
    >
  | ProgressEvent<
      'download:source-dropped',
      { sha256: string | undefined; source: string; reason: string }
    >
  | ProgressEvent<
      'download:hedged',
      { sha256: string | undefined; piece: number; source: string; slowSource: string }
    >
  | ProgressEvent<'download:verified', { sha256: string; size: number; verification: Verification }>
  /** Another process holds the lock on this blob; its progress, read from its journal. */
  | ProgressEvent<
      'download:waiting',
      { sha256: string; holderPid: number; verifiedBytes: number; totalBytes: number }
    >
  /** The blob was already in the store: nothing to download. */
  | ProgressEvent<'download:cached', { sha256: string; size: number }>
  /** A model's artifact starts (pull level): which file of which model. */
  | ProgressEvent<
      'pull:file-started',
      { model: string; path: string; sha256: string | undefined; size: number }
    >
  | ProgressEvent<
      'pull:file-done',
      {
        model: string
        path: string
        sha256: string
        size: number
        verification: Verification
        cached: boolean
      }
    >
