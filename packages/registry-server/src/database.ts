import { DatabaseSync } from 'node:sqlite'
import { Worker } from 'node:worker_threads'
import type {
  NodeRegistration,
  ParsedHeartbeat,
  ParsedNodeRegistration,
  UsageEntry,
} from '@llmesh/registry-client'

/** A node as stored: its registration, and the membership facts its state is computed from. */
export interface StoredNode {
  registration: ParsedNodeRegistration
  registeredAt: number
  lastHeartbeatAt: number | undefined
  load: ParsedHeartbeat | undefined
  draining: boolean
}

export interface StoredCredential {
  id: string
  name: string
  role: 'node' | 'reader'
  nodeId: string | undefined
}

const writerSource = `
const { parentPort, workerData } = require('node:worker_threads')
const { DatabaseSync } = require('node:sqlite')
const database = new DatabaseSync(workerData.path, { timeout: 5000 })
database.exec('PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;')
const update = database.prepare('UPDATE nodes SET last_heartbeat_at = ?, load = ? WHERE id = ?')
parentPort.on('message', (message) => {
  if (message === 'settle') return parentPort.postMessage('settled')
  database.exec('BEGIN')
  for (const entry of message) update.run(entry.at, entry.loadJson, entry.nodeId)
  database.exec('COMMIT')
})
`

/** Append-only schema migrations; `PRAGMA user_version` counts those applied. */
const migrations = [
  `CREATE TABLE nodes (
     id TEXT PRIMARY KEY,
     registration TEXT NOT NULL,
     registered_at INTEGER NOT NULL,
     last_heartbeat_at INTEGER,
     load TEXT,
     draining INTEGER NOT NULL DEFAULT 0
   ) STRICT;
   CREATE TABLE credentials (
     id TEXT PRIMARY KEY,
     name TEXT NOT NULL,
     role TEXT NOT NULL,
     node_id TEXT,
     token_hash TEXT NOT NULL UNIQUE,
     created_at INTEGER NOT NULL
   ) STRICT;
   CREATE TABLE usage (
     id INTEGER PRIMARY KEY,
     node_id TEXT NOT NULL,
     digest TEXT,
     requests INTEGER NOT NULL,
     tokens_generated INTEGER NOT NULL,
     period_start TEXT,
     period_end TEXT,
     reported_at INTEGER NOT NULL
   ) STRICT;
   CREATE INDEX usage_by_node ON usage (node_id);`,
]

/**
 * The registry's storage on `node:sqlite` (a file, or `:memory:`). Every statement is prepared
 * once and parameterised. WAL mode with `synchronous = NORMAL`: a crash loses at most the last
 * heartbeats, never the database.
 */
export class RegistryDatabase {
  private readonly database: DatabaseSync
  private readonly statements
  private readonly writer: Worker | undefined

  constructor(path: string) {
    this.database = new DatabaseSync(path, { timeout: 5_000 })
    // Checkpoints run on the writer's connection, off the event loop (see `heartbeats`).
    this.database.exec(
      `PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;${path === ':memory:' ? '' : ' PRAGMA wal_autocheckpoint = 0;'}`,
    )
    const { user_version: version } = this.database.prepare('PRAGMA user_version').get() as {
      user_version: number
    }
    for (let index = version; index < migrations.length; index++) {
      this.database.exec('BEGIN IMMEDIATE')
      this.database.exec(migrations[index]!)
      this.database.exec(`PRAGMA user_version = ${index + 1}`)
      this.database.exec('COMMIT')
    }
    this.writer =
      path === ':memory:'
        ? undefined
        : new Worker(writerSource, { eval: true, workerData: { path } })
    this.writer?.unref()
    const prepare = (sql: string) => this.database.prepare(sql)
    this.statements = {
      upsertNode: prepare(
        `INSERT INTO nodes (id, registration, registered_at, last_heartbeat_at, load, draining) VALUES (?, ?, ?, NULL, NULL, 0)
         ON CONFLICT (id) DO UPDATE SET registration = excluded.registration, registered_at = excluded.registered_at, last_heartbeat_at = NULL, load = NULL, draining = 0`,
      ),
      heartbeat: prepare('UPDATE nodes SET last_heartbeat_at = ?, load = ? WHERE id = ?'),
      drain: prepare('UPDATE nodes SET draining = 1 WHERE id = ?'),
      deleteNode: prepare('DELETE FROM nodes WHERE id = ?'),
      allNodes: prepare('SELECT * FROM nodes'),
      insertCredential: prepare(
        'INSERT INTO credentials (id, name, role, node_id, token_hash, created_at) VALUES (?, ?, ?, ?, ?, ?)',
      ),
      credentialByHash: prepare(
        'SELECT id, name, role, node_id FROM credentials WHERE token_hash = ?',
      ),
      insertUsage: prepare(
        'INSERT INTO usage (node_id, digest, requests, tokens_generated, period_start, period_end, reported_at) VALUES (?, ?, ?, ?, ?, ?, ?)',
      ),
      allUsage: prepare(
        'SELECT node_id, digest, requests, tokens_generated, reported_at FROM usage ORDER BY id',
      ),
    }
  }

