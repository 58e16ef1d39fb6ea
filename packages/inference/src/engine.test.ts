import { once } from 'node:events'
import { join } from 'node:path'
import { AbortedError } from '@llmesh/core'
import { createTempDir, type TempDir, writeTinyGguf } from '@llmesh/testkit'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createInferenceEngine, defaultThreadCount, type InferenceEngine } from './engine.js'
import { InferenceError } from './errors.js'
import type { GenerationEndEvent } from './loaded-model.js'

let directory: TempDir
let engine: InferenceEngine
let modelPath: string

beforeAll(async () => {
  directory = await createTempDir()
  engine = await createInferenceEngine({ backend: 'cpu', threads: 1 })
  modelPath = (await writeTinyGguf(join(directory.path, 'tiny.gguf'), { seed: 3 })).path
})
afterAll(async () => {
  await engine?.dispose()
  await directory?.remove()
})

describe('InferenceEngine', () => {
  it('runs on the CPU with the thread count it was given, and reports the hardware', async () => {
    expect(engine.backend).toBe('cpu')
    expect(engine.threads).toBe(1)
    const hardware = await engine.hardware()
    expect(hardware.backend).toBe('cpu')
    expect(hardware.devices).toEqual([])
    expect(hardware.ram.totalBytes).toBeGreaterThan(hardware.ram.freeBytes)
    expect(hardware.cpu.logicalCores).toBeGreaterThan(0)
    expect(hardware.cpu.mathCores).toBeGreaterThan(0)
    expect(hardware.llamaCpp).not.toBe('')
  })

  it('chooses all math cores but one, at least one, by default', () => {
    expect(defaultThreadCount(1)).toBe(1)
    expect(defaultThreadCount(2)).toBe(1)
    expect(defaultThreadCount(16)).toBe(15)
  })

  it('completes text with exact token counts, the same text at temperature 0, and streams it in chunks', async () => {
    const model = await engine.loadModel(modelPath, { contextSize: 256, slots: 2 })
    try {
      const first = model.complete('hello world', { maxTokens: 12, temperature: 0 })
      const chunks: string[] = []
      for await (const chunk of first) chunks.push(chunk.text)
      const result = await first.result
      expect(result.finishReason).toBe('length')
      expect(result.usage.completionTokens).toBe(12)
      expect(result.usage.promptTokens).toBe(model.model.tokenize('hello world').length + 1)
      expect(result.usage.totalTokens).toBe(result.usage.promptTokens + 12)
      expect(chunks.length).toBeGreaterThan(1)
      expect(chunks.join('')).toBe(result.text)
      expect(result.timings.firstTokenMs).toBeGreaterThan(0)
      expect(result.timings.tokensPerSecond).toBeGreaterThan(0)

      const again = await model.complete('hello world', { maxTokens: 12, temperature: 0 }).text()
      expect(again).toBe(result.text)
    } finally {
      await model.dispose()
    }
  })

  it('answers a chat with the model template and stops at a stop sequence', async () => {
    const model = await engine.loadModel(modelPath, { contextSize: 256, slots: 1 })
    try {
      const full = await model.chat([{ role: 'user', content: 'hello mesh' }], {
        maxTokens: 24,
        temperature: 0,
      }).result
      expect(full.usage.completionTokens).toBe(24)
      // The chat template wraps the message in ChatML markers: more tokens than the bare text.
      expect(full.usage.promptTokens).toBeGreaterThan(model.model.tokenize('hello mesh').length + 4)

      const stop = full.text.slice(4, 6)
      const stopped = await model.chat([{ role: 'user', content: 'hello mesh' }], {
        maxTokens: 24,
        temperature: 0,
        stop: [stop],
      }).result
      expect(stopped.finishReason).toBe('stop')
      expect(stopped.text).toBe(full.text.slice(0, full.text.indexOf(stop)))
    } finally {
      await model.dispose()
    }
  })

  it('cancels by AbortSignal: the generation ends at once and its slot serves the next request', async () => {
    const model = await engine.loadModel(modelPath, { contextSize: 256, slots: 1, maxQueue: 0 })
    try {
      const controller = new AbortController()
      const ended = once(model.events, 'generation-end') as Promise<[GenerationEndEvent]>
      const generation = model.complete('the model', {
        maxTokens: 200,
        signal: controller.signal,
      })
      let received = 0
      await expect(
        (async () => {
          for await (const _chunk of generation) {
            if (++received === 3) controller.abort()
          }
        })(),
      ).rejects.toBeInstanceOf(AbortedError)
      const [event] = await ended
      expect(event.outcome).toBe('aborted')
      expect(event.completionTokens).toBeLessThan(200)
      expect(model.statistics.inFlight).toBe(0)
      // With one slot and no queue, the next request is served only if the slot was freed.
      const next = await model.complete('the model', { maxTokens: 4 }).result
      expect(next.usage.completionTokens).toBe(4)
    } finally {
      await model.dispose()
    }
  })

  it('serves concurrent requests on one model from its slots, and refuses past the queue as busy', async () => {
    const model = await engine.loadModel(modelPath, { contextSize: 256, slots: 2, maxQueue: 1 })
    try {
      const alone = await model.complete('hello', { maxTokens: 16, temperature: 0 }).text()
      const running = [1, 2, 3].map(() =>
        model.complete('hello', { maxTokens: 16, temperature: 0 }),
      )
      expect(model.statistics).toMatchObject({ slots: 2, queued: 1 })
      const refused = model.complete('hello', { maxTokens: 16 })
      await expect(refused.result).rejects.toMatchObject({
        code: 'LLMESH_INFERENCE_BUSY',
        isRetryable: true,
      })
      const texts = await Promise.all(running.map((generation) => generation.text()))
      // Batched decoding changes nothing in what each request gets.
      expect(texts).toEqual([alone, alone, alone])
      expect(model.statistics).toMatchObject({ inFlight: 0, queued: 0 })
    } finally {
      await model.dispose()
    }
  })

  it('decodes requests side by side, each as it would alone: lengths, prompts and a late arrival', async () => {
    const model = await engine.loadModel(modelPath, { contextSize: 256, slots: 4 })
    try {
      // Requests that end at different steps, with different prompts, one of them a chat: the
      // batch order holds each batch for the generations still running, and must never hold one
      // for a generation that has ended.
      const requests = [
        () => model.complete('hello', { maxTokens: 3, temperature: 0 }),
        () => model.complete('the mesh of nodes', { maxTokens: 24, temperature: 0 }),
        () => model.complete('a model is a token', { maxTokens: 11, temperature: 0 }),
        () => model.chat([{ role: 'user', content: 'hello world' }], { maxTokens: 17 }),
      ]
      const alone = []
      for (const request of requests.slice(0, 3)) alone.push(await request().result)
      const together = requests.map((request) => request())
      // A fifth request arrives while the others generate, and waits for the first free slot.
      const late = model.complete('hello', { maxTokens: 5, temperature: 0 })
      const results = await Promise.all([...together, late].map((generation) => generation.result))
      expect(results.slice(0, 3).map((result) => result.text)).toEqual(
        alone.map((result) => result.text),
      )
      expect(results.map((result) => result.usage.completionTokens)).toEqual([3, 24, 11, 17, 5])
      expect(results[4]!.text.startsWith(alone[0]!.text)).toBe(true)
      expect(model.statistics).toMatchObject({ inFlight: 0, queued: 0 })
    } finally {
      await model.dispose()
    }
  })

  it('refuses a prompt longer than the context with a typed error', async () => {
    const model = await engine.loadModel(modelPath, { contextSize: 32, slots: 1 })
    try {
      const generation = model.complete('hello world '.repeat(40), { maxTokens: 4 })
      await expect(generation.result).rejects.toMatchObject({ code: 'LLMESH_CONTEXT_OVERFLOW' })
      expect((await model.complete('hello', { maxTokens: 4 }).result).usage.completionTokens).toBe(
        4,
      )
    } finally {
      await model.dispose()
    }
  })

  it('fails a missing file with a typed error', async () => {
    await expect(engine.loadModel(join(directory.path, 'nothing.gguf'))).rejects.toBeInstanceOf(
      InferenceError,
    )
  })
})
