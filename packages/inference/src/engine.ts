/**
 * The inference engine: one llama.cpp backend for the process, chosen once, with a thread count
 * that suits the machine, and the way from a validated GGUF file to a `LoadedModel`.
 */
import { cpus, freemem, totalmem } from 'node:os'
import { createLogger, type Logger, throwIfAborted } from '@llmesh/core'
import { GgufInsights, getLlama, type Llama, LlamaLogLevel } from 'node-llama-cpp'
import { BatchOrder } from './batch-order.js'
import { InferenceError } from './errors.js'
import { type ValidatedGguf, validateGguf } from './gguf-validation.js'
import { LoadedModel } from './loaded-model.js'

export type Backend = 'cpu' | 'cuda' | 'vulkan' | 'metal'

export interface InferenceEngineOptions {
  /** `auto` (default) takes CUDA, Vulkan or Metal when present, else the CPU. */
  backend?: 'auto' | Backend
  /** Threads for llama.cpp; default `defaultThreadCount()`. */
  threads?: number
  logger?: Logger
}

export interface LoadModelOptions {
  /** The name requests use; default the path. */
  name?: string
  /** Tokens per request (prompt and answer); default the smaller of 4096 and the trained context. */
  contextSize?: number
  /** Requests decoded together; default 4. */
  slots?: number
  /** Requests that may wait for a slot; default 16. */
  maxQueue?: number
  /** Layers offloaded to the GPU: a count, `max`, or `auto` (as many as fit; the default). */
  gpuLayers?: number | 'auto' | 'max'
  signal?: AbortSignal
}

export interface MemoryEstimate {
  ramBytes: number
  vramBytes: number
}

export interface HardwareReport {
  backend: Backend
  devices: string[]
  vram: { totalBytes: number; freeBytes: number }
  ram: { totalBytes: number; freeBytes: number }
  cpu: { model: string; logicalCores: number; mathCores: number }
  threads: number
  llamaCpp: string
}

/**
 * All the CPU's math cores but one, at least one. node-llama-cpp's default (every core, and more)
 * measured 1.1 tokens/s on this project's 2-core machine against 354 with one thread: llama.cpp's
 * threads spin-wait on each other, and the Node event loop that feeds them needs a core too.
 */
export function defaultThreadCount(mathCores: number): number {
  return Math.max(1, mathCores - 1)
}

export class InferenceEngine {
  readonly backend: Backend
  private readonly log: Logger

  private constructor(
    readonly llama: Llama,
    logger: Logger,
  ) {
    this.backend = llama.gpu === false ? 'cpu' : llama.gpu
    this.log = logger
  }

  /** @internal use `createInferenceEngine`. */
  static async start(options: InferenceEngineOptions = {}): Promise<InferenceEngine> {
    const log = options.logger ?? createLogger('inference')
    const backend = options.backend ?? 'auto'
    if (
      options.threads !== undefined &&
      (!Number.isInteger(options.threads) || options.threads < 1)
    )
      throw new InferenceError({
        code: 'LLMESH_MODEL_LOAD_FAILED',
        message: `threads must be a positive integer, not ${options.threads}.`,
      })
    let llama: Llama
    try {
      llama = await getLlama({
        gpu: backend === 'auto' ? 'auto' : backend === 'cpu' ? false : backend,
        // Never compile llama.cpp at run time: a node must not need a toolchain or the network.
        build: 'never',
        logLevel: LlamaLogLevel.error,
        logger: (level, message) => log('llama.cpp %s: %s', level, message.trimEnd()),
      })
    } catch (error) {
      throw new InferenceError({
        code: 'LLMESH_MODEL_LOAD_FAILED',
        message: `The ${backend} backend of llama.cpp could not start: ${error instanceof Error ? error.message : String(error)}`,
        cause: error,
      })
    }
    llama.maxThreads = options.threads ?? defaultThreadCount(llama.cpuMathCores)
    const engine = new InferenceEngine(llama, log)
    log('backend %s, %d threads', engine.backend, llama.maxThreads)
    return engine
  }

  get threads(): number {
    return this.llama.maxThreads
  }

