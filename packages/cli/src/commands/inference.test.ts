import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import { pathToFileURL } from 'node:url'
import { ModelStore } from '@llmesh/downloader'
import { createTempDir, startMirror, type TempDir, writeTinyGguf } from '@llmesh/testkit'
import OpenAI from 'openai'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { exitCodes } from '../exit-codes.js'
import { run } from '../program.js'
import { captureIo, llmesh } from '../test-io.js'

let directory: TempDir
const at = (name: string) => join(directory.path, name)
const cpu = ['--backend', 'cpu', '--threads', '1']

beforeAll(async () => {
  directory = await createTempDir('llmesh-cli-inference-')
})
afterAll(() => directory.remove())

describe('llmesh run, chat, serve and doctor', () => {
  it('runs one prompt on a GGUF file, streaming the answer to stdout', async () => {
    const model = await writeTinyGguf(at('run.gguf'), { seed: 8 })
    const human = await llmesh(
      'run',
      model.path,
      'hello',
      'mesh',
      '--max-tokens',
      '6',
      '--temperature',
      '0',
      ...cpu,
    )
    expect(human.code).toBe(0)
    expect(human.out.trim().length).toBeGreaterThan(0)
    expect(human.err).toMatch(/^6 tokens, [\d.]+ tokens\/s/m)

    const json = await llmesh(
      'run',
      model.path,
      'hello mesh',
      '--max-tokens',
      '6',
      '--temperature',
      '0',
      '--json',
      ...cpu,
    )
    expect(json.code).toBe(0)
    const result = JSON.parse(json.out)
    expect(result.usage.completionTokens).toBe(6)
    expect(`${result.text}\n`).toBe(human.out)
  })

  it('refuses a malformed GGUF with exit code 3 and the reason, instead of crashing', async () => {
    const broken = await writeTinyGguf(at('broken.gguf'), {
      omitMetadataKeys: ['llama.feed_forward_length'],
    })
    const result = await llmesh('run', broken.path, 'hello', ...cpu)
    expect(result.code).toBe(exitCodes.invalidInput)
    expect(result.err).toContain('llama.feed_forward_length is missing')
  })

  it('chats one line at a time, keeping the conversation', async () => {
    const model = await writeTinyGguf(at('chat.gguf'), { seed: 9 })
    const io = { ...captureIo(), stdin: Readable.from(['hello\n', 'and again\n', '\n']) }
    const code = await run(
      ['chat', model.path, '--max-tokens', '4', '--temperature', '0', '--json', ...cpu],
      { io },
    )
    expect(code).toBe(0)
    const answers = io
      .out()
      .trim()
      .split('\n')
      .map((line) => JSON.parse(line))
    expect(answers).toHaveLength(2)
    expect(answers.every((answer) => answer.role === 'assistant')).toBe(true)
    // The second question is asked with the first exchange before it.
    expect(answers[1].usage.promptTokens).toBeGreaterThan(answers[0].usage.promptTokens + 4)
  })

  it('serves a pulled model over the OpenAI API once its smoke test passes, until stopped', async () => {
    const model = await writeTinyGguf(at('serve.gguf'), { seed: 10 })
    await using mirror = await startMirror({ files: { '/models/serve.gguf': model.path } })
    const store = at('store')
    expect(
      (
        await llmesh(
          'manifest',
          'create',
          model.path,
          '--id',
          'acme/served',
          '--model-version',
          '1.0.0',
          '--mirror',
          `${mirror.url}/models/`,
          '--allow-insecure-mirrors',
          '--out',
          at('served.manifest.json'),
        )
      ).code,
    ).toBe(0)
    expect(
      (
        await llmesh(
          'pull',
          at('served.manifest.json'),
          '--store',
          store,
          '--allow-unsigned',
          '--allow-insecure-mirrors',
        )
      ).code,
    ).toBe(0)

    const stop = new AbortController()
    let onLine: (line: Record<string, unknown>) => void = () => {}
    const io = captureIo()
    const stdout = io.stdout
    io.stdout = (text) => {
      stdout(text)
      for (const line of text.trim().split('\n')) onLine(JSON.parse(line))
    }
    let listeningUrl: string | undefined
    const ready = new Promise<string>((resolve) => {
      onLine = (line) => {
        if (line.event === 'ready') resolve(String(listeningUrl))
        if (line.event === 'listening') listeningUrl = String(line.url)
      }
    })
    const serving = run(
      ['serve', '--models', 'acme/served', '--port', '0', '--store', store, '--json', ...cpu],
      { io, signal: stop.signal },
    )
    const url = await Promise.race([
      ready,
      serving.then((code) => {
        throw new Error(`serve ended with ${code}: ${io.err()}${io.out()}`)
      }),
    ])
    const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', maxRetries: 0 })
    const answer = await client.chat.completions.create({
      model: 'acme/served',
      messages: [{ role: 'user', content: 'hello' }],
      max_tokens: 3,
    })
    expect(answer.usage!.completion_tokens).toBe(3)
    stop.abort()
    expect(await serving).toBe(0)
    expect(io.out()).toContain('"event":"backend-check","ok":true,"backend":"cpu"')
    expect(io.out()).toContain('"event":"smoke-test"')

    const reopened = await ModelStore.open({ root: store })
    try {
      expect(reopened.resolve('acme/served').status).toBe('available')
    } finally {
      reopened.close()
    }
  })

  it('reports the machine and the store, and decodes on the backend in a child process', async () => {
    const result = await llmesh('doctor', '--backend', 'cpu', '--store', at('store'), '--json')
    expect(result.code).toBe(0)
    const report = JSON.parse(result.out)
    expect(report.hardware.backend).toBe('cpu')
    expect(report.hardware.ram.totalBytes).toBeGreaterThan(0)
    expect(report.check).toMatchObject({ ok: true, backend: 'cpu', layersOffloaded: 0 })
    expect(report.check.tokens).toBeGreaterThan(0)
    expect(report.store.models).toBe(1)
    expect(report.store.statuses).toEqual({ available: 1 })

    const unchecked = await llmesh(
      'doctor',
      '--backend',
      'cpu',
      '--store',
      at('store'),
      '--no-check',
    )
    expect(unchecked.code).toBe(0)
    expect(unchecked.out).not.toMatch(/^decode/m)
  })

  it("exits 4 with llama.cpp's words when the backend cannot decode, before serving", async () => {
    await withDecodeAborting(async () => {
      const result = await llmesh('doctor', '--backend', 'cpu', '--store', at('store'))
      expect(result.code).toBe(exitCodes.verificationFailed)
      expect(result.out).toMatch(
        /^decode +FAILED: llama\.cpp ended the check process \(SIGABRT\) on the cpu backend: CUDA error: no kernel image/m,
      )
      expect(result.err).toMatch(/could not decode on the cpu backend/)

      // With --json, stdout stays one document (the report) and the error goes to stderr.
      const json = await llmesh('doctor', '--backend', 'cpu', '--store', at('store'), '--json')
      expect(json.code).toBe(exitCodes.verificationFailed)
      expect(JSON.parse(json.out).check).toMatchObject({ ok: false })
      expect(JSON.parse(json.err).error.code).toBe('LLMESH_BACKEND_CHECK_FAILED')

      const serveArguments = [
        'serve',
        '--models',
        'acme/served',
        '--port',
        '0',
        '--store',
        at('store'),
      ]
      const serve = await llmesh(...serveArguments, ...cpu)
      expect(serve.code).toBe(exitCodes.verificationFailed)
      expect(serve.err).toMatch(/could not decode on the cpu backend: .*CUDA error/)
      expect(serve.err).not.toMatch(/serving/)

      // With --json, serve streams JSON lines, and the failure is one more line.
      const lines = await llmesh(...serveArguments, '--json', ...cpu)
      const events = lines.out
        .trim()
        .split('\n')
        .map((line) => JSON.parse(line))
      expect(events[0]).toMatchObject({ event: 'backend-check', ok: false })
      expect(events.at(-1).error.code).toBe('LLMESH_BACKEND_CHECK_FAILED')
    })
  })
})

/**
 * Runs `body` while the backend check's child dies as llama.cpp makes it die with a CUDA build
 * that does not fit the driver. The variable reaches only processes started from here, and
 * node-llama-cpp starts some of its own, so the stand-in acts in the check's child alone.
 */
async function withDecodeAborting(body: () => Promise<void>): Promise<void> {
  const abort = at('aborts.mjs')
  await writeFile(
    abort,
    [
      "if (process.argv[1]?.endsWith('backend-check-child.js')) {",
      "  process.stderr.write('llama.cpp error: CUDA error: no kernel image is available for execution on the device\\n')",
      "  process.kill(process.pid, 'SIGABRT')",
      '}',
    ].join('\n'),
  )
  const before = process.env.NODE_OPTIONS
  process.env.NODE_OPTIONS = `--import=${pathToFileURL(abort).href}`
  try {
    await body()
  } finally {
    if (before === undefined) delete process.env.NODE_OPTIONS
    else process.env.NODE_OPTIONS = before
  }
}
