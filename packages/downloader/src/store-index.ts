import { DatabaseSync } from 'node:sqlite'
import type { SourceAttempt, Verification } from './download-blob.js'

/** Where a model stands in this store. `available` is set by the inference package after a smoke test. */
export type ModelStatus = 'downloading' | 'verified' | 'available' | 'failed'

export interface ModelRecord {
  id: string
  version: string
  stage: string
  status: ModelStatus
  statusReason: string | undefined
  pinned: boolean
  addedAt: string
  lastUsedAt: string | undefined
  files: FileRecord[]
}

export interface FileRecord {
  path: string
  sha256: string
  size: number
}

export interface BlobRecord {
  sha256: string
  size: number
  verification: Verification
  addedAt: string
}

export interface AttemptRecord extends SourceAttempt {
  downloadId: string
  sha256: string
  startedAt: string
}

export interface SourceStatistics {
  source: string
  bytes: number
  durationMs: number
  successes: number
  failures: number
  corruptPieces: number
  /** Bytes per second over every download it served. */
  throughput: number
  lastSuccessAt: string | undefined
  lastFailureAt: string | undefined
}

/**
 * Schema migrations, applied in order; `PRAGMA user_version` records how many ran. Append only:
 * an existing migration never changes, so every store upgrades the same way.
 */
const migrations = [
  `CREATE TABLE models (
     id TEXT NOT NULL,
     version TEXT NOT NULL,
     stage TEXT NOT NULL,
     status TEXT NOT NULL,
     status_reason TEXT,
     pinned INTEGER NOT NULL DEFAULT 0,
     added_at TEXT NOT NULL,
     last_used_at TEXT,
     PRIMARY KEY (id, version)
   ) STRICT;
   CREATE TABLE files (
     model_id TEXT NOT NULL,
     model_version TEXT NOT NULL,
     path TEXT NOT NULL,
     sha256 TEXT NOT NULL,
     size INTEGER NOT NULL,
     PRIMARY KEY (model_id, model_version, path),
     FOREIGN KEY (model_id, model_version) REFERENCES models (id, version) ON DELETE CASCADE
   ) STRICT;
   CREATE INDEX files_by_sha256 ON files (sha256);
   CREATE TABLE blobs (
     sha256 TEXT PRIMARY KEY,
     size INTEGER NOT NULL,
     verification TEXT NOT NULL,
     added_at TEXT NOT NULL
   ) STRICT;
   CREATE TABLE download_attempts (
     id INTEGER PRIMARY KEY,
     download_id TEXT NOT NULL,
     sha256 TEXT NOT NULL,
     source TEXT NOT NULL,
     kind TEXT NOT NULL,
     bytes INTEGER NOT NULL,
     pieces INTEGER NOT NULL,
     duration_ms REAL NOT NULL,
     failures INTEGER NOT NULL,
     corrupt_pieces TEXT NOT NULL,
     outcome TEXT NOT NULL,
     error_code TEXT,
     error_message TEXT,
     started_at TEXT NOT NULL
   ) STRICT;
   CREATE INDEX attempts_by_sha256 ON download_attempts (sha256);
   CREATE TABLE source_statistics (
     source TEXT PRIMARY KEY,
     bytes INTEGER NOT NULL DEFAULT 0,
     duration_ms REAL NOT NULL DEFAULT 0,
     successes INTEGER NOT NULL DEFAULT 0,
     failures INTEGER NOT NULL DEFAULT 0,
     corrupt_pieces INTEGER NOT NULL DEFAULT 0,
     last_success_at TEXT,
     last_failure_at TEXT
   ) STRICT;`,
]

/**
 * The store's index on `node:sqlite`: models, their files, blobs, every download attempt and
 * per-source statistics. WAL mode and a busy timeout let several processes share one store.
 * Every statement is parameterised.
 */
export class StoreIndex {
  readonly database: DatabaseSync

  constructor(path: string) {
    this.database = new DatabaseSync(path, { timeout: 10_000 })
    this.database.exec(
      'PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;',
    )
    this.migrate()
  }

  private migrate(): void {
    const { user_version: current } = this.database.prepare('PRAGMA user_version').get() as {
      user_version: number
    }
    if (current >= migrations.length) return
    this.database.exec('BEGIN IMMEDIATE')
    try {
      // Read again inside the write lock: another process may have migrated meanwhile.
      const { user_version: locked } = this.database.prepare('PRAGMA user_version').get() as {
        user_version: number
      }
      for (let index = locked; index < migrations.length; index++)
        this.database.exec(migrations[index]!)
      this.database.exec(`PRAGMA user_version = ${migrations.length}`)
      this.database.exec('COMMIT')
    } catch (error) {
      this.database.exec('ROLLBACK')
      throw error
    }
  }

