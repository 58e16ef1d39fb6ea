import { join } from 'node:path'
import { ModelStore } from '@llmesh/downloader'
import { createTempDir, type TempDir } from '@llmesh/testkit'
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import { createInferenceEngine, type InferenceEngine } from './engine.js'
import { createModelPool, type ModelPool } from './model-pool.js'
import { storeModelResolver } from './model-source.js'
import { runSmokeTest } from './smoke-test.js'
import { pullTinyModel } from './test-support.js'

let engine: InferenceEngine
let directory: TempDir
let store: ModelStore
let pool: ModelPool

beforeAll(async () => {
  engine = await createInferenceEngine({ backend: 'cpu', threads: 1 })
})
afterAll(async () => {
  await engine?.dispose()
})
beforeEach(async () => {
  directory = await createTempDir()
  store = await ModelStore.open({ root: join(directory.path, 'store') })
  pool = createModelPool({ engine, resolve: storeModelResolver(store), slots: 1, contextSize: 128 })
})
afterEach(async () => {
  await pool.close()
  store.close()
  await directory.remove()
})

describe('runSmokeTest', () => {
  it('marks a model available when its smoke test passes, and only then does it serve', async () => {
    await pullTinyModel(store, directory.path, {
      id: 'acme/tiny',
      manifest: {
        smokeTest: { prompt: 'hello', maxTokens: 6, maxSeconds: 30, expect: { minTokens: 6 } },
      },
    })
    expect(store.resolve('acme/tiny').status).toBe('verified')
    const strict = createModelPool({
      engine,
      resolve: storeModelResolver(store, { requireAvailable: true }),
    })
    try {
      await expect(strict.preload('acme/tiny')).rejects.toMatchObject({
        code: 'LLMESH_MODEL_UNAVAILABLE',
      })

      const result = await runSmokeTest({ pool, store, model: 'acme/tiny' })
      expect(result).toMatchObject({
        passed: true,
        reason: undefined,
        completionTokens: 6,
        model: 'acme/tiny@1.0.0',
      })
      expect(result.text.length).toBeGreaterThan(0)
      expect(store.resolve('acme/tiny')).toMatchObject({
        status: 'available',
        statusReason: undefined,
      })

      const generation = await strict.chat('acme/tiny', [{ role: 'user', content: 'hi' }], {
        maxTokens: 2,
      })
      expect((await generation.result).usage.completionTokens).toBe(2)
    } finally {
      await strict.close()
    }
  })

  it('leaves a model unavailable, with the reason, when the answer misses the expectation', async () => {
    await pullTinyModel(store, directory.path, {
      id: 'acme/tiny',
      manifest: {
        smokeTest: { prompt: 'hello', maxTokens: 4, maxSeconds: 30, expect: { contains: 'Paris' } },
      },
    })
    const result = await runSmokeTest({ pool, store, model: 'acme/tiny@1.0.0' })
    expect(result.passed).toBe(false)
    expect(result.reason).toBe('the answer does not contain "Paris"')
    expect(store.resolve('acme/tiny')).toMatchObject({
      status: 'failed',
      statusReason: 'smoke test failed: the answer does not contain "Paris"',
    })
  })

  it('fails a smoke test that runs past its time limit', async () => {
    await pullTinyModel(store, directory.path, {
      id: 'acme/slow',
      // A few hundred tokens take far more than a millisecond on any machine.
      manifest: { smokeTest: { prompt: 'hello', maxTokens: 120, maxSeconds: 0.001 } },
    })
    const result = await runSmokeTest({ pool, store, model: 'acme/slow' })
    expect(result).toMatchObject({ passed: false, reason: 'it did not finish within 0.001 s' })
    expect(store.resolve('acme/slow').status).toBe('failed')
  })

  it('fails, with the loader error as the reason, a model that cannot load', async () => {
    await pullTinyModel(store, directory.path, {
      id: 'acme/broken',
      model: { omitMetadataKeys: ['llama.feed_forward_length'] },
    })
    const result = await runSmokeTest({ pool, store, model: 'acme/broken' })
    expect(result.passed).toBe(false)
    expect(result.reason).toMatch(/could not run: .*llama\.feed_forward_length is missing/)
    expect(store.resolve('acme/broken')).toMatchObject({ status: 'failed' })
    expect(store.resolve('acme/broken').statusReason).toContain('feed_forward_length')
  })
})
