/**
 * The child process of `checkBackend`: starts the engine on the requested backend, loads the
 * model with every layer offloaded, decodes, and writes one JSON line to stdout. llama.cpp's
 * messages go to stderr, where the parent reads why the process died if llama.cpp aborts it.
 */
import { format } from 'node:util'
import { LlmeshError, type Logger } from '@llmesh/core'
import type { BackendCheckReport, BackendCheckRequest } from './backend-check.js'
import { createInferenceEngine, type InferenceEngine } from './engine.js'
import type { LoadedModel } from './loaded-model.js'

const request = JSON.parse(process.argv[2] ?? '{}') as BackendCheckRequest
const toStderr = (formatter: string, ...args: unknown[]) => {
  process.stderr.write(`${format(formatter, ...args)}\n`)
}
const logger = Object.assign(toStderr, {
  error: toStderr,
  trace: () => {},
  enabled: true,
  namespace: 'llmesh:inference:backend-check',
}) as Logger

const report = (outcome: BackendCheckReport) => process.stdout.write(`${JSON.stringify(outcome)}\n`)

let engine: InferenceEngine | undefined
let model: LoadedModel | undefined
try {
  engine = await createInferenceEngine({
    backend: request.backend,
    ...(request.threads === undefined ? {} : { threads: request.threads }),
    logger,
  })
  const hardware = await engine.hardware()
  model = await engine.loadModel(request.modelPath, {
    contextSize: 256,
    slots: 1,
    gpuLayers: 'max',
  })
  const result = await model.complete('Hello', { maxTokens: request.tokens, temperature: 0 }).result
  report({
    ok: true,
    backend: engine.backend,
    devices: hardware.devices,
    layersOffloaded: model.model.gpuLayers,
    tokens: result.usage.completionTokens,
    tokensPerSecond: result.timings.tokensPerSecond,
  })
} catch (error) {
  report({
    ok: false,
    reason: error instanceof Error ? error.message : String(error),
    code: LlmeshError.isInstance(error) ? error.code : undefined,
  })
} finally {
  // Freed on every path, so that nothing of llama.cpp keeps the process from ending.
  await model?.dispose()
  await engine?.dispose()
}