  upsertModel(model: {
    id: string
    version: string
    stage: string
    status: ModelStatus
    statusReason?: string | undefined
    files: FileRecord[]
  }): void {
    this.transaction(() => {
      this.database
        .prepare(
          `INSERT INTO models (id, version, stage, status, status_reason, added_at)
           VALUES (?, ?, ?, ?, ?, ?)
           ON CONFLICT (id, version) DO UPDATE SET stage = excluded.stage, status = excluded.status, status_reason = excluded.status_reason`,
        )
        .run(
          model.id,
          model.version,
          model.stage,
          model.status,
          model.statusReason ?? null,
          new Date().toISOString(),
        )
      this.database
        .prepare('DELETE FROM files WHERE model_id = ? AND model_version = ?')
        .run(model.id, model.version)
      const insert = this.database.prepare(
        'INSERT INTO files (model_id, model_version, path, sha256, size) VALUES (?, ?, ?, ?, ?)',
      )
      for (const file of model.files)
        insert.run(model.id, model.version, file.path, file.sha256, file.size)
    })
  }

  setStatus(id: string, version: string, status: ModelStatus, reason?: string): void {
    this.database
      .prepare('UPDATE models SET status = ?, status_reason = ? WHERE id = ? AND version = ?')
      .run(status, reason ?? null, id, version)
  }

  setPinned(id: string, version: string, pinned: boolean): number {
    return Number(
      this.database
        .prepare('UPDATE models SET pinned = ? WHERE id = ? AND version = ?')
        .run(pinned ? 1 : 0, id, version).changes,
    )
  }

  touch(id: string, version: string): void {
    this.database
      .prepare('UPDATE models SET last_used_at = ? WHERE id = ? AND version = ?')
      .run(new Date().toISOString(), id, version)
  }

  deleteModel(id: string, version: string): void {
    this.database.prepare('DELETE FROM models WHERE id = ? AND version = ?').run(id, version)
  }

  models(filter: { id?: string } = {}): ModelRecord[] {
    const rows = (
      filter.id === undefined
        ? this.database.prepare('SELECT * FROM models ORDER BY id, added_at').all()
        : this.database
            .prepare('SELECT * FROM models WHERE id = ? ORDER BY added_at')
            .all(filter.id)
    ) as Array<Record<string, string | number | null>>
    const filesOf = this.database.prepare(
      'SELECT path, sha256, size FROM files WHERE model_id = ? AND model_version = ? ORDER BY path',
    )
    return rows.map((row) => ({
      id: String(row.id),
      version: String(row.version),
      stage: String(row.stage),
      status: row.status as ModelStatus,
      statusReason: row.status_reason === null ? undefined : String(row.status_reason),
      pinned: row.pinned === 1,
      addedAt: String(row.added_at),
      lastUsedAt: row.last_used_at === null ? undefined : String(row.last_used_at),
      files: (
        filesOf.all(String(row.id), String(row.version)) as Array<{
          path: string
          sha256: string
          size: number
        }>
      ).map((file) => ({ path: file.path, sha256: file.sha256, size: Number(file.size) })),
    }))
  }

  model(id: string, version: string): ModelRecord | undefined {
    return this.models({ id }).find((model) => model.version === version)
  }

  addBlob(blob: { sha256: string; size: number; verification: Verification }): void {
    this.database
      .prepare(
        'INSERT INTO blobs (sha256, size, verification, added_at) VALUES (?, ?, ?, ?) ON CONFLICT (sha256) DO NOTHING',
      )
      .run(blob.sha256, blob.size, blob.verification, new Date().toISOString())
  }

  blob(sha256: string): BlobRecord | undefined {
    const row = this.database.prepare('SELECT * FROM blobs WHERE sha256 = ?').get(sha256) as
      | Record<string, string | number>
      | undefined
    return row === undefined
      ? undefined
      : {
          sha256: String(row.sha256),
          size: Number(row.size),
          verification: row.verification as Verification,
          addedAt: String(row.added_at),
        }
  }

  blobs(): BlobRecord[] {
    return (
      this.database.prepare('SELECT * FROM blobs ORDER BY sha256').all() as Array<
        Record<string, string | number>
      >
    ).map((row) => ({
      sha256: String(row.sha256),
      size: Number(row.size),
      verification: row.verification as Verification,
      addedAt: String(row.added_at),
    }))
  }

