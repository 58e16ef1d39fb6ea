import { InvalidArgumentError, isAbortError, LlmeshError } from '@llmesh/core'
import { ManifestError, SignatureError } from '@llmesh/manifest'

/**
 * What `llmesh` exit codes mean, so scripts can branch on them:
 * 0 success; 1 an unexpected failure; 2 wrong usage (unknown command, missing option);
 * 3 invalid input (a manifest, key, option or GGUF file that does not validate); 4 a signature,
 * integrity check, smoke test or decode check (`llmesh doctor`) failed; 130 cancelled (Ctrl-C).
 */
export const exitCodes = {
  success: 0,
  failure: 1,
  usage: 2,
  invalidInput: 3,
  verificationFailed: 4,
  cancelled: 130,
} as const

export function exitCodeFor(error: unknown): number {
  if (isAbortError(error)) return exitCodes.cancelled
  if (SignatureError.isInstance(error)) return exitCodes.verificationFailed
  if (
    LlmeshError.isInstance(error) &&
    (error.code === 'LLMESH_CHECKSUM_MISMATCH' ||
      error.code === 'LLMESH_STORE_DAMAGED' ||
      error.code === 'LLMESH_SMOKE_TEST_FAILED' ||
      error.code === 'LLMESH_BACKEND_CHECK_FAILED')
  )
    return exitCodes.verificationFailed
  if (
    ManifestError.isInstance(error) ||
    InvalidArgumentError.isInstance(error) ||
    (LlmeshError.isInstance(error) && error.code === 'LLMESH_GGUF_INVALID')
  )
    return exitCodes.invalidInput
  if (LlmeshError.isInstance(error) && error.code === 'LLMESH_USAGE') return exitCodes.usage
  return exitCodes.failure
}
