/**
 * Several models in memory under a RAM and VRAM budget.
 *
 * A model loads on first use (once, however many requests ask at the same moment), stays while it
 * is used, and goes when its keep-alive time passes idle or when a model that is asked for needs
 * its memory (least recently used first). A model that is running or has requests waiting is
 * never unloaded for another; the request that cannot be fitted gets a retryable "busy" error.
 */
import { EventEmitter } from 'node:events'
import { createLogger, type Logger } from '@llmesh/core'
import type { InferenceEngine, LoadModelOptions, MemoryEstimate } from './engine.js'
import { InferenceError } from './errors.js'
import type { Generation } from './generation.js'
import { validateGguf } from './gguf-validation.js'
import type { ChatMessage, LoadedModel, SamplingOptions } from './loaded-model.js'
import { type ModelResolver, pathModelResolver } from './model-source.js'

export interface ModelPoolOptions {
  engine: InferenceEngine
  /** Turns a request's model name into a file and its settings; default: the name is a path. */
  resolve?: ModelResolver
  /** Memory the loaded models may take together; unlimited by default. */
  budget?: { ramBytes?: number; vramBytes?: number }
  /** Unload a model this long after its last request; default 5 minutes, `Infinity` to keep. */
  keepAliveMs?: number
  /** Requests decoded together per model (default 4), and requests that may wait (default 16). */
  slots?: number
  maxQueue?: number
  /** Tokens per request for every model, over the manifest's entrypoint (default: the manifest's, else up to 4096). */
  contextSize?: number
  /** GPU layers for every model, over the manifest's entrypoint (default: the manifest's, else `auto`). */
  gpuLayers?: number | 'auto' | 'max'
  logger?: Logger
}

export interface PooledModelInfo {
  name: string
  path: string
  estimate: MemoryEstimate
  loadSeconds: number
  lastUsedAt: number
  slots: number
  inFlight: number
  queued: number
}

/** A loaded model that stays loaded until `release()` (or `using`). */
export interface ModelLease extends Disposable {
  model: LoadedModel
  release(): void
}

export type UnloadReason = 'budget' | 'keep-alive' | 'requested' | 'closed'

interface Entry {
  key: string
  name: string
  path: string
  estimate: MemoryEstimate
  loading: Promise<LoadedModel>
  model: LoadedModel | undefined
  loadSeconds: number
  lastUsedAt: number
  /** Leases not yet released (each generation through the pool holds one). */
  users: number
  keepAliveTimer: NodeJS.Timeout | undefined
  releaseHold: (() => Promise<void>) | undefined
}

export class ModelPool {
  readonly events = new EventEmitter<{
    'model-loaded': [{ name: string; seconds: number; estimate: MemoryEstimate }]
    'model-unloaded': [{ name: string; reason: UnloadReason }]
  }>()
  private readonly engine: InferenceEngine
  private readonly resolveModel: ModelResolver
  private readonly budget: { ramBytes: number; vramBytes: number }
  private readonly keepAliveMs: number
  private readonly defaults: Pick<LoadModelOptions, 'slots' | 'maxQueue'>
  private readonly overrides: Pick<LoadModelOptions, 'contextSize' | 'gpuLayers'>
  private readonly log: Logger
  /** By file path: two names of one file share one load. */
  private readonly entries = new Map<string, Entry>()
  /** Request names already resolved to a file path. */
  private readonly keys = new Map<string, string>()
  private closed = false

  constructor(options: ModelPoolOptions) {
    this.engine = options.engine
    this.resolveModel = options.resolve ?? pathModelResolver
    this.budget = {
      ramBytes: options.budget?.ramBytes ?? Number.POSITIVE_INFINITY,
      vramBytes: options.budget?.vramBytes ?? Number.POSITIVE_INFINITY,
    }
    this.keepAliveMs = options.keepAliveMs ?? 5 * 60_000
    this.defaults = {
      ...(options.slots === undefined ? {} : { slots: options.slots }),
      ...(options.maxQueue === undefined ? {} : { maxQueue: options.maxQueue }),
    }
    this.overrides = {
      ...(options.contextSize === undefined ? {} : { contextSize: options.contextSize }),
      ...(options.gpuLayers === undefined ? {} : { gpuLayers: options.gpuLayers }),
    }
    this.log = options.logger ?? createLogger('inference:pool')
  }

