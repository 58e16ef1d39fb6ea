import {
  type AbortOptions,
  createLogger,
  hasMarker,
  isAbortError,
  LlmeshError,
  retry,
  sleep,
  timeoutSignal,
} from '@llmesh/core'
import { type Dispatcher, request } from 'undici'
import type { z } from 'zod'
import {
  type CreateCredential,
  type CreatedCredential,
  endpoints,
  errorBodySchema,
  type Heartbeat,
  type HeartbeatAck,
  type ListNodesQuery,
  type NetworkModel,
  type NodeRecord,
  type NodeRegistration,
  type UsageEntry,
  type UsageReport,
} from './contract.js'

const log = createLogger('registry:client')
const registryMarker = Symbol.for('llmesh.error.RegistryError')

/** The registry refused a request, or no registry answered. */
export class RegistryError extends LlmeshError {
  protected readonly [registryMarker] = true
  readonly statusCode: number | undefined
  /** The field the registry named as invalid. */
  readonly field: string | undefined
  readonly registry: string | undefined

  constructor(options: {
    code: string
    message: string
    statusCode?: number
    field?: string
    registry?: string
    isRetryable?: boolean
    cause?: unknown
  }) {
    super({
      code: options.code,
      message: options.message,
      cause: options.cause,
      isRetryable: options.isRetryable ?? false,
    })
    this.name = 'RegistryError'
    this.statusCode = options.statusCode
    this.field = options.field
    this.registry = options.registry
  }

  static override isInstance(error: unknown): error is RegistryError {
    return hasMarker(error, registryMarker)
  }
}

export interface RegistryClientOptions {
  /** One or more registry base URLs; the client fails over between them. */
  urls: string[]
  /** A bearer token: a node credential, a reader credential, or the admin token. */
  token?: string
  dispatcher?: Dispatcher
  /** Per request. Default 5 000 ms. */
  timeoutMs?: number
  /** Rounds over all URLs after the first, with backoff, for retryable failures. Default 2. */
  retries?: number
}

export interface RegistryClient {
  register(registration: NodeRegistration, options?: AbortOptions): Promise<NodeRecord>
  heartbeat(nodeId: string, heartbeat: Heartbeat, options?: AbortOptions): Promise<HeartbeatAck>
  drain(nodeId: string, options?: AbortOptions): Promise<NodeRecord>
  deregister(nodeId: string, options?: AbortOptions): Promise<void>
  listNodes(query?: ListNodesQuery, options?: AbortOptions): Promise<NodeRecord[]>
  getNode(nodeId: string, options?: AbortOptions): Promise<NodeRecord>
  /** Nodes that host a model (by id or digest), ready ones by default. */
  hosts(query: ListNodesQuery, options?: AbortOptions): Promise<NodeRecord[]>
  models(options?: AbortOptions): Promise<NetworkModel[]>
  reportUsage(nodeId: string, report: UsageReport, options?: AbortOptions): Promise<UsageEntry>
  listUsage(options?: AbortOptions): Promise<UsageEntry[]>
  createCredential(input: CreateCredential, options?: AbortOptions): Promise<CreatedCredential>
  health(options?: AbortOptions): Promise<{ status: 'ok'; nodes: number }>
  /** The registry URL that answered last (failover starts there). */
  readonly currentUrl: string
}

