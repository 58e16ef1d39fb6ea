/**
 * The gate between "downloaded and verified" and "available": load the model, run the manifest's
 * smoke test, and record the outcome in the store's index. Only a model that passed serves.
 */
import { AbortedError, anySignal, createLogger, isAbortError } from '@llmesh/core'
import type { ModelStore } from '@llmesh/downloader'
import type { Manifest } from '@llmesh/manifest'
import type { ModelPool } from './model-pool.js'

export type SmokeTest = NonNullable<Manifest['smokeTest']>

/** For manifests that name none: the model loads and says anything at all, within a minute. */
export const defaultSmokeTest: SmokeTest = {
  prompt: 'Say hello.',
  maxTokens: 8,
  maxSeconds: 60,
  expect: { minTokens: 1 },
}

export interface SmokeTestResult {
  model: string
  passed: boolean
  /** Why it failed; undefined when it passed. */
  reason: string | undefined
  text: string
  completionTokens: number
  /** Generation time, loading excluded. */
  seconds: number
  smokeTest: SmokeTest
}

export interface RunSmokeTestOptions {
  pool: ModelPool
  /** `id`, `id@version` (recorded in `store`), or anything else the pool resolves (not recorded). */
  model: string
  /** Where the manifest is read and the outcome recorded. */
  store?: ModelStore
  /** Overrides the manifest's smoke test. */
  smokeTest?: SmokeTest
  signal?: AbortSignal
}

const log = createLogger('inference:smoke-test')

/**
 * Runs the smoke test and, for a store model, sets its status to `available` or to `failed` with
 * the reason. Resolves with the outcome either way; rejects only when `signal` aborts.
 */
export async function runSmokeTest(options: RunSmokeTestOptions): Promise<SmokeTestResult> {
  const stored = storedModel(options.store, options.model)
  const manifest =
    stored === undefined ? undefined : await options.store!.readManifest(stored.id, stored.version)
  const smokeTest = options.smokeTest ?? manifest?.smokeTest ?? defaultSmokeTest
  const name = stored === undefined ? options.model : `${stored.id}@${stored.version}`
  const result: SmokeTestResult = {
    model: name,
    passed: false,
    reason: undefined,
    text: '',
    completionTokens: 0,
    seconds: 0,
    smokeTest,
  }
  try {
    // Loading is not timed: a 70 GB model may take minutes to read, and that says nothing of its health.
    await options.pool.preload(name, {
      ...(options.signal === undefined ? {} : { signal: options.signal }),
    })
    const timeout = AbortSignal.timeout(smokeTest.maxSeconds * 1000)
    const signal = anySignal(timeout, options.signal)
    const started = performance.now()
    try {
      const generation = await options.pool.chat(
        name,
        [{ role: 'user', content: smokeTest.prompt }],
        { maxTokens: smokeTest.maxTokens, temperature: 0, signal },
      )
      const outcome = await generation.result
      result.text = outcome.text
      result.completionTokens = outcome.usage.completionTokens
      result.reason = unmetExpectation(smokeTest, outcome.text, outcome.usage.completionTokens)
    } catch (error) {
      if (options.signal?.aborted) throw error
      if (timeout.aborted || isAbortError(error) || AbortedError.isInstance(error))
        result.reason = `it did not finish within ${smokeTest.maxSeconds} s`
      else throw error
    } finally {
      result.seconds = (performance.now() - started) / 1000
    }
  } catch (error) {
    if (options.signal?.aborted) throw error
    result.reason = `it could not run: ${error instanceof Error ? error.message : String(error)}`
  }
  result.passed = result.reason === undefined
  if (stored !== undefined) {
    const reason = result.passed ? undefined : `smoke test failed: ${result.reason}`
    options.store!.index.setStatus(
      stored.id,
      stored.version,
      result.passed ? 'available' : 'failed',
      reason,
    )
  }
  log('%s: smoke test %s%s', name, result.passed ? 'passed' : 'failed: ', result.reason ?? '')
  return result
}

function storedModel(
  store: ModelStore | undefined,
  reference: string,
): { id: string; version: string } | undefined {
  if (store === undefined || reference.startsWith('sha256:')) return undefined
  try {
    const record = store.resolve(reference)
    return { id: record.id, version: record.version }
  } catch {
    return undefined
  }
}

function unmetExpectation(smokeTest: SmokeTest, text: string, tokens: number): string | undefined {
  const expected = smokeTest.expect
  if (expected === undefined) return tokens > 0 ? undefined : 'it generated no tokens'
  if (expected.minTokens !== undefined && tokens < expected.minTokens)
    return `it generated ${tokens} tokens, fewer than the ${expected.minTokens} expected`
  if (expected.contains !== undefined && !text.includes(expected.contains))
    return `the answer does not contain "${expected.contains}"`
  if (expected.regex !== undefined && !new RegExp(expected.regex).test(text))
    return `the answer does not match /${expected.regex}/`
  return undefined
}
