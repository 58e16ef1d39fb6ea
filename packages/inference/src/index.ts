/**
 * @packageDocumentation
 * Runs GGUF models with llama.cpp (through node-llama-cpp) on whatever the machine has: files are
 * validated before llama.cpp sees them, several models share a memory budget, concurrent requests
 * on one model are decoded together, a smoke test gates "available", and an OpenAI-compatible
 * server speaks to every existing client.
 *
 * @example
 * ```ts
 * import { createInferenceEngine, createModelPool } from '@llmesh/inference'
 *
 * const engine = await createInferenceEngine() // CUDA, Vulkan or Metal when present, else CPU
 * const pool = createModelPool({ engine })
 * const generation = await pool.chat('./model.gguf', [{ role: 'user', content: 'Hello' }], {
 *   maxTokens: 32,
 * })
 * for await (const chunk of generation) process.stdout.write(chunk.text)
 * console.log((await generation.result).usage)
 * await pool.close()
 * await engine.dispose()
 * ```
 */
export {
  type BackendCheck,
  type BackendCheckFailed,
  type BackendCheckPassed,
  type CheckBackendOptions,
  checkBackend,
} from './backend-check.js'
export {
  type Backend,
  createInferenceEngine,
  defaultThreadCount,
  type HardwareReport,
  InferenceEngine,
  type InferenceEngineOptions,
  type LoadModelOptions,
  type MemoryEstimate,
} from './engine.js'
export { InferenceError, type InferenceErrorCode } from './errors.js'
export {
  type FinishReason,
  Generation,
  type GenerationChunk,
  type GenerationResult,
  type TokenUsage,
} from './generation.js'
export { type ValidatedGguf, validateGguf } from './gguf-validation.js'
export {
  type ChatMessage,
  type GenerationEndEvent,
  LoadedModel,
  type LoadedModelStatistics,
  type SamplingOptions,
} from './loaded-model.js'
export {
  createModelPool,
  type ModelLease,
  ModelPool,
  type ModelPoolOptions,
  type PooledModelInfo,
  type UnloadReason,
} from './model-pool.js'
export {
  type ModelResolver,
  type ModelSource,
  pathModelResolver,
  type StoreModelResolverOptions,
  storeModelResolver,
} from './model-source.js'
export {
  createNodeServer,
  type ListeningServer,
  type NodeServer,
  type NodeServerOptions,
} from './node-server.js'
export {
  defaultSmokeTest,
  type RunSmokeTestOptions,
  runSmokeTest,
  type SmokeTest,
  type SmokeTestResult,
} from './smoke-test.js'
