import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { createTempDir, type TempDir, type TinyModelOptions, tinyGgufBytes } from '@llmesh/testkit'
import fc from 'fast-check'
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
    ['cut inside its vocabulary', good.slice(0, 3000), /longer than the file|cut short/],
    ['cut inside its header', good.slice(0, 200), /more than its 200 bytes can hold/],
    ['empty', new Uint8Array(0), /fewer than a GGUF header's 24/],
    [
      'an HTML error page',
      new TextEncoder().encode('<!doctype html><title>404</title>'),
      /does not start with "GGUF"/,
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

  it('answers any damaged file (cut anywhere, bytes flipped in the header) with the model or a typed error', async () => {
    const path = join(directory.path, 'fuzzed.gguf')
    const headerEnd = 8_000
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 0, max: good.byteLength }),
        fc.array(
          fc.tuple(fc.integer({ min: 0, max: headerEnd }), fc.integer({ min: 0, max: 255 })),
          {
            maxLength: 4,
          },
        ),
        async (length, flips) => {
          const bytes = Uint8Array.from(good.subarray(0, length))
          for (const [offset, value] of flips) if (offset < bytes.length) bytes[offset] = value
          await writeFile(path, bytes)
          const outcome = await validateGguf(path).then(
            () => 'valid',
            (error: unknown) => error,
          )
          if (outcome !== 'valid') expect(InferenceError.isInstance(outcome)).toBe(true)
          // A flipped count can make a cut file describe fewer tensors; without flips, only the whole file passes.
          else if (flips.length === 0) expect(length).toBe(good.byteLength)
        },
      ),
      { numRuns: 200 },
    )
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
