import { once } from 'node:events'
import { join } from 'node:path'
import { createTempDir, type TempDir, writeTinyGguf } from '@llmesh/testkit'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createInferenceEngine, type InferenceEngine } from './engine.js'
import { validateGguf } from './gguf-validation.js'
import { createModelPool, type UnloadReason } from './model-pool.js'

let directory: TempDir
let engine: InferenceEngine
const paths: string[] = []

beforeAll(async () => {
  directory = await createTempDir()
  engine = await createInferenceEngine({ backend: 'cpu', threads: 1 })
  for (const seed of [1, 2, 3])
    paths.push((await writeTinyGguf(join(directory.path, `model-${seed}.gguf`), { seed })).path)
})
afterAll(async () => {
  await engine?.dispose()
  await directory?.remove()
})

const settings = { contextSize: 128, slots: 2 }

async function estimate(path: string) {
  return engine.estimateMemory(await validateGguf(path), settings)
}

describe('ModelPool', () => {
  it('loads a model once when many requests ask for it at the same moment', async () => {
    const pool = createModelPool({ engine, ...settings })
    const loads: string[] = []
    pool.events.on('model-loaded', ({ name }) => loads.push(name))
    try {
      const models = await Promise.all(Array.from({ length: 6 }, () => pool.acquire(paths[0]!)))
      expect(loads).toEqual([paths[0]])
      expect(new Set(models.map((lease) => lease.model)).size).toBe(1)
      for (const lease of models) lease.release()
      const generations = await Promise.all(
        Array.from({ length: 4 }, () => pool.complete(paths[0]!, 'hello', { maxTokens: 3 })),
      )
      for (const generation of generations)
        expect((await generation.result).usage.completionTokens).toBe(3)
      expect(loads).toHaveLength(1)
    } finally {
      await pool.close()
    }
  })

  it('unloads the least recently used idle model when a new one needs its memory', async () => {
    const each = await estimate(paths[0]!)
    expect(each.ramBytes).toBeGreaterThan(0)
    const pool = createModelPool({
      engine,
      ...settings,
      budget: { ramBytes: Math.floor(each.ramBytes * 2.5) },
    })
    const unloaded: Array<{ name: string; reason: UnloadReason }> = []
    pool.events.on('model-unloaded', (event) => unloaded.push(event))
    try {
      await (await pool.complete(paths[0]!, 'hello', { maxTokens: 2 })).result
      await (await pool.complete(paths[1]!, 'hello', { maxTokens: 2 })).result
      await (await pool.complete(paths[0]!, 'hello', { maxTokens: 2 })).result
      await (await pool.complete(paths[2]!, 'hello', { maxTokens: 2 })).result
      expect(unloaded).toEqual([{ name: paths[1], reason: 'budget' }])
      expect(pool.loaded().map((model) => model.name)).toEqual([paths[2], paths[0]])
    } finally {
      await pool.close()
    }
  })

  it('never unloads a model in use; the request that cannot fit is told busy', async () => {
    const each = await estimate(paths[0]!)
    const pool = createModelPool({
      engine,
      ...settings,
      budget: { ramBytes: Math.floor(each.ramBytes * 1.5) },
    })
    try {
      const lease = await pool.acquire(paths[0]!)
      await expect(pool.complete(paths[1]!, 'hello', { maxTokens: 2 })).rejects.toMatchObject({
        code: 'LLMESH_INFERENCE_BUSY',
        isRetryable: true,
      })
      expect(
        (await lease.model.complete('hello', { maxTokens: 2 }).result).usage.completionTokens,
      ).toBe(2)
      lease.release()
      await (await pool.complete(paths[1]!, 'hello', { maxTokens: 2 })).result
      expect(pool.loaded().map((model) => model.name)).toEqual([paths[1]])
    } finally {
      await pool.close()
    }
  })

  it('refuses a model larger than the whole budget', async () => {
    const pool = createModelPool({ engine, ...settings, budget: { ramBytes: 1024 } })
    try {
      await expect(pool.preload(paths[0]!)).rejects.toMatchObject({
        code: 'LLMESH_MODEL_TOO_LARGE',
      })
      expect(pool.loaded()).toEqual([])
    } finally {
      await pool.close()
    }
  })

  it('unloads a model when its keep-alive time passes idle', async () => {
    const pool = createModelPool({ engine, ...settings, keepAliveMs: 20 })
    try {
      const unloaded = once(pool.events, 'model-unloaded')
      await (await pool.complete(paths[0]!, 'hello', { maxTokens: 2 })).result
      expect(await unloaded).toEqual([{ name: paths[0], reason: 'keep-alive' }])
      expect(pool.loaded()).toEqual([])
    } finally {
      await pool.close()
    }
  })

  it('fails an unknown model with a typed error and stays usable', async () => {
    const pool = createModelPool({ engine, ...settings })
    try {
      await expect(pool.preload(join(directory.path, 'missing.gguf'))).rejects.toMatchObject({
        code: 'LLMESH_MODEL_NOT_FOUND',
      })
      await (await pool.complete(paths[0]!, 'hello', { maxTokens: 2 })).result
    } finally {
      await pool.close()
    }
  })
})