  deleteBlob(sha256: string): void {
    this.database.prepare('DELETE FROM blobs WHERE sha256 = ?').run(sha256)
  }

  /** How many model files still point at a blob. */
  referencesTo(sha256: string): number {
    const row = this.database
      .prepare('SELECT COUNT(*) AS count FROM files WHERE sha256 = ?')
      .get(sha256) as { count: number }
    return Number(row.count)
  }

  /** Logs one download run's attempts and folds them into per-source statistics. */
  recordAttempts(
    downloadId: string,
    sha256: string,
    startedAt: string,
    attempts: SourceAttempt[],
  ): void {
    const now = new Date().toISOString()
    this.transaction(() => {
      const insert = this.database.prepare(
        `INSERT INTO download_attempts (download_id, sha256, source, kind, bytes, pieces, duration_ms, failures, corrupt_pieces, outcome, error_code, error_message, started_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      )
      const statistics = this.database.prepare(
        `INSERT INTO source_statistics (source, bytes, duration_ms, successes, failures, corrupt_pieces, last_success_at, last_failure_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (source) DO UPDATE SET
           bytes = bytes + excluded.bytes,
           duration_ms = duration_ms + excluded.duration_ms,
           successes = successes + excluded.successes,
           failures = failures + excluded.failures,
           corrupt_pieces = corrupt_pieces + excluded.corrupt_pieces,
           last_success_at = COALESCE(excluded.last_success_at, last_success_at),
           last_failure_at = COALESCE(excluded.last_failure_at, last_failure_at)`,
      )
      for (const attempt of attempts) {
        insert.run(
          downloadId,
          sha256,
          attempt.source,
          attempt.kind,
          attempt.bytes,
          attempt.pieces,
          attempt.durationMs,
          attempt.failures,
          JSON.stringify(attempt.corruptPieces),
          attempt.outcome,
          attempt.error?.code ?? null,
          attempt.error?.message ?? null,
          startedAt,
        )
        if (attempt.outcome === 'unused') continue
        const failed = attempt.failures > 0 || attempt.outcome !== 'ok'
        statistics.run(
          attempt.source,
          attempt.bytes,
          attempt.durationMs,
          attempt.pieces > 0 ? 1 : 0,
          attempt.failures,
          attempt.corruptPieces.length,
          attempt.pieces > 0 ? now : null,
          failed ? now : null,
        )
      }
    })
  }

  attempts(sha256?: string): AttemptRecord[] {
    const rows = (
      sha256 === undefined
        ? this.database.prepare('SELECT * FROM download_attempts ORDER BY id').all()
        : this.database
            .prepare('SELECT * FROM download_attempts WHERE sha256 = ? ORDER BY id')
            .all(sha256)
    ) as Array<Record<string, string | number | null>>
    return rows.map((row) => ({
      downloadId: String(row.download_id),
      sha256: String(row.sha256),
      source: String(row.source),
      kind: String(row.kind),
      bytes: Number(row.bytes),
      pieces: Number(row.pieces),
      durationMs: Number(row.duration_ms),
      failures: Number(row.failures),
      corruptPieces: JSON.parse(String(row.corrupt_pieces)) as number[],
      outcome: row.outcome as SourceAttempt['outcome'],
      error:
        row.error_code === null
          ? undefined
          : { code: String(row.error_code), message: String(row.error_message) },
      startedAt: String(row.started_at),
    }))
  }

  sourceStatistics(): SourceStatistics[] {
    return (
      this.database.prepare('SELECT * FROM source_statistics ORDER BY source').all() as Array<
        Record<string, string | number | null>
      >
    ).map((row) => ({
      source: String(row.source),
      bytes: Number(row.bytes),
      durationMs: Number(row.duration_ms),
      successes: Number(row.successes),
      failures: Number(row.failures),
      corruptPieces: Number(row.corrupt_pieces),
      throughput:
        Number(row.duration_ms) > 0 ? (Number(row.bytes) / Number(row.duration_ms)) * 1000 : 0,
      lastSuccessAt: row.last_success_at === null ? undefined : String(row.last_success_at),
      lastFailureAt: row.last_failure_at === null ? undefined : String(row.last_failure_at),
    }))
  }

  close(): void {
    this.database.close()
  }

  private transaction(body: () => void): void {
    this.database.exec('BEGIN IMMEDIATE')
    try {
      body()
      this.database.exec('COMMIT')
    } catch (error) {
      this.database.exec('ROLLBACK')
      throw error
    }
  }
}
