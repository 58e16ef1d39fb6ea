/**
 * @packageDocumentation
 * Test tools for llmesh and the apps built on it: deterministic tiny GGUF models that llama.cpp
 * really loads, and helpers for servers on port 0 and temp dirs.
 *
 * @example
 * ```ts
 * import { createTempDir, writeTinyGguf } from '@llmesh/testkit'
 *
 * await using directory = await createTempDir()
 * const model = await writeTinyGguf(`${directory.path}/tiny.gguf`, { type: 'q8_0', seed: 7 })
 * console.log(model.size, model.sha256) // the same on every machine
 * ```
 */
export { openDescriptorsOf } from './descriptors.js'
export {
  type ResolvedTinyModelOptions,
  resolveTinyModelOptions,
  type TensorType,
  type TinyModelOptions,
  type TinyModelPreset,
  tinyGgufBytes,
  tinyModelOptionsSchema,
  tinyModelPresets,
  tinyVocabulary,
  toHalf,
  type WrittenModel,
  writeTinyGguf,
} from './gguf-writer.js'
export {
  type Mirror,
  type MirrorFault,
  type MirrorFaultRule,
  type MirrorFile,
  type MirrorOptions,
  type MirrorRequestRecord,
  startMirror,
} from './mirror.js'
export {
  type MockNode,
  type MockNodeFaults,
  type MockNodeOptions,
  type MockNodeRecord,
  mockToken,
  startMockNode,
} from './mock-node.js'
export { type RunningServer, startServer } from './servers.js'
export { createTempDir, type TempDir, withTempDir } from './temp-dir.js'
export { testTlsCertificate, testTlsKey } from './test-tls.js'
