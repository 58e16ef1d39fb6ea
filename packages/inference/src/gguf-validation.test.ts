import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { createTempDir, type TempDir, type TinyModelOptions, tinyGgufBytes } from '@llmesh/testkit'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createInferenceEngine, type InferenceEngine } from './engine.js'
import { InferenceError } from './errors.js'
import { validateGguf } from './gguf-validation.js'

let directory: TempDir
let engine: InferenceEngine

beforeAll(async () => {
  directory = await createTempDir()
  engine = await createInferenceEngine({ backend: 'cpu', threads: 1 })
})
afterAll(async () => {
  await engine?.dispose()
  await directory?.remove()
})

async function write(name: string, bytes: Uint8Array): Promise<string> {
  const path = join(directory.path, name)
  await writeFile(path, bytes)
  return path
}

const good = tinyGgufBytes({ seed: 5 })

// Each of these aborts the whole process inside llama.cpp today (GGML_ASSERT), checked by hand
// with node-llama-cpp 3.22.1: loading them here would kill the test worker.
const abortingModels: Array<[string, TinyModelOptions, RegExp]> = [
  [
    'a missing llama.feed_forward_length',
    { omitMetadataKeys: ['llama.feed_forward_length'] },
    /llama\.feed_forward_length is missing/,
  ],
  [
    'a missing llama.attention.head_count',
    { omitMetadataKeys: ['llama.attention.head_count'] },
    /llama\.attention\.head_count is missing/,
  ],
  [
    'a zero llama.attention.head_count',
    { overrideMetadata: { 'llama.attention.head_count': 0 } },
    /llama\.attention\.head_count is 0/,
  ],
  [
    'a zero llama.attention.head_count_kv',
    { overrideMetadata: { 'llama.attention.head_count_kv': 0 } },
    /head_count_kv is 0/,
  ],
  [
    'a zero llama.feed_forward_length',
    { overrideMetadata: { 'llama.feed_forward_length': 0 } },
    /feed_forward_length is 0/,
  ],
  [
    'a zero llama.block_count',
    { overrideMetadata: { 'llama.block_count': 0 } },
    /llama\.block_count is 0/,
  ],
]

describe('validateGguf', () => {
  it('accepts a good model and reports what it is', async () => {
    const path = await write('good.gguf', good)
    const validated = await validateGguf(path)
    expect(validated).toMatchObject({
      architecture: 'llama',
      name: 'llmesh-tiny-llama',
      trainedContextLength: 256,
      layers: 2,
      tensorCount: 2 + 2 * 9 + 1,
      size: good.byteLength,
      parts: 1,
    })
  })

  it.each(abortingModels)(
    'refuses %s (which aborts llama.cpp) with a typed error, and the process lives on',
    async (_case, options, message) => {
      const path = await write('aborting.gguf', tinyGgufBytes(options))
      const error = await engine.loadModel(path).catch((caught: unknown) => caught)
      expect(InferenceError.isInstance(error)).toBe(true)
      expect(error).toMatchObject({ code: 'LLMESH_GGUF_INVALID', path })
      expect((error as Error).message).toMatch(message)
      expect((error as Error).message).toContain(path)
    },
  )

  it.each([
    ['cut in the middle of its tensors', good.slice(0, good.byteLength >> 1), /past the end/],
    ['short by 100 bytes', good.slice(0, good.byteLength - 100), /past the end/],
    ['cut inside its header', good.slice(0, 200), /header is cut short/],
    ['empty', new Uint8Array(0), /header cannot be read/],
    [
      'an HTML error page',
      new TextEncoder().encode('<!doctype html><title>404</title>'),
      /header cannot be read/,
    ],
  ])('refuses a file %s with a typed error', async (_case, bytes, message) => {
    const path = await write('damaged.gguf', bytes)
    const error = await engine.loadModel(path).catch((caught: unknown) => caught)
    expect(error).toMatchObject({ code: 'LLMESH_GGUF_INVALID', path })
    expect((error as Error).message).toMatch(message)
  })

  it('refuses a file without an architecture or a vocabulary', async () => {
    const noArchitecture = await write(
      'no-architecture.gguf',
      tinyGgufBytes({ omitMetadataKeys: ['general.architecture'] }),
    )
    await expect(validateGguf(noArchitecture)).rejects.toThrow(/general\.architecture is missing/)
    const noTokens = await write(
      'no-tokens.gguf',
      tinyGgufBytes({ omitMetadataKeys: ['tokenizer.ggml.tokens'] }),
    )
    await expect(validateGguf(noTokens)).rejects.toThrow(/tokenizer\.ggml\.tokens/)
  })

  it('still loads and runs a good model after refusing bad ones', async () => {
    const model = await engine.loadModel(await write('after.gguf', good), { contextSize: 64 })
    try {
      expect((await model.complete('hello', { maxTokens: 3 }).result).usage.completionTokens).toBe(
        3,
      )
    } finally {
      await model.dispose()
    }
  })
})
