import { join } from 'node:path'
import {
  createInferenceEngine,
  createModelPool,
  createNodeServer,
  type InferenceEngine,
} from '@llmesh/inference'
import { createTempDir, type TempDir, writeTinyGguf } from '@llmesh/testkit'
import OpenAI from 'openai'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createGateway } from './gateway.js'
import { staticNodeSource } from './node-source.js'

let directory: TempDir
let engine: InferenceEngine
const cleanup: Array<() => Promise<void>> = []

beforeAll(async () => {
  directory = await createTempDir()
  engine = await createInferenceEngine({ backend: 'cpu', threads: 1 })
})
afterAll(async () => {
  for (const step of cleanup.reverse()) await step()
  await engine?.dispose()
  await directory?.remove()
})

describe('gateway in front of two real inference nodes', () => {
  it('serves the official openai client, streaming and not, and fails over when a node stops', async () => {
    const model = await writeTinyGguf(join(directory.path, 'tiny.gguf'), { seed: 21 })
    const nodes = []
    for (const name of ['node-a', 'node-b']) {
      const pool = createModelPool({
        engine,
        contextSize: 256,
        slots: 2,
        resolve: async () => ({ name: 'acme/tiny', path: model.path }),
      })
      const server = createNodeServer({ pool, models: ['acme/tiny'] })
      await server.ready
      const listening = await server.listen()
      cleanup.push(() => pool.close())
      nodes.push({ name, url: listening.url, close: listening.close })
    }
    const gateway = createGateway({
      nodes: staticNodeSource(
        nodes.map((node) => ({ id: node.name, url: node.url, models: [{ id: 'acme/tiny' }] })),
      ),
    })
    const listening = await gateway.listen()
    cleanup.push(
      () => gateway.close(),
      () => listening.close(),
    )
    const client = new OpenAI({ baseURL: `${listening.url}/v1`, apiKey: 'unused', maxRetries: 0 })

    const request = {
      model: 'acme/tiny',
      messages: [{ role: 'user' as const, content: 'hello gateway' }],
      max_tokens: 8,
      temperature: 0,
    }
    const whole = await client.chat.completions.create(request)
    expect(whole.usage!.completion_tokens).toBe(8)
    let streamed = ''
    for await (const chunk of await client.chat.completions.create({
      ...request,
      stream: true,
      stream_options: { include_usage: true },
    }))
      streamed += chunk.choices[0]?.delta.content ?? ''
    // Both nodes run the same file: the same greedy answer, whichever served it.
    expect(streamed).toBe(whole.choices[0]!.message.content)

    await nodes[0]!.close()
    for (let index = 0; index < 6; index++) {
      const answer = await client.chat.completions.create(request)
      expect(answer.choices[0]!.message.content).toBe(whole.choices[0]!.message.content)
    }
    const state = gateway.state()
    expect(state.nodes.find((node) => node.id === 'node-b')!.requests).toBeGreaterThanOrEqual(6)
    expect(state.usage.reduce((sum, entry) => sum + entry.completionTokens, 0)).toBe(8 * 8)
  })
})
