/**
 * The decode check that `doctor`, `serve` and `node` run before trusting a backend: the testkit's
 * tiny model, loaded and decoded in a child process (see `checkBackend`). A GPU build that does
 * not fit the driver aborts the process that decodes; this way it is the child, and the command
 * says why.
 */
import { join } from 'node:path'
import { LlmeshError } from '@llmesh/core'
import { type Backend, type BackendCheck, checkBackend } from '@llmesh/inference'
import { createTempDir, writeTinyGguf } from '@llmesh/testkit'
import type { Output } from '../output.js'

export async function checkDecodes(
  backend: Backend,
  options: { threads?: number | undefined; signal: AbortSignal },
): Promise<BackendCheck> {
  await using directory = await createTempDir('llmesh-check-')
  const model = await writeTinyGguf(join(directory.path, 'tiny.gguf'))
  // Awaited here: the model file must outlive the check, and the folder goes when this returns.
  return await checkBackend({
    modelPath: model.path,
    backend,
    ...(options.threads === undefined ? {} : { threads: options.threads }),
    signal: options.signal,
  })
}

export function describeCheck(check: BackendCheck): string {
  return check.ok
    ? `passed: ${check.tokens} tokens at ${Math.round(check.tokensPerSecond)} tok/s on ${check.backend}${check.backend === 'cpu' ? '' : ` (${check.layersOffloaded} layers offloaded)`}, ${check.seconds.toFixed(1)} s in all`
    : `FAILED: ${check.reason}`
}

/** Exit code 4 (`exitCodes.verificationFailed`) with the reason, when the check failed. */
export function requirePassed(check: BackendCheck, backend: Backend): void {
  if (!check.ok)
    throw new LlmeshError({
      code: 'LLMESH_BACKEND_CHECK_FAILED',
      message: `llama.cpp could not decode on the ${backend} backend: ${check.reason}${
        backend === 'cpu'
          ? ''
          : ` Use --backend cpu (inference.backend in a node's config) to run on the CPU, or build llama.cpp for this machine: npx --no node-llama-cpp source download --gpu ${backend}.`
      }`,
    })
}

/** What `serve` and `node` do before their smoke tests: check, tell, and stop when it failed. */
export async function requireDecodes(
  backend: Backend,
  options: { threads?: number | undefined; signal: AbortSignal; output: Output },
): Promise<void> {
  const check = await checkDecodes(backend, options)
  options.output.line({ event: 'backend-check', ...check })
  options.output.info(`decode check: ${describeCheck(check)}`)
  requirePassed(check, backend)
}
