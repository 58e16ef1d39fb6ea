/**
 * `llmesh run`, `chat`, `serve` and `doctor`: the inference package on the command line.
 */
import { statfs } from 'node:fs/promises'
import { createInterface } from 'node:readline'
import { LlmeshError } from '@llmesh/core'
import type { ModelStore } from '@llmesh/downloader'
import {
  type Backend,
  type ChatMessage,
  createInferenceEngine,
  createModelPool,
  createNodeServer,
  type Generation,
  type InferenceEngine,
  InferenceError,
  type ModelPool,
  runSmokeTest,
  storeModelResolver,
} from '@llmesh/inference'
import bytes from 'bytes'
import { type Command, Option } from 'commander'
import type { CommandContext } from '../program.js'
import { checkDecodes, describeCheck, requireDecodes, requirePassed } from './backend-check.js'
import { parseByteSize, parseInteger } from './option-parsers.js'
import { withOpenStore, withStore } from './store.js'

interface EngineOptions {
  store?: string
  backend: 'auto' | Backend
  threads?: number
  contextSize?: number
  gpuLayers?: number | 'auto' | 'max'
}

interface SamplingFlags {
  maxTokens: number
  temperature: number
  seed?: number
}

function withEngine(command: Command): Command {
  return withStore(command)
    .addOption(
      new Option('--backend <backend>', 'llama.cpp backend')
        .choices(['auto', 'cpu', 'cuda', 'vulkan', 'metal'])
        .default('auto'),
    )
    .option(
      '--threads <count>',
      'CPU threads for llama.cpp (default: all math cores but one)',
      parseInteger,
    )
    .option(
      '--context-size <tokens>',
      "tokens per request (default: the manifest's, else up to 4096)",
      parseInteger,
    )
    .option(
      '--gpu-layers <count>',
      "layers to offload: a count, max or auto (default: the manifest's, else auto)",
      parseGpuLayers,
    )
}

function parseGpuLayers(value: string): number | 'auto' | 'max' {
  return value === 'auto' || value === 'max' ? value : parseInteger(value)
}

function withSampling(command: Command): Command {
  return command
    .option('--max-tokens <count>', 'most tokens to generate', parseInteger, 256)
    .option('--temperature <value>', '0 always gives the same answer', parseFloat, 0.7)
    .option('--seed <value>', 'sampling seed, for repeatable answers', parseInteger)
}

/** Starts the engine and a pool over the store, runs `body`, and frees everything afterwards. */
async function withPool<Result>(
  options: EngineOptions & {
    slots?: number
    maxQueue?: number
    memoryBudget?: number
    keepAlive?: number
  },
  body: (pool: ModelPool, store: ModelStore, engine: InferenceEngine) => Promise<Result>,
): Promise<Result> {
  return withOpenStore(options, async (store) => {
    const engine = await createInferenceEngine({
      backend: options.backend,
      ...(options.threads === undefined ? {} : { threads: options.threads }),
    })
    const pool = createModelPool({
      engine,
      resolve: storeModelResolver(store),
      slots: options.slots ?? 1,
      ...(options.maxQueue === undefined ? {} : { maxQueue: options.maxQueue }),
      ...(options.contextSize === undefined ? {} : { contextSize: options.contextSize }),
      ...(options.gpuLayers === undefined ? {} : { gpuLayers: options.gpuLayers }),
      ...(options.memoryBudget === undefined ? {} : { budget: { ramBytes: options.memoryBudget } }),
      ...(options.keepAlive === undefined ? {} : { keepAliveMs: options.keepAlive * 1000 }),
    })
    try {
      return await body(pool, store, engine)
    } finally {
      await pool.close()
      await engine.dispose()
    }
  })
}

/** Streams a generation's text to stdout (not in JSON mode) and returns its outcome. */
async function streamOut(context: CommandContext, generation: Generation) {
  const output = context.output()
  for await (const chunk of generation) if (!output.json) context.io.stdout(chunk.text)
  const result = await generation.result
  if (!output.json) context.io.stdout('\n')
  output.info(
    `${result.usage.completionTokens} tokens, ${result.timings.tokensPerSecond.toFixed(1)} tokens/s, first token after ${(result.timings.firstTokenMs ?? 0).toFixed(0)} ms (${result.finishReason})`,
  )
  return result
}