  upsertNode(registration: NodeRegistration, registeredAt: number): void {
    this.statements.upsertNode.run(registration.nodeId, JSON.stringify(registration), registeredAt)
  }

  /**
   * Writes a batch of heartbeats in one transaction, on a worker thread with its own connection:
   * node:sqlite is synchronous, and a WAL checkpoint (with its fsync) would otherwise stall every
   * request for tens of milliseconds. In-memory databases have no second connection, so they
   * write here.
   */
  heartbeats(entries: Array<{ nodeId: string; at: number; loadJson: string }>): void {
    if (this.writer !== undefined) {
      this.writer.postMessage(entries)
      return
    }
    this.database.exec('BEGIN')
    try {
      for (const entry of entries)
        this.statements.heartbeat.run(entry.at, entry.loadJson, entry.nodeId)
      this.database.exec('COMMIT')
    } catch (error) {
      this.database.exec('ROLLBACK')
      throw error
    }
  }

  /** Waits until every heartbeat handed to the writer is on disk. */
  async settle(): Promise<void> {
    const writer = this.writer
    if (writer === undefined) return
    await new Promise<void>((resolve) => {
      writer.once('message', () => resolve())
      writer.postMessage('settle')
    })
  }

  drain(nodeId: string): void {
    this.statements.drain.run(nodeId)
  }

  deleteNode(nodeId: string): void {
    this.statements.deleteNode.run(nodeId)
  }

  loadNodes(): StoredNode[] {
    return (this.statements.allNodes.all() as Array<Record<string, string | number | null>>).map(
      (row) => ({
        registration: JSON.parse(String(row.registration)) as ParsedNodeRegistration,
        registeredAt: Number(row.registered_at),
        lastHeartbeatAt: row.last_heartbeat_at === null ? undefined : Number(row.last_heartbeat_at),
        load: row.load === null ? undefined : (JSON.parse(String(row.load)) as ParsedHeartbeat),
        draining: row.draining === 1,
      }),
    )
  }

  insertCredential(credential: StoredCredential, tokenHash: string, createdAt: number): void {
    this.statements.insertCredential.run(
      credential.id,
      credential.name,
      credential.role,
      credential.nodeId ?? null,
      tokenHash,
      createdAt,
    )
  }

  credentialByHash(tokenHash: string): StoredCredential | undefined {
    const row = this.statements.credentialByHash.get(tokenHash) as
      | Record<string, string | null>
      | undefined
    if (row === undefined) return undefined
    return {
      id: String(row.id),
      name: String(row.name),
      role: row.role as StoredCredential['role'],
      nodeId: row.node_id ?? undefined,
    }
  }

  insertUsage(
    entry: {
      nodeId: string
      digest: string | undefined
      requests: number
      tokensGenerated: number
      periodStart: string | undefined
      periodEnd: string | undefined
    },
    at: number,
  ): void {
    this.statements.insertUsage.run(
      entry.nodeId,
      entry.digest ?? null,
      entry.requests,
      entry.tokensGenerated,
      entry.periodStart ?? null,
      entry.periodEnd ?? null,
      at,
    )
  }

  usage(): UsageEntry[] {
    return (this.statements.allUsage.all() as Array<Record<string, string | number | null>>).map(
      (row) => ({
        nodeId: String(row.node_id),
        digest: row.digest === null ? null : String(row.digest),
        requests: Number(row.requests),
        tokensGenerated: Number(row.tokens_generated),
        reportedAt: new Date(Number(row.reported_at)).toISOString(),
      }),
    )
  }

  async close(): Promise<void> {
    await this.settle()
    await this.writer?.terminate()
    this.database.close()
  }
}