export function createRegistryClient(options: RegistryClientOptions): RegistryClient {
  if (options.urls.length === 0)
    throw new TypeError('createRegistryClient needs at least one registry URL')
  const urls = options.urls.map((url) => url.replace(/\/+$/, ''))
  let preferred = 0

  async function call<Schema extends z.ZodType | undefined>(
    method: string,
    path: string,
    schema: Schema,
    body: unknown,
    { signal }: AbortOptions = {},
  ): Promise<Schema extends z.ZodType ? z.output<Schema> : undefined> {
    return retry(
      async () => {
        let lastError: unknown
        // One round: every registry once, starting with the one that answered last.
        for (let offset = 0; offset < urls.length; offset++) {
          const index = (preferred + offset) % urls.length
          const base = urls[index]!
          try {
            const result = await once(base, method, path, schema, body, signal)
            preferred = index
            return result
          } catch (error) {
            if (isAbortError(error) && signal?.aborted) throw error
            if (RegistryError.isInstance(error) && !error.isRetryable) throw error
            log('registry %s failed: %s', base, (error as Error).message)
            lastError = error
          }
        }
        throw lastError
      },
      { retries: options.retries ?? 2, minDelay: 100, maxDelay: 2_000, signal },
    ) as Promise<Schema extends z.ZodType ? z.output<Schema> : undefined>
  }

  async function once(
    base: string,
    method: string,
    path: string,
    schema: z.ZodType | undefined,
    body: unknown,
    signal: AbortSignal | undefined,
  ): Promise<unknown> {
    const url = `${base}${path}`
    let response: Dispatcher.ResponseData
    try {
      response = await request(url, {
        method: method as Dispatcher.HttpMethod,
        dispatcher: options.dispatcher,
        signal: timeoutSignal(options.timeoutMs ?? 5_000, signal),
        headers: {
          accept: 'application/json',
          'user-agent': `llmesh-registry-client/${__PACKAGE_VERSION__}`,
          ...(body === undefined ? {} : { 'content-type': 'application/json' }),
          ...(options.token === undefined ? {} : { authorization: `Bearer ${options.token}` }),
        },
        body: body === undefined ? undefined : JSON.stringify(body),
      })
    } catch (error) {
      if (isAbortError(error) && signal?.aborted) throw error
      throw new RegistryError({
        code: 'LLMESH_REGISTRY_UNAVAILABLE',
        registry: base,
        isRetryable: true,
        cause: error,
        message: `Registry ${base} did not answer: ${(error as Error).message}`,
      })
    }
    const text = await response.body.text()
    if (response.statusCode >= 400) {
      const parsed = errorBodySchema.safeParse(safeJson(text))
      const retryable = response.statusCode >= 500 || response.statusCode === 429
      throw new RegistryError({
        code: parsed.success
          ? parsed.data.error.code
          : `LLMESH_REGISTRY_HTTP_${response.statusCode}`,
        message: `Registry ${base} answered ${response.statusCode} to ${method} ${path}: ${parsed.success ? parsed.data.error.message : text.slice(0, 200)}`,
        statusCode: response.statusCode,
        field: parsed.success ? parsed.data.error.field : undefined,
        registry: base,
        isRetryable: retryable,
      })
    }
    if (schema === undefined) return undefined
    const parsed = schema.safeParse(safeJson(text))
    if (!parsed.success)
      throw new RegistryError({
        code: 'LLMESH_REGISTRY_BAD_RESPONSE',
        registry: base,
        isRetryable: true,
        message: `Registry ${base} answered ${method} ${path} with a body that does not match the contract: ${parsed.error.message.slice(0, 300)}`,
      })
    return parsed.data
  }

  const node = (nodeId: string) => encodeURIComponent(nodeId)
  const query = (value: ListNodesQuery | undefined) => {
    const entries = Object.entries(value ?? {}).filter(([, entry]) => entry !== undefined) as Array<
      [string, string]
    >
    return entries.length === 0 ? '' : `?${new URLSearchParams(entries).toString()}`
  }

  return {
    get currentUrl() {
      return urls[preferred]!
    },
    register: (registration, callOptions) =>
      call('POST', '/v1/nodes', endpoints.register.response, registration, callOptions),
    heartbeat: (nodeId, heartbeat, callOptions) =>
      call(
        'POST',
        `/v1/nodes/${node(nodeId)}/heartbeat`,
        endpoints.heartbeat.response,
        heartbeat,
        callOptions,
      ),
    drain: (nodeId, callOptions) =>
      call('POST', `/v1/nodes/${node(nodeId)}/drain`, endpoints.drain.response, {}, callOptions),
    deregister: async (nodeId, callOptions) => {
      await call('DELETE', `/v1/nodes/${node(nodeId)}`, undefined, undefined, callOptions)
    },
    listNodes: async (listQuery, callOptions) =>
      (
        await call(
          'GET',
          `/v1/nodes${query(listQuery)}`,
          endpoints.listNodes.response,
          undefined,
          callOptions,
        )
      ).nodes,
    getNode: (nodeId, callOptions) =>
      call('GET', `/v1/nodes/${node(nodeId)}`, endpoints.getNode.response, undefined, callOptions),
    hosts: async (hostsQuery, callOptions) =>
      (
        await call(
          'GET',
          `/v1/hosts${query(hostsQuery)}`,
          endpoints.hosts.response,
          undefined,
          callOptions,
        )
      ).nodes,
    models: async (callOptions) =>
      (await call('GET', '/v1/models', endpoints.models.response, undefined, callOptions)).models,
    reportUsage: (nodeId, report, callOptions) =>
      call(
        'POST',
        `/v1/nodes/${node(nodeId)}/usage`,
        endpoints.reportUsage.response,
        report,
        callOptions,
      ),
    listUsage: async (callOptions) =>
      (await call('GET', '/v1/usage', endpoints.listUsage.response, undefined, callOptions))
        .entries,
    createCredential: (input, callOptions) =>
      call('POST', '/v1/credentials', endpoints.createCredential.response, input, callOptions),
    health: (callOptions) =>
      call('GET', '/health', endpoints.health.response, undefined, callOptions),
  }
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text)
  } catch {
    return undefined
  }
}