export function registerInferenceCommands(program: Command, context: CommandContext): void {
  withSampling(
    withEngine(
      program
        .command('run')
        .description('answer one prompt with a model from the store (id[@version]) or a GGUF file')
        .argument('<model>', 'id, id@version, sha256:<digest> or a path')
        .argument('<prompt...>', 'the prompt')
        .option('--raw', 'continue the prompt as plain text instead of chatting'),
    ),
  ).action(
    async (
      model: string,
      prompt: string[],
      options: EngineOptions & SamplingFlags & { raw?: boolean },
    ) =>
      withPool(options, async (pool) => {
        const text = prompt.join(' ')
        const sampling = samplingOf(options, context.signal)
        const generation = options.raw
          ? await pool.complete(model, text, sampling)
          : await pool.chat(model, [{ role: 'user', content: text }], sampling)
        const result = await streamOut(context, generation)
        context.output().line({ model, ...result })
      }),
  )

  withSampling(
    withEngine(
      program
        .command('chat')
        .description('chat with a model, one line per message; an empty line or Ctrl-D ends')
        .argument('<model>', 'id, id@version, sha256:<digest> or a path')
        .option('--system <text>', 'a system message to start with'),
    ),
  ).action(async (model: string, options: EngineOptions & SamplingFlags & { system?: string }) =>
    withPool(options, async (pool) => {
      const output = context.output()
      const stdin = context.io.stdin
      if (stdin === undefined)
        throw new LlmeshError({ code: 'LLMESH_USAGE', message: 'llmesh chat needs a terminal' })
      await pool.preload(model, { signal: context.signal })
      output.info(`chatting with ${model}; an empty line or Ctrl-D ends`)
      const history: ChatMessage[] =
        options.system === undefined ? [] : [{ role: 'system', content: options.system }]
      const lines = createInterface({ input: stdin, terminal: false })
      try {
        if (context.io.interactive) context.io.stderr('> ')
        for await (const line of lines) {
          if (line.trim() === '') break
          history.push({ role: 'user', content: line })
          const generation = await pool.chat(model, history, samplingOf(options, context.signal))
          const result = await streamOut(context, generation)
          output.line({ role: 'assistant', content: result.text, usage: result.usage })
          history.push({ role: 'assistant', content: result.text })
          if (context.io.interactive) context.io.stderr('> ')
        }
      } finally {
        lines.close()
      }
    }),
  )

  withEngine(
    program
      .command('serve')
      .description(
        'serve models over the OpenAI API (/v1/chat/completions, /v1/completions, /v1/models, /health, /metrics) until Ctrl-C; each model serves only after its smoke test passes',
      )
      .requiredOption('--models <model...>', 'models to serve: id, id@version or a path')
      .option('--port <port>', 'port to listen on', parseInteger, 8080)
      .option('--host <host>', 'address to listen on', '127.0.0.1')
      .option('--slots <count>', 'requests decoded together per model', parseInteger, 4)
      .option('--max-queue <count>', 'requests that may wait per model', parseInteger, 16)
      .option(
        '--memory-budget <size>',
        'RAM the loaded models may take, such as 8GB',
        parseByteSize,
      )
      .option('--keep-alive <seconds>', 'unload a model idle this long', parseInteger)
      .option('--skip-smoke-test', 'serve models whose smoke test has not passed (not recommended)')
      .option(
        '--no-check',
        'skip the decode check before serving (a tiny model run on the backend in a child process)',
      ),
  ).action(
    async (
      options: EngineOptions & {
        models: string[]
        port: number
        host: string
        slots: number
        maxQueue: number
        memoryBudget?: number
        keepAlive?: number
        skipSmokeTest?: boolean
        check: boolean
      },
    ) =>
      withPool(options, async (pool, store, engine) => {
        const output = context.output()
        if (options.check) {
          // A GPU build that does not fit the driver would abort this process at the first
          // decode, smoke tests included; in a child it is an error with llama.cpp's reason.
          await requireDecodes(engine.backend, {
            threads: options.threads,
            signal: context.signal,
            output,
          })
        }
        const models = options.models.flatMap((entry) => entry.split(',')).filter(Boolean)
        const serving: string[] = []
        for (const model of models) {
          if (options.skipSmokeTest || isAvailable(store, model)) {
            serving.push(model)
            continue
          }
          output.info(`${model}: running its smoke test`)
          const result = await runSmokeTest({ pool, store, model, signal: context.signal })
          output.line({ event: 'smoke-test', ...result })
          if (result.passed) {
            output.info(`${model}: smoke test passed in ${result.seconds.toFixed(2)} s`)
            serving.push(model)
          } else output.info(`${model}: smoke test failed, not serving it: ${result.reason}`)
        }
        if (serving.length === 0)
          throw new InferenceError({
            code: 'LLMESH_SMOKE_TEST_FAILED',
            message: 'No model passed its smoke test; nothing to serve.',
          })
        const server = createNodeServer({ pool, models: serving })
        const listening = await server.listen({ port: options.port, host: options.host })
        output.info(`serving ${serving.join(', ')} on ${listening.url}/v1; Ctrl-C stops it`)
        output.line({ event: 'listening', url: listening.url, models: serving })
        await server.ready
        output.line({ event: 'ready' })
        await new Promise<void>((resolve) => {
          if (context.signal.aborted) resolve()
          else context.signal.addEventListener('abort', () => resolve(), { once: true })
        })
        await listening.close()
        output.info('stopped')
      }),
  )

  withStore(
    program
      .command('doctor')
      .description(
        'what this machine can run: backend, devices, memory, CPU and the store, and a decode on the backend in a child process',
      )
      .addOption(
        new Option('--backend <backend>', 'llama.cpp backend to try')
          .choices(['auto', 'cpu', 'cuda', 'vulkan', 'metal'])
          .default('auto'),
      )
      .option(
        '--no-check',
        'skip the decode check (a tiny model loaded and run in a child process)',
      ),
  ).action(async (options: { store?: string; backend: 'auto' | Backend; check: boolean }) =>
    withOpenStore(options, async (store) => {
      const engine = await createInferenceEngine({ backend: options.backend })
      try {
        const hardware = await engine.hardware()
        // The check asks for the backend the engine took, so that `auto` checks what serving uses.
        const check = options.check
          ? await checkDecodes(hardware.backend, { signal: context.signal })
          : undefined
        const usage = await store.usage()
        const disk = await statfs(store.root)
        const models = store.list()
        const statuses: Record<string, number> = {}
        for (const model of models) statuses[model.status] = (statuses[model.status] ?? 0) + 1
        const report = {
          hardware,
          ...(check === undefined ? {} : { check }),
          node: process.version,
          store: {
            root: store.root,
            models: models.length,
            statuses,
            blobBytes: usage.blobBytes,
            freeBytes: disk.bavail * disk.bsize,
          },
        }
        const size = (value: number) => bytes.format(value, { unitSeparator: ' ' }) ?? String(value)
        context.output().result(
          report,
          [
            `backend      ${hardware.backend}${hardware.devices.length > 0 ? ` (${hardware.devices.join(', ')})` : ''}`,
            ...(check === undefined ? [] : [`decode       ${describeCheck(check)}`]),
            `VRAM         ${hardware.backend === 'cpu' ? 'none' : `${size(hardware.vram.freeBytes)} free of ${size(hardware.vram.totalBytes)}`}`,
            `RAM          ${size(hardware.ram.freeBytes)} free of ${size(hardware.ram.totalBytes)}`,
            `CPU          ${hardware.cpu.model}, ${hardware.cpu.logicalCores} logical cores, ${hardware.cpu.mathCores} for math`,
            `threads      ${hardware.threads}`,
            `llama.cpp    ${hardware.llamaCpp}`,
            `Node         ${process.version}`,
            `store        ${store.root}`,
            `models       ${models.length}${
              models.length === 0
                ? ''
                : ` (${Object.entries(statuses)
                    .map(([status, count]) => `${count} ${status}`)
                    .join(', ')})`
            }`,
            `blobs        ${size(usage.blobBytes)}, ${size(disk.bavail * disk.bsize)} free on disk`,
          ].join('\n'),
        )
        if (check !== undefined) requirePassed(check, hardware.backend)
      } finally {
        await engine.dispose()
      }
    }),
  )
}

function samplingOf(options: SamplingFlags, signal: AbortSignal) {
  return {
    maxTokens: options.maxTokens,
    temperature: options.temperature,
    ...(options.seed === undefined ? {} : { seed: options.seed }),
    signal,
  }
}

function isAvailable(store: ModelStore, model: string): boolean {
  try {
    return store.resolve(model).status === 'available'
  } catch {
    return false
  }
}