  async hardware(): Promise<HardwareReport> {
    const vram = await this.llama.getVramState()
    const processors = cpus()
    return {
      backend: this.backend,
      devices: this.backend === 'cpu' ? [] : await this.llama.getGpuDeviceNames(),
      vram: { totalBytes: vram.total, freeBytes: vram.free },
      ram: { totalBytes: totalmem(), freeBytes: freemem() },
      cpu: {
        model: processors[0]?.model.trim() ?? 'unknown',
        logicalCores: processors.length,
        mathCores: this.llama.cpuMathCores,
      },
      threads: this.threads,
      llamaCpp: this.llama.llamaCppRelease.release,
    }
  }

  /** What loading `gguf` with these settings will take, from llama.cpp's own accounting. */
  async estimateMemory(
    gguf: ValidatedGguf,
    options: Pick<LoadModelOptions, 'contextSize' | 'slots' | 'gpuLayers'> = {},
  ): Promise<MemoryEstimate> {
    const insights = await GgufInsights.from(gguf.fileInfo, this.llama)
    const gpuLayers = this.resolveGpuLayers(options.gpuLayers, insights.totalLayers)
    const model = await insights.estimateModelResourceRequirementsV2({ gpuLayers })
    const context = await insights.estimateContextResourceRequirementsV2({
      contextSize: contextSizeFor(gguf, options.contextSize),
      modelGpuLayers: gpuLayers,
      sequences: options.slots ?? 4,
    })
    return {
      ramBytes: model.cpuRam + context.cpuRam,
      vramBytes: model.gpuVram + context.gpuVram,
    }
  }

  /** Validates the file, then loads it with a context of `slots` sequences. */
  async loadModel(path: string, options: LoadModelOptions = {}): Promise<LoadedModel> {
    const gguf = await validateGguf(path)
    return this.loadValidated(gguf, options)
  }

  /** @internal for the pool, which validated the file to estimate its memory. */
  async loadValidated(gguf: ValidatedGguf, options: LoadModelOptions = {}): Promise<LoadedModel> {
    throwIfAborted(options.signal)
    const name = options.name ?? gguf.path
    const slots = options.slots ?? 4
    const contextSize = contextSizeFor(gguf, options.contextSize)
    const gpuLayers =
      this.backend === 'cpu' ? 0 : options.gpuLayers === undefined ? 'auto' : options.gpuLayers
    const started = performance.now()
    let model: Awaited<ReturnType<Llama['loadModel']>>
    try {
      model = await this.llama.loadModel({
        modelPath: gguf.path,
        gpuLayers,
        ...(options.signal === undefined ? {} : { loadSignal: options.signal }),
      })
    } catch (error) {
      throw loadFailure(name, gguf.path, error)
    }
    try {
      const batchOrder = new BatchOrder()
      const context = await model.createContext({
        contextSize,
        sequences: slots,
        threads: this.threads,
        batching: { itemPrioritizationStrategy: batchOrder.strategy },
      })
      this.log(
        '%s: loaded in %d ms, %d of %d layers on %s, %d slots of %d tokens',
        name,
        Math.round(performance.now() - started),
        model.gpuLayers,
        gguf.layers,
        this.backend,
        slots,
        contextSize,
      )
      return new LoadedModel({
        name,
        model,
        context,
        maxQueue: options.maxQueue ?? 16,
        batchOrder,
        logger: this.log,
      })
    } catch (error) {
      await model.dispose()
      throw loadFailure(name, gguf.path, error)
    }
  }

  async dispose(): Promise<void> {
    await this.llama.dispose()
  }

  private resolveGpuLayers(gpuLayers: LoadModelOptions['gpuLayers'], totalLayers: number): number {
    if (this.backend === 'cpu') return 0
    if (typeof gpuLayers === 'number') return Math.min(gpuLayers, totalLayers)
    // `auto` fits what the device holds; budgeting for all of it errs on the safe side.
    return totalLayers
  }
}

/** Starts llama.cpp on the chosen backend. One engine per process is enough. */
export function createInferenceEngine(options?: InferenceEngineOptions): Promise<InferenceEngine> {
  return InferenceEngine.start(options)
}

function contextSizeFor(gguf: ValidatedGguf, requested: number | undefined): number {
  return requested ?? Math.min(4096, gguf.trainedContextLength)
}

function loadFailure(name: string, path: string, error: unknown): InferenceError {
  if (InferenceError.isInstance(error)) return error
  return new InferenceError({
    code: 'LLMESH_MODEL_LOAD_FAILED',
    model: name,
    path,
    message: `llama.cpp could not load ${name} from ${path}: ${error instanceof Error ? error.message : String(error)}`,
    cause: error,
  })
}
