import { createHash, randomBytes, randomUUID, timingSafeEqual } from 'node:crypto'
import { createServer, type RequestListener } from 'node:http'
import type { AddressInfo } from 'node:net'
import { createLogger } from '@llmesh/core'
import {
  createCredentialSchema,
  heartbeatSchema,
  hostsQuerySchema,
  listNodesQuerySchema,
  type NetworkModel,
  type NodeRecord,
  type NodeState,
  nodeStates,
  openApiDocument,
  registerNodeSchema,
  usageReportSchema,
} from '@llmesh/registry-client'
import { Counter, Gauge, Histogram, Registry as MetricsRegistry } from 'prom-client'
import type { z } from 'zod'
import { RegistryDatabase, type StoredCredential, type StoredNode } from './database.js'
import { type Exchange, Reply, Router } from './http.js'
import { renderStatusPage } from './status-page.js'

const log = createLogger('registry:server')
const NODES_OPEN = Buffer.from('{"nodes":[')
const NODES_CLOSE = Buffer.from(']}')

export interface RegistryServerOptions {
  /** SQLite file, or `:memory:`. Default `:memory:`. */
  database?: string
  /** Creates credentials; required for anything but public reads. */
  adminToken?: string
  /** Let anyone read nodes, hosts, models and the status page. Default false. */
  publicReads?: boolean
  /** The interval nodes are told to heartbeat at. Default 10 000 ms. */
  heartbeatIntervalMs?: number
  /** Missed heartbeats before a node is not-ready. Default 3. */
  missedHeartbeats?: number
  /** Time without a heartbeat before a node is removed. Default 5 minutes. */
  removeAfterMs?: number
  /** Write requests per second per credential, with a burst of twice that. Default 10. */
  writesPerSecond?: number
  /** Largest accepted request body. Default 64 KiB. */
  bodyLimitBytes?: number
  /** Seconds between status page refreshes. Default 5. */
  statusRefreshSeconds?: number
  /** The clock, replaceable so that tests move time instead of waiting. */
  clock?: () => number
}

export interface Registry {
  /** The `node:http` request listener: embed the registry in any Node HTTP server. */
  readonly listener: RequestListener
  /** Removes nodes silent for longer than `removeAfterMs`; runs on a timer once listening. */
  sweep(): number
  listen(options?: {
    port?: number
    host?: string
  }): Promise<{ url: string; close(): Promise<void> }>
  close(): void
}

type Role = 'admin' | 'node' | 'reader' | 'public'
interface Caller {
  role: Role
  credentialId: string
  nodeId: string | undefined
}

