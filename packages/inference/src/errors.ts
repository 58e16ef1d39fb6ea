import { hasMarker, LlmeshError } from '@llmesh/core'

const inferenceMarker = Symbol.for('llmesh.error.InferenceError')

export type InferenceErrorCode =
  /** The file is not a GGUF llama.cpp can load safely: bad header, missing metadata, tensors past the end. */
  | 'LLMESH_GGUF_INVALID'
  /** No model by that name: not in the store, not a file. */
  | 'LLMESH_MODEL_NOT_FOUND'
  /** The model is stored but has not passed its smoke test. */
  | 'LLMESH_MODEL_UNAVAILABLE'
  /** llama.cpp refused the model, or the backend could not start. */
  | 'LLMESH_MODEL_LOAD_FAILED'
  /** The model cannot fit the pool's memory budget even with every other model unloaded. */
  | 'LLMESH_MODEL_TOO_LARGE'
  /** Every slot of the model is taken and its queue is full; try another node or later. */
  | 'LLMESH_INFERENCE_BUSY'
  /** The prompt does not fit the model's context. */
  | 'LLMESH_CONTEXT_OVERFLOW'
  /** The model's smoke test failed or timed out; the model stays unavailable. */
  | 'LLMESH_SMOKE_TEST_FAILED'
  /** The pool or engine was closed while the request waited. */
  | 'LLMESH_INFERENCE_CLOSED'

/** An inference operation failed. `code` says why; `model` and `path` say on what. */
export class InferenceError extends LlmeshError {
  protected readonly [inferenceMarker] = true
  override readonly code: InferenceErrorCode
  readonly model: string | undefined
  readonly path: string | undefined

  constructor(options: {
    code: InferenceErrorCode
    message: string
    model?: string
    path?: string
    isRetryable?: boolean
    cause?: unknown
  }) {
    super({
      code: options.code,
      message: options.message,
      cause: options.cause,
      isRetryable: options.isRetryable ?? options.code === 'LLMESH_INFERENCE_BUSY',
    })
    this.name = 'InferenceError'
    this.code = options.code
    this.model = options.model
    this.path = options.path
  }

  static override isInstance(error: unknown): error is InferenceError {
    return hasMarker(error, inferenceMarker)
  }
}