  /** Loads the named model now (once), so that its first request does not wait for it. */
  async preload(name: string, options: { signal?: AbortSignal } = {}): Promise<void> {
    const entry = await this.entryFor(name, options.signal)
    await entry.loading
  }

  /**
   * The model, loaded if needed, kept in memory until `release()`: for callers that drive a
   * `LoadedModel` themselves. `complete` and `chat` do this for one generation.
   */
  async acquire(name: string, options: { signal?: AbortSignal } = {}): Promise<ModelLease> {
    const entry = await this.entryFor(name, options.signal)
    entry.users++
    clearTimeout(entry.keepAliveTimer)
    let model: LoadedModel
    try {
      model = await entry.loading
    } catch (error) {
      entry.users--
      throw error
    }
    entry.lastUsedAt = Date.now()
    let released = false
    const release = () => {
      if (released) return
      released = true
      entry.users--
      entry.lastUsedAt = Date.now()
      this.scheduleKeepAlive(entry)
    }
    return { model, release, [Symbol.dispose]: release }
  }

  /** Text completion on the named model (loaded on demand). */
  complete(name: string, prompt: string, options: SamplingOptions = {}): Promise<Generation> {
    return this.use(name, options.signal, (model) => model.complete(prompt, options))
  }

  /** Chat completion on the named model (loaded on demand). */
  chat(name: string, messages: ChatMessage[], options: SamplingOptions = {}): Promise<Generation> {
    return this.use(name, options.signal, (model) => model.chat(messages, options))
  }

  /** The loaded models, most recently used first. */
  loaded(): PooledModelInfo[] {
    return [...this.entries.values()]
      .filter((entry) => entry.model !== undefined)
      .sort((first, second) => second.lastUsedAt - first.lastUsedAt)
      .map((entry) => {
        const statistics = entry.model!.statistics
        return {
          name: entry.name,
          path: entry.path,
          estimate: entry.estimate,
          loadSeconds: entry.loadSeconds,
          lastUsedAt: entry.lastUsedAt,
          slots: statistics.slots,
          inFlight: statistics.inFlight,
          queued: statistics.queued,
        }
      })
  }

  /** True while some model is being loaded. */
  get loading(): boolean {
    return [...this.entries.values()].some((entry) => entry.model === undefined)
  }

  /** Unloads the named model once its running requests end. */
  async unload(name: string): Promise<void> {
    const key = this.keys.get(name)
    const entry = key === undefined ? undefined : this.entries.get(key)
    if (entry !== undefined) await this.evict(entry, 'requested')
  }

  async close(): Promise<void> {
    this.closed = true
    await Promise.all([...this.entries.values()].map((entry) => this.evict(entry, 'closed')))
  }

  private async use(
    name: string,
    signal: AbortSignal | undefined,
    start: (model: LoadedModel) => Generation,
  ): Promise<Generation> {
    const lease = await this.acquire(name, signal === undefined ? {} : { signal })
    try {
      const generation = start(lease.model)
      generation.result.then(lease.release, lease.release)
      return generation
    } catch (error) {
      lease.release()
      throw error
    }
  }

  private async entryFor(name: string, signal: AbortSignal | undefined): Promise<Entry> {
    if (this.closed)
      throw new InferenceError({
        code: 'LLMESH_INFERENCE_CLOSED',
        model: name,
        message: 'The model pool is closed.',
      })
    const known = this.keys.get(name)
    const existing = known === undefined ? undefined : this.entries.get(known)
    if (existing !== undefined) return existing

    const source = await this.resolveModel(name, { signal })
    const sameFile = this.entries.get(source.path)
    if (sameFile !== undefined) {
      this.keys.set(name, source.path)
      return sameFile
    }
    const gguf = await validateGguf(source.path)
    const loadOptions: LoadModelOptions = {
      ...this.defaults,
      name: source.name,
      ...(source.contextSize === undefined ? {} : { contextSize: source.contextSize }),
      ...(source.gpuLayers === undefined ? {} : { gpuLayers: source.gpuLayers }),
      ...this.overrides,
    }
    const estimate = await this.engine.estimateMemory(gguf, loadOptions)
    // Another request may have started the same load while this one estimated.
    const raced = this.entries.get(source.path)
    if (raced !== undefined) {
      this.keys.set(name, source.path)
      return raced
    }
    await this.makeRoom(name, estimate)
    const entry: Entry = {
      key: source.path,
      name: source.name,
      path: source.path,
      estimate,
      loading: undefined as unknown as Promise<LoadedModel>,
      model: undefined,
      loadSeconds: 0,
      lastUsedAt: Date.now(),
      users: 0,
      keepAliveTimer: undefined,
      releaseHold: undefined,
    }
    const started = performance.now()
    entry.loading = (async () => {
      const hold = await source.hold?.()
      entry.releaseHold = hold?.release
      const model = await this.engine.loadValidated(gguf, loadOptions)
      entry.model = model
      entry.loadSeconds = (performance.now() - started) / 1000
      this.events.emit('model-loaded', { name: source.name, seconds: entry.loadSeconds, estimate })
      this.scheduleKeepAlive(entry)
      return model
    })()
    entry.loading.catch(async () => {
      this.forget(entry)
      await entry.releaseHold?.()
    })
    this.entries.set(entry.key, entry)
    this.keys.set(name, entry.key)
    return entry
  }

