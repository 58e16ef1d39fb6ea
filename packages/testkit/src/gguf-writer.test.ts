import { createHash } from 'node:crypto'
import { readdir, readFile, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { InvalidArgumentError } from '@llmesh/core'
import { getLlama, type Llama, LlamaCompletion, readGgufFileInfo } from 'node-llama-cpp'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { resolveTinyModelOptions, tinyGgufBytes, toHalf, writeTinyGguf } from './gguf-writer.js'
import { createTempDir, type TempDir } from './temp-dir.js'

let directory: TempDir
let llama: Llama

beforeAll(async () => {
  directory = await createTempDir()
  // Two threads: node-llama-cpp's default thread count is pathological on small machines.
  llama = await getLlama({ gpu: false, build: 'never', maxThreads: 2, logLevel: 'error' as never })
})
afterAll(async () => {
  await llama?.dispose()
  await directory?.remove()
})

describe('writeTinyGguf', () => {
  it.each(['f32', 'f16', 'q8_0'] as const)(
    'writes a %s model that node-llama-cpp loads and generates at least 10 tokens with',
    async (type) => {
      const model = await writeTinyGguf(join(directory.path, `tiny-${type}.gguf`), { type })
      const loaded = await llama.loadModel({ modelPath: model.path })
      const context = await loaded.createContext({ contextSize: 128, threads: 2 })
      try {
        const completion = new LlamaCompletion({ contextSequence: context.getSequence() })
        let tokens = 0
        const text = await completion.generateCompletion('hello world', {
          maxTokens: 12,
          temperature: 0,
          onToken: (generated) => {
            tokens += generated.length
          },
        })
        expect(tokens).toBeGreaterThanOrEqual(10)
        expect(text.length).toBeGreaterThan(0)
        expect(text).not.toContain('\uFFFD')
        expect(loaded.tokens.bos).toBe(1)
        expect(loaded.tokens.eos).toBe(2)
      } finally {
        await context.dispose()
        await loaded.dispose()
      }
    },
  )

  it('is deterministic: the same options give the same bytes, another seed other bytes', async () => {
    const first = await writeTinyGguf(join(directory.path, 'a.gguf'), { seed: 42, type: 'q8_0' })
    const second = await writeTinyGguf(join(directory.path, 'b.gguf'), { seed: 42, type: 'q8_0' })
    const third = await writeTinyGguf(join(directory.path, 'c.gguf'), { seed: 43, type: 'q8_0' })
    expect(second.sha256).toBe(first.sha256)
    expect(third.sha256).not.toBe(first.sha256)
    const bytes = await readFile(first.path)
    expect(createHash('sha256').update(bytes).digest('hex')).toBe(first.sha256)
    expect(bytes.byteLength).toBe(first.size)
    expect(Buffer.from(tinyGgufBytes({ seed: 42, type: 'q8_0' })).equals(bytes)).toBe(true)
  })

  it('writes the metadata llama.cpp needs, and leaves out keys on request', async () => {
    const model = await writeTinyGguf(join(directory.path, 'meta.gguf'), {
      layers: 3,
      headCount: 4,
      headCountKv: 2,
    })
    const info = await readGgufFileInfo(model.path)
    expect(info.metadata.general.architecture).toBe('llama')
    const llamaMetadata = (info.metadata as unknown as { llama: Record<string, unknown> }).llama
    expect(llamaMetadata.block_count).toBe(3)
    expect(llamaMetadata.feed_forward_length).toBe(128)
    expect(info.tensorInfo?.length).toBe(2 + 3 * 9 + 1)

    const broken = await writeTinyGguf(join(directory.path, 'broken.gguf'), {
      omitMetadataKeys: ['llama.feed_forward_length'],
    })
    const brokenInfo = await readGgufFileInfo(broken.path)
    expect(
      (brokenInfo.metadata as unknown as { llama: Record<string, unknown> }).llama
        .feed_forward_length,
    ).toBeUndefined()

    const overridden = await writeTinyGguf(join(directory.path, 'overridden.gguf'), {
      overrideMetadata: { 'llama.attention.head_count': 0, 'general.name': 'renamed' },
    })
    const overriddenInfo = await readGgufFileInfo(overridden.path)
    expect(overriddenInfo.metadata.general.name).toBe('renamed')
    expect(
      (
        overriddenInfo.metadata as unknown as {
          llama: { attention: Record<string, unknown> }
        }
      ).llama.attention.head_count,
    ).toBe(0)
  })

  it('writes atomically: no partial file is left beside the model', async () => {
    await writeTinyGguf(join(directory.path, 'atomic.gguf'))
    const names = await readdir(directory.path)
    expect(names.filter((name) => name.includes('.partial-'))).toEqual([])
    await expect(writeTinyGguf(join(directory.path, 'missing-folder', 'x.gguf'))).rejects.toThrow()
  })

  it('has a bigger preset of tens of megabytes for benchmarks', async () => {
    const model = await writeTinyGguf(join(directory.path, 'bigger.gguf'), 'bigger')
    const { size } = await stat(model.path)
    expect(size).toBeGreaterThan(20 * 1024 * 1024)
    expect(size).toBeLessThan(200 * 1024 * 1024)
    const info = await readGgufFileInfo(model.path)
    expect((info.metadata as unknown as { llama: Record<string, unknown> }).llama.block_count).toBe(
      8,
    )
  })

  it('has a large preset of about a billion parameters for GPU benchmarks', () => {
    // Writing it takes a minute and 2 GB, so this checks its shape, not its bytes.
    const options = resolveTinyModelOptions('large')
    const { embeddingLength, feedForwardLength, layers, vocabularySize } = options
    const kvLength = (embeddingLength / options.headCount) * options.headCountKv!
    const perLayer =
      2 * embeddingLength * embeddingLength +
      2 * embeddingLength * kvLength +
      3 * embeddingLength * feedForwardLength
    const parameters = layers * perLayer + 2 * embeddingLength * vocabularySize
    expect(parameters).toBeGreaterThan(0.9e9)
    expect(parameters).toBeLessThan(1.2e9)
    expect(options.type).toBe('f16')
  })

  it('rejects options that would make an unloadable model', () => {
    expect(() => tinyGgufBytes({ embeddingLength: 100, headCount: 3 })).toThrow(
      InvalidArgumentError,
    )
    expect(() => tinyGgufBytes({ type: 'q8_0', embeddingLength: 48, headCount: 4 })).toThrow(
      /multiples of 32/,
    )
    expect(() => tinyGgufBytes({ layers: 0 })).toThrow(/options\.layers/)
  })
})

describe('toHalf', () => {
  it('encodes binary16 with round-to-nearest-even', () => {
    expect(toHalf(1)).toBe(0x3c00)
    expect(toHalf(-2)).toBe(0xc000)
    expect(toHalf(65504)).toBe(0x7bff)
    expect(toHalf(1e6)).toBe(0x7c00)
    expect(toHalf(0)).toBe(0)
    expect(toHalf(2 ** -24)).toBe(1)
    expect(toHalf(2 ** -14)).toBe(0x0400)
    expect(toHalf(1 + 2 ** -11)).toBe(0x3c00)
    expect(toHalf(1 + 3 * 2 ** -11)).toBe(0x3c02)
    expect(toHalf(Number.NaN) & 0x7c00).toBe(0x7c00)
  })
})