export function createRegistry(options: RegistryServerOptions = {}): Registry {
  const clock = options.clock ?? Date.now
  const heartbeatIntervalMs = options.heartbeatIntervalMs ?? 10_000
  const notReadyAfterMs = heartbeatIntervalMs * (options.missedHeartbeats ?? 3)
  const removeAfterMs = options.removeAfterMs ?? 5 * 60_000
  const writesPerSecond = options.writesPerSecond ?? 10
  const database = new RegistryDatabase(options.database ?? ':memory:')
  const adminHash = options.adminToken === undefined ? undefined : hashToken(options.adminToken)

  // Nodes live in memory for fast reads and in SQLite for restarts; every write goes to both.
  const nodes = new Map<string, StoredNode>(
    database.loadNodes().map((node) => [node.registration.nodeId, node]),
  )
  const credentialCache = new Map<string, StoredCredential | null>()

  // What reads need, kept ready: each node's JSON as bytes (so a lookup of hundreds of hosts only
  // writes prepared buffers, and allocates no large string or buffer: those made the garbage
  // collector pause every second under load), and which nodes host which model id and digest (so
  // it never scans them all).
  interface NodeView {
    /** The registration as JSON, without its closing brace, then `,"state":"`. */
    head: Buffer
    /** `","registeredAt":...,"lastHeartbeatAt":...,"load":...}`: rebuilt on every heartbeat. */
    tail: Buffer
    /** `,` and the whole record in the state it was last read in; dropped on every heartbeat. */
    record?: { state: NodeState; bytes: Buffer }
  }
  const COMMA = Buffer.from(',')
  const STATE_BYTES = new Map(nodeStates.map((state) => [state, Buffer.from(state)]))
  const tailOf = (node: StoredNode, loadJson: string) =>
    Buffer.from(
      `","registeredAt":${JSON.stringify(new Date(node.registeredAt).toISOString())},"lastHeartbeatAt":${
        node.lastHeartbeatAt === undefined
          ? 'null'
          : JSON.stringify(new Date(node.lastHeartbeatAt).toISOString())
      },"load":${loadJson}}`,
    )
  /** The node's record as `,{...}`, built at most once per heartbeat or change of state. */
  const recordBytes = (view: NodeView, state: NodeState) => {
    if (view.record?.state !== state)
      view.record = {
        state,
        bytes: Buffer.concat([COMMA, view.head, STATE_BYTES.get(state)!, view.tail]),
      }
    return view.record.bytes
  }
  // Host lookups are answered from a short-lived cache: within its second, loads may be a second
  // old and a node that just went silent may still be listed; a registration, drain or removal
  // clears it at once. Routers count their own in-flight requests anyway (heartbeats are older).
  const LOOKUP_CACHE_MS = 1_000
  const lookupCache = new Map<string, { at: number; json: readonly Buffer[] }>()
  const views = new Map<string, NodeView>()
  const byModel = new Map<string, Set<string>>()
  const byDigest = new Map<string, Set<string>>()
  const index = (node: StoredNode) => {
    lookupCache.clear()
    const nodeId = node.registration.nodeId
    views.set(nodeId, {
      head: Buffer.from(`${JSON.stringify(node.registration).slice(0, -1)},"state":"`),
      tail: tailOf(node, node.load === undefined ? 'null' : JSON.stringify(node.load)),
    })
    for (const model of node.registration.models) {
      for (const [map, key] of [
        [byModel, model.id],
        [byDigest, model.digest],
      ] as const) {
        const set = map.get(key) ?? new Set()
        set.add(nodeId)
        map.set(key, set)
      }
    }
  }
  const unindex = (node: StoredNode) => {
    lookupCache.clear()
    const nodeId = node.registration.nodeId
    views.delete(nodeId)
    for (const model of node.registration.models) {
      byModel.get(model.id)?.delete(nodeId)
      byDigest.get(model.digest)?.delete(nodeId)
    }
  }
  for (const node of nodes.values()) index(node)

  // Heartbeats reach SQLite in small batches: a crash loses at most the last tenth of a second
  // of them, which the next heartbeats replace anyway, and no batch stalls the event loop.
  const pendingHeartbeats = new Map<string, { nodeId: string; at: number; loadJson: string }>()
  const flushHeartbeats = () => {
    if (pendingHeartbeats.size === 0) return
    database.heartbeats([...pendingHeartbeats.values()])
    pendingHeartbeats.clear()
  }
  const flusher = setInterval(flushHeartbeats, 100)
  flusher.unref()
  const buckets = new Map<string, { tokens: number; at: number }>()

  const metrics = new MetricsRegistry()
  const requestDuration = new Histogram({
    name: 'llmesh_registry_request_duration_seconds',
    help: 'Request latency by route',
    labelNames: ['route', 'status'],
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5],
    registers: [metrics],
  })
  const heartbeats = new Counter({
    name: 'llmesh_registry_heartbeats_total',
    help: 'Heartbeats accepted',
    registers: [metrics],
  })
  new Gauge({
    name: 'llmesh_registry_nodes',
    help: 'Nodes by state',
    labelNames: ['state'],
    registers: [metrics],
    collect() {
      const counts: Record<NodeState, number> = {
        joining: 0,
        ready: 0,
        draining: 0,
        'not-ready': 0,
      }
      const now = clock()
      for (const node of nodes.values()) counts[stateOf(node, now)]++
      for (const [state, value] of Object.entries(counts)) this.set({ state }, value)
    },
  })

  function stateOf(node: StoredNode, now: number): NodeState {
    if (node.draining) return 'draining'
    if (node.lastHeartbeatAt === undefined)
      return now - node.registeredAt <= notReadyAfterMs ? 'joining' : 'not-ready'
    return now - node.lastHeartbeatAt <= notReadyAfterMs ? 'ready' : 'not-ready'
  }

  function recordOf(node: StoredNode, now: number): NodeRecord {
    return {
      ...node.registration,
      state: stateOf(node, now),
      registeredAt: new Date(node.registeredAt).toISOString(),
      lastHeartbeatAt:
        node.lastHeartbeatAt === undefined ? null : new Date(node.lastHeartbeatAt).toISOString(),
      load: node.load ?? null,
    }
  }

  function sweep(): number {
    const now = clock()
    let removed = 0
    for (const [nodeId, node] of nodes) {
      if (now - (node.lastHeartbeatAt ?? node.registeredAt) > removeAfterMs) {
        nodes.delete(nodeId)
        unindex(node)
        pendingHeartbeats.delete(nodeId)
        database.deleteNode(nodeId)
        removed++
      }
    }
    if (removed > 0) log('removed %d silent nodes', removed)
    return removed
  }

  /** The nodes a query selects: through the model or digest index when it names one. */
  function* candidates(query: z.output<typeof listNodesQuerySchema>): Iterable<StoredNode> {
    const ids =
      query.model !== undefined
        ? byModel.get(query.model)
        : query.digest !== undefined
          ? byDigest.get(query.digest)
          : undefined
    if (ids === undefined && (query.model !== undefined || query.digest !== undefined)) return
    if (ids === undefined) {
      yield* nodes.values()
      return
    }
    for (const nodeId of ids) {
      const node = nodes.get(nodeId)
      if (node !== undefined) yield node
    }
  }

  function selects(
    query: z.output<typeof listNodesQuerySchema>,
    node: StoredNode,
    now: number,
  ): boolean {
    if (now - (node.lastHeartbeatAt ?? node.registeredAt) > removeAfterMs) return false
    if (query.state !== undefined && stateOf(node, now) !== query.state) return false
    if (query.model === undefined && query.digest === undefined && query.specialty === undefined)
      return true
    return node.registration.models.some(
      (model) =>
        (query.model === undefined || model.id === query.model) &&
        (query.digest === undefined || model.digest === query.digest) &&
        (query.specialty === undefined || model.specialties.includes(query.specialty)),
    )
  }

  function cachedNodesJson(
    query: z.output<typeof listNodesQuerySchema>,
    now: number,
  ): readonly Buffer[] {
    const key = JSON.stringify(query)
    const cached = lookupCache.get(key)
    if (cached !== undefined && now - cached.at < LOOKUP_CACHE_MS && now >= cached.at)
      return cached.json
    // Joined once, sent as the same bytes to every reader within the second.
    const json = nodesJson(query, now)
    if (lookupCache.size > 10_000) lookupCache.clear()
    lookupCache.set(key, { at: now, json })
    return json
  }

  /** `{"nodes": [...]}` for a query, as the prepared pieces of each node's JSON. */
  function nodesJson(query: z.output<typeof listNodesQuerySchema>, now: number): Buffer[] {
    const pieces: Buffer[] = [NODES_OPEN]
    for (const node of candidates(query)) {
      if (!selects(query, node, now)) continue
      const view = views.get(node.registration.nodeId)!
      const bytes = recordBytes(view, stateOf(node, now))
      // The first record goes without its comma.
      pieces.push(pieces.length === 1 ? bytes.subarray(1) : bytes)
    }
    pieces.push(NODES_CLOSE)
    return pieces
  }

  function matching(query: z.output<typeof listNodesQuerySchema>, now: number): NodeRecord[] {
    const result: NodeRecord[] = []
    for (const node of candidates(query))
      if (selects(query, node, now)) result.push(recordOf(node, now))
    return result
  }

  const bodyLimitBytes = options.bodyLimitBytes ?? 64 * 1024
  const router = new Router({
    bodyLimitBytes,
    onTooLarge: () =>
      problem(
        413,
        'LLMESH_BODY_TOO_LARGE',
        `The request body is larger than ${bodyLimitBytes} bytes`,
      ),
    onNotFound: (method, path) => problem(404, 'LLMESH_NOT_FOUND', `No route ${method} ${path}`),
    onError: (error, method, path) => {
      log.error('%s %s failed: %s', method, path, (error as Error).message)
      return problem(500, 'LLMESH_REGISTRY_INTERNAL', 'The registry failed to handle this request')
    },
    onDone: (route, status, seconds) =>
      requestDuration.observe({ route, status: String(status) }, seconds),
  })

  /** Who is calling: from the bearer token, or public when reads are public and no token came. */
  function caller(context: Exchange): Caller | undefined {
    const header = context.header('authorization')
    if (header === undefined)
      return options.publicReads
        ? { role: 'public', credentialId: 'public', nodeId: undefined }
        : undefined
    const token = /^Bearer (.+)$/.exec(header)?.[1]
    if (token === undefined) return undefined
    const hash = hashToken(token)
    if (adminHash !== undefined && timingSafeEqual(Buffer.from(hash), Buffer.from(adminHash)))
      return { role: 'admin', credentialId: 'admin', nodeId: undefined }
    let credential = credentialCache.get(hash)
    if (credential === undefined) {
      credential = database.credentialByHash(hash) ?? null
      credentialCache.set(hash, credential)
    }
    if (credential === null) return undefined
    return { role: credential.role, credentialId: credential.id, nodeId: credential.nodeId }
  }

  /** Checks the caller may do `need`; answers 401/403/429 itself and returns undefined if not. */
  function authorize(context: Exchange, need: 'read' | 'admin' | { node: string }): Caller | Reply {
    const who = caller(context)
    if (who === undefined)
      return problem(
        401,
        'LLMESH_UNAUTHORIZED',
        context.header('authorization')
          ? 'Unknown credential'
          : 'This registry needs a bearer token (Authorization: Bearer <token>)',
      )
    if (need === 'read') return who
    if (need === 'admin')
      return who.role === 'admin'
        ? who
        : problem(403, 'LLMESH_FORBIDDEN', 'Only the admin token may do this')
    if (who.role !== 'admin' && !(who.role === 'node' && who.nodeId === need.node))
      return problem(
        403,
        'LLMESH_FORBIDDEN',
        who.role === 'node'
          ? `This credential may write node ${who.nodeId} only, not ${need.node}`
          : `A ${who.role} credential may not write nodes`,
      )
    // Writes are rate-limited per credential (token bucket, burst of two seconds' worth).
    const now = clock()
    const bucket = buckets.get(who.credentialId) ?? { tokens: writesPerSecond * 2, at: now }
    bucket.tokens = Math.min(
      writesPerSecond * 2,
      bucket.tokens + ((now - bucket.at) / 1000) * writesPerSecond,
    )
    bucket.at = now
    buckets.set(who.credentialId, bucket)
    if (bucket.tokens < 1) {
      return problem(
        429,
        'LLMESH_RATE_LIMITED',
        `More than ${writesPerSecond} writes per second from this credential`,
        undefined,
        { 'retry-after': String(Math.ceil((1 - bucket.tokens) / writesPerSecond)) },
      )
    }
    bucket.tokens -= 1
    return who
  }

  async function body<Schema extends z.ZodType>(
    context: Exchange,
    schema: Schema,
  ): Promise<z.output<Schema> | Reply> {
    let json: unknown
    try {
      json = context.json()
    } catch {
      return problem(400, 'LLMESH_INVALID_REQUEST', 'The body is not valid JSON')
    }
    return validated(schema, json, 'body')
  }

  function validated<Schema extends z.ZodType>(
    schema: Schema,
    value: unknown,
    where: string,
  ): z.output<Schema> | Reply {
    const result = schema.safeParse(value)
    if (result.success) return result.data
    const [issue] = result.error.issues
    const field = issue === undefined ? '' : issue.path.map(String).join('.')
    return problem(
      400,
      'LLMESH_INVALID_REQUEST',
      `${where}${field === '' ? '' : `.${field}`}: ${issue?.message ?? 'invalid'}`,
      field === '' ? undefined : field,
    )
  }

  router.get('/', (context) => {
    const who = caller(context)
    if (who === undefined)
      return problem(
        401,
        'LLMESH_UNAUTHORIZED',
        'This registry needs a bearer token; enable public reads for the status page',
      )
    const now = clock()
    return new Reply(
      200,
      renderStatusPage({
        nodes: matching({}, now),
        models: networkModels(now),
        refreshSeconds: options.statusRefreshSeconds ?? 5,
        now,
      }),
      { 'content-type': 'text/html; charset=utf-8' },
    )
  })
  router.get('/health', () => Reply.json({ status: 'ok' as const, nodes: nodes.size }))
  router.get(
    '/metrics',
    async () => new Reply(200, await metrics.metrics(), { 'content-type': metrics.contentType }),
  )
  router.get('/v1/openapi.json', () => Reply.json(openApiDocument()))

  router.post('/v1/nodes', async (context) => {
    const registration = await body(context, registerNodeSchema)
    if (registration instanceof Reply) return registration
    const who = authorize(context, { node: registration.nodeId })
    if (who instanceof Reply) return who
    const now = clock()
    const node: StoredNode = {
      registration,
      registeredAt: now,
      lastHeartbeatAt: undefined,
      load: undefined,
      draining: false,
    }
    database.upsertNode(registration, now)
    const previous = nodes.get(registration.nodeId)
    if (previous !== undefined) unindex(previous)
    pendingHeartbeats.delete(registration.nodeId)
    nodes.set(registration.nodeId, node)
    index(node)
    log('registered %s at %s', registration.nodeId, registration.endpoint)
    return Reply.json(recordOf(node, now), 200)
  })

  router.post('/v1/nodes/:nodeId/heartbeat', async (context) => {
    const nodeId = context.param('nodeId')
    const who = authorize(context, { node: nodeId })
    if (who instanceof Reply) return who
    const load = await body(context, heartbeatSchema)
    if (load instanceof Reply) return load
    const node = nodes.get(nodeId)
    if (node === undefined) return unknownNode(nodeId, ' (it may have expired): register again')
    const now = clock()
    node.lastHeartbeatAt = now
    node.load = load
    const loadJson = JSON.stringify(load)
    const view = views.get(nodeId)!
    view.tail = tailOf(node, loadJson)
    view.record = undefined
    pendingHeartbeats.set(nodeId, { nodeId, at: now, loadJson })
    heartbeats.inc()
    return Reply.json({
      nodeId,
      state: stateOf(node, now),
      lastHeartbeatAt: new Date(now).toISOString(),
    })
  })

  router.post('/v1/nodes/:nodeId/drain', (context) => {
    const nodeId = context.param('nodeId')
    const who = authorize(context, { node: nodeId })
    if (who instanceof Reply) return who
    const node = nodes.get(nodeId)
    if (node === undefined) return unknownNode(nodeId)
    node.draining = true
    lookupCache.clear()
    database.drain(nodeId)
    return Reply.json(recordOf(node, clock()))
  })

  router.delete('/v1/nodes/:nodeId', (context) => {
    const nodeId = context.param('nodeId')
    const who = authorize(context, { node: nodeId })
    if (who instanceof Reply) return who
    const node = nodes.get(nodeId)
    if (node === undefined) return unknownNode(nodeId)
    nodes.delete(nodeId)
    unindex(node)
    pendingHeartbeats.delete(nodeId)
    database.deleteNode(nodeId)
    return new Reply(204, '', {})
  })

  router.get('/v1/nodes', (context) => {
    const who = authorize(context, 'read')
    if (who instanceof Reply) return who
    const query = validated(listNodesQuerySchema, context.query(), 'query')
    if (query instanceof Reply) return query
    return new Reply(200, nodesJson(query, clock()))
  })

  router.get('/v1/nodes/:nodeId', (context) => {
    const who = authorize(context, 'read')
    if (who instanceof Reply) return who
    const node = nodes.get(context.param('nodeId'))
    if (node === undefined) return unknownNode(context.param('nodeId'))
    return Reply.json(recordOf(node, clock()))
  })

  router.get('/v1/hosts', (context) => {
    const who = authorize(context, 'read')
    if (who instanceof Reply) return who
    const query = validated(hostsQuerySchema, context.query(), 'query')
    if (query instanceof Reply) return query
    return new Reply(200, cachedNodesJson({ ...query, state: query.state ?? 'ready' }, clock()))
  })

  function networkModels(now: number): NetworkModel[] {
    const models = new Map<string, NetworkModel>()
    for (const node of nodes.values()) {
      if (now - (node.lastHeartbeatAt ?? node.registeredAt) > removeAfterMs) continue
      const ready = stateOf(node, now) === 'ready'
      for (const model of node.registration.models) {
        const key = `${model.id}@${model.version}#${model.digest}`
        const entry = models.get(key) ?? {
          id: model.id,
          version: model.version,
          digest: model.digest,
          hosts: 0,
          readyHosts: 0,
        }
        entry.hosts++
        if (ready) entry.readyHosts++
        models.set(key, entry)
      }
    }
    return [...models.values()].sort(
      (a, b) => a.id.localeCompare(b.id) || a.version.localeCompare(b.version),
    )
  }

  router.get('/v1/models', (context) => {
    const who = authorize(context, 'read')
    if (who instanceof Reply) return who
    return Reply.json({ models: networkModels(clock()) })
  })

  router.post('/v1/nodes/:nodeId/usage', async (context) => {
    const nodeId = context.param('nodeId')
    const who = authorize(context, { node: nodeId })
    if (who instanceof Reply) return who
    const report = await body(context, usageReportSchema)
    if (report instanceof Reply) return report
    if (!nodes.has(nodeId)) return unknownNode(nodeId)
    const now = clock()
    database.insertUsage(
      {
        nodeId,
        digest: report.digest,
        requests: report.requests,
        tokensGenerated: report.tokensGenerated,
        periodStart: report.periodStart,
        periodEnd: report.periodEnd,
      },
      now,
    )
    return Reply.json({
      nodeId,
      digest: report.digest ?? null,
      requests: report.requests,
      tokensGenerated: report.tokensGenerated,
      reportedAt: new Date(now).toISOString(),
    })
  })

  router.get('/v1/usage', (context) => {
    const who = authorize(context, 'read')
    if (who instanceof Reply) return who
    return Reply.json({ entries: database.usage() })
  })

  router.post('/v1/credentials', async (context) => {
    const who = authorize(context, 'admin')
    if (who instanceof Reply) return who
    const input = await body(context, createCredentialSchema)
    if (input instanceof Reply) return input
    const token = `llmesh_${randomBytes(32).toString('base64url')}`
    const credential: StoredCredential = {
      id: randomUUID(),
      name: input.name,
      role: input.role,
      nodeId: input.nodeId,
    }
    database.insertCredential(credential, hashToken(token), clock())
    credentialCache.delete(hashToken(token))
    return Reply.json({
      id: credential.id,
      name: credential.name,
      role: credential.role,
      nodeId: credential.nodeId ?? null,
      token,
    })
  })

  let sweeper: NodeJS.Timeout | undefined
  return {
    listener: router.listener,
    sweep,
    async listen({ port = 0, host = '127.0.0.1' } = {}) {
      const server = createServer({ keepAliveTimeout: 30_000 }, router.listener)
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject)
        server.listen(port, host, () => resolve())
      })
      sweeper ??= setInterval(sweep, Math.min(heartbeatIntervalMs, 60_000))
      sweeper.unref()
      const address = server.address() as AddressInfo
      return {
        url: `http://${host}:${address.port}`,
        close: () =>
          new Promise<void>((resolve, reject) => {
            server.close((error) => (error ? reject(error) : resolve()))
            server.closeAllConnections()
          }),
      }
    },
    async close() {
      clearInterval(sweeper)
      clearInterval(flusher)
      flushHeartbeats()
      await database.close()
    },
  }
}

/** Credentials are random 256-bit tokens, so a plain SHA-256 is a safe stored form (no salt needed). */
function hashToken(token: string): string {
  return createHash('sha256').update(token).digest('hex')
}

function unknownNode(nodeId: string, hint = ''): Reply {
  return problem(404, 'LLMESH_NODE_UNKNOWN', `Node ${nodeId} is not registered${hint}`)
}

function problem(
  status: 400 | 401 | 403 | 404 | 413 | 429 | 500,
  code: string,
  message: string,
  field?: string,
  headers: Record<string, string> = {},
): Reply {
  const body = { error: { code, message, ...(field === undefined ? {} : { field }) } }
  return new Reply(status, JSON.stringify(body), { 'content-type': 'application/json', ...headers })
}