  /** Unloads idle models, least recently used first, until `estimate` fits the budget. */
  private async makeRoom(name: string, estimate: MemoryEstimate): Promise<void> {
    if (estimate.ramBytes > this.budget.ramBytes || estimate.vramBytes > this.budget.vramBytes)
      throw new InferenceError({
        code: 'LLMESH_MODEL_TOO_LARGE',
        model: name,
        message: `${name} needs ${formatMiB(estimate.ramBytes)} of RAM and ${formatMiB(estimate.vramBytes)} of VRAM, more than the pool's budget of ${formatMiB(this.budget.ramBytes)} and ${formatMiB(this.budget.vramBytes)}.`,
      })
    const fits = () => {
      const used = this.used()
      return (
        used.ramBytes + estimate.ramBytes <= this.budget.ramBytes &&
        used.vramBytes + estimate.vramBytes <= this.budget.vramBytes
      )
    }
    const candidates = [...this.entries.values()]
      .filter((entry) => entry.model !== undefined)
      .sort((first, second) => first.lastUsedAt - second.lastUsedAt)
    for (const entry of candidates) {
      if (fits()) return
      if (entry.users === 0 && entry.model!.idle) await this.evict(entry, 'budget')
    }
    if (!fits())
      throw new InferenceError({
        code: 'LLMESH_INFERENCE_BUSY',
        model: name,
        message: `${name} does not fit the memory budget beside the models that are serving requests now; try again when they finish, or another node.`,
      })
  }

  private used(): MemoryEstimate {
    let ramBytes = 0
    let vramBytes = 0
    for (const entry of this.entries.values()) {
      ramBytes += entry.estimate.ramBytes
      vramBytes += entry.estimate.vramBytes
    }
    return { ramBytes, vramBytes }
  }

  private scheduleKeepAlive(entry: Entry): void {
    clearTimeout(entry.keepAliveTimer)
    if (!Number.isFinite(this.keepAliveMs) || entry.users > 0) return
    entry.keepAliveTimer = setTimeout(() => {
      if (entry.users === 0 && entry.model?.idle) void this.evict(entry, 'keep-alive')
      else this.scheduleKeepAlive(entry)
    }, this.keepAliveMs)
    entry.keepAliveTimer.unref()
  }

  private async evict(entry: Entry, reason: UnloadReason): Promise<void> {
    if (this.entries.get(entry.key) !== entry) return
    this.forget(entry)
    clearTimeout(entry.keepAliveTimer)
    const model = await entry.loading.catch(() => undefined)
    if (model === undefined) return
    if (!model.idle) await new Promise<void>((resolve) => model.events.once('idle', resolve))
    await model.dispose()
    await entry.releaseHold?.()
    this.log('%s: unloaded (%s)', entry.name, reason)
    this.events.emit('model-unloaded', { name: entry.name, reason })
  }

  private forget(entry: Entry): void {
    if (this.entries.get(entry.key) === entry) this.entries.delete(entry.key)
    for (const [name, key] of this.keys) if (key === entry.key) this.keys.delete(name)
  }
}

export function createModelPool(options: ModelPoolOptions): ModelPool {
  return new ModelPool(options)
}

function formatMiB(bytes: number): string {
  return Number.isFinite(bytes) ? `${(bytes / 1024 / 1024).toFixed(1)} MiB` : 'unlimited'
}