export interface HeartbeatLoop {
  /** Stops the loop; the node stays registered (call `drain`/`deregister` to leave). */
  stop(): Promise<void>
}

/**
 * Registers the node, then heartbeats every `intervalMs` with ±`jitter` spread (so a thousand
 * nodes started together do not beat in step). When the registry has forgotten the node (404,
 * after it expired or the registry lost its data), it registers again at once.
 */
export function startHeartbeat(
  client: RegistryClient,
  {
    registration,
    load,
    intervalMs = 10_000,
    jitter = 0.2,
    onError,
    random = Math.random,
  }: {
    registration: NodeRegistration
    /** The node's load now, read before each heartbeat. */
    load: () => Heartbeat | Promise<Heartbeat>
    intervalMs?: number
    jitter?: number
    onError?: (error: unknown) => void
    random?: () => number
  },
): HeartbeatLoop {
  const controller = new AbortController()
  const { signal } = controller
  const loop = (async () => {
    let registered = false
    while (!signal.aborted) {
      try {
        if (!registered) {
          await client.register(registration, { signal })
          registered = true
        }
        await client.heartbeat(registration.nodeId, await load(), { signal })
      } catch (error) {
        if (signal.aborted) return
        if (RegistryError.isInstance(error) && error.statusCode === 404) {
          registered = false
          continue
        }
        onError?.(error)
      }
      const delay = intervalMs * (1 - jitter + 2 * jitter * random())
      await sleep(delay, { signal }).catch(() => {})
    }
  })()
  return {
    async stop() {
      controller.abort()
      await loop
    },
  }
}

export interface HostCache {
  /** The last known hosts of a model (by id or digest): instant, possibly up to `refreshMs` old. */
  hosts(query: ListNodesQuery): NodeRecord[]
  /** Fetches every ready node now. */
  refresh(options?: AbortOptions): Promise<void>
  /** When the cache last refreshed, or undefined before its first success. */
  readonly updatedAt: number | undefined
  close(): void
}

/**
 * A cached view of the ready nodes for routers: `hosts()` reads memory only, and a background
 * refresh every `refreshMs` keeps it current. A failed refresh keeps the previous view.
 */
export function createHostCache(
  client: RegistryClient,
  { refreshMs = 5_000, onError }: { refreshMs?: number; onError?: (error: unknown) => void } = {},
): HostCache {
  let nodes: NodeRecord[] = []
  let updatedAt: number | undefined
  let refreshing: Promise<void> | undefined
  const refresh = (options?: AbortOptions) => {
    refreshing ??= client
      .listNodes({ state: 'ready' }, options)
      .then((fresh) => {
        nodes = fresh
        updatedAt = Date.now()
      })
      .finally(() => {
        refreshing = undefined
      })
    return refreshing
  }
  const timer = setInterval(() => {
    refresh().catch((error: unknown) => onError?.(error))
  }, refreshMs)
  timer.unref()
  return {
    hosts: ({ model, digest, specialty, state }) =>
      nodes.filter(
        (node) =>
          (state === undefined || node.state === state) &&
          node.models.some(
            (hosted) =>
              (model === undefined || hosted.id === model) &&
              (digest === undefined || hosted.digest === digest) &&
              (specialty === undefined || hosted.specialties.includes(specialty)),
          ),
      ),
    refresh,
    get updatedAt() {
      return updatedAt
    },
    close: () => clearInterval(timer),
  }
}
