/**
 * Inference figures on a testkit model (`bigger`, about 70 MB in F16, unless `--model large`, about
 * 2 GB, for a GPU), each against its anchor in the same run:
 *   1. tokens per second through llmesh's engine against raw node-llama-cpp (LlamaCompletion on
 *      a context of its own), same file, same thread count, runs interleaved;
 *   2. aggregate tokens per second of 1 to 8 concurrent requests on one loaded model;
 *   3. time to first token through the HTTP server (undici, streaming) against in-process;
 *   4. node-llama-cpp's default thread count against llmesh's choice (a child process).
 *
 *   node bench/inference.bench.ts [--runs 5] [--tokens 128] [--smoke] [--backend cuda] [--model large]
 *
 * Writes bench/results/inference.json and the table in README.md (not in --smoke mode). With a GPU
 * backend every layer is offloaded, figure 4 (a CPU matter) is left out, and the figures go to
 * bench/results/inference-<backend>.json and the README's GPU table; with `--model large`, to
 * files and tables of their own (`-large`).
 */
import { execFile } from 'node:child_process'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { cpus } from 'node:os'
import { join } from 'node:path'
import { parseArgs, promisify } from 'node:util'
import {
  createInferenceEngine,
  createModelPool,
  createNodeServer,
  type InferenceEngineOptions,
} from '@llmesh/inference'
import {
  createTempDir,
  type TinyModelPreset,
  tinyModelPresets,
  writeTinyGguf,
} from '@llmesh/testkit'
import { LlamaCompletion } from 'node-llama-cpp'
import { request } from 'undici'

const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '7' },
    tokens: { type: 'string', default: '128' },
    smoke: { type: 'boolean', default: false },
    /** Some of: throughput, concurrency, first-token, threads (a partial run writes nothing). */
    only: { type: 'string' },
    /** cpu (default), cuda, vulkan, metal or auto. */
    backend: { type: 'string', default: 'cpu' },
    /** llama.cpp threads; default the engine's choice. */
    threads: { type: 'string' },
    /** The testkit preset to measure: bigger (default) or large. */
    model: { type: 'string', default: 'bigger' },
  },
})
if (!(values.model in tinyModelPresets) || values.model === 'tiny')
  throw new Error(`--model must be bigger or large, not "${values.model}"`)
const preset = values.model as TinyModelPreset
const sections = new Set(
  values.only?.split(',') ?? ['throughput', 'concurrency', 'first-token', 'threads'],
)
const complete = values.only === undefined
const smoke = values.smoke
const runs = smoke ? 1 : Number(values.runs)
const tokens = smoke ? 8 : Number(values.tokens)
// One request's rate varies by a tenth from one run to the next (a fifth on the GPU machine), so
// the engine-against-raw ratio needs many rounds; each is short.
const throughputRounds = smoke ? 1 : Math.max(runs, 41)
const prompt = 'hello world, the mesh of nodes'

const median = (numbers: number[]) => {
  const sorted = [...numbers].sort((first, second) => first - second)
  const middle = sorted.length >> 1
  return sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2
}

await using directory = await createTempDir()
const model = await writeTinyGguf(join(directory.path, `${preset}.gguf`), smoke ? 'tiny' : preset)
const engine = await createInferenceEngine({
  backend: values.backend as InferenceEngineOptions['backend'],
  ...(values.threads === undefined ? {} : { threads: Number(values.threads) }),
})
const threads = engine.threads
const onGpu = engine.backend !== 'cpu'
const gpuLayers = onGpu ? 'max' : 0
const hardware = await engine.hardware()
// A point of the curve takes seconds on the CPU and a fraction of one on a GPU.
const concurrencyRuns = smoke ? 1 : onGpu ? 9 : Math.min(runs, 3)
console.log(
  `model ${(model.size / 1024 / 1024).toFixed(1)} MiB, ${threads} thread(s), ${cpus().length} cores, backend ${engine.backend} ${hardware.devices.join(', ')}`,
)

/** 1. Engine against raw node-llama-cpp. */
async function measureThroughput() {
  const rawModel = await engine.llama.loadModel({ modelPath: model.path, gpuLayers })
  const rawContext = await rawModel.createContext({ contextSize: 512, sequences: 1, threads })
  const rawSequence = rawContext.getSequence()
  const loaded = await engine.loadModel(model.path, { contextSize: 512, slots: 1, gpuLayers })
  const layersOffloaded = loaded.model.gpuLayers
  const totalLayers = loaded.model.fileInsights.totalLayers
  // The anchor streams the answer's text as the engine does (`onTextChunk`, which detokenizes
  // each token); the bare token loop (`onToken`) is measured too, to show what streaming text costs.
  const measureRaw = async (streamText: boolean) => {
    // A fresh LlamaCompletion each time, as the engine makes one per request.
    const completion = new LlamaCompletion({ contextSequence: rawSequence })
    const before = rawSequence.tokenMeter.getState()
    const started = performance.now()
    await completion.generateCompletion(prompt, {
      maxTokens: tokens,
      temperature: 0,
      ...(streamText ? { onTextChunk: () => {} } : { onToken: () => {} }),
    })
    const seconds = (performance.now() - started) / 1000
    completion.dispose({ disposeSequence: false })
    return rawSequence.tokenMeter.diff(before).usedOutputTokens / seconds
  }
  const measureEngine = async () => {
    const started = performance.now()
    const result = await loaded.complete(prompt, { maxTokens: tokens, temperature: 0 }).result
    return result.usage.completionTokens / ((performance.now() - started) / 1000)
  }
  const measures = {
    raw: () => measureRaw(true),
    engine: measureEngine,
    rawTokensOnly: () => measureRaw(false),
  }
  const rates: Record<keyof typeof measures, number[]> = { raw: [], engine: [], rawTokensOnly: [] }
  const order = Object.keys(measures) as Array<keyof typeof measures>
  // The first round warms all three up; the order rotates so that none always runs first.
  for (let run = 0; run < throughputRounds + 1; run++) {
    for (let step = 0; step < order.length; step++) {
      const name = order[(run + step) % order.length]!
      const rate = await measures[name]()
      if (run > 0) rates[name].push(rate)
    }
  }
  await loaded.dispose()
  await rawContext.dispose()
  await rawModel.dispose()
  return {
    rawTokensPerSecond: median(rates.raw),
    engineTokensPerSecond: median(rates.engine),
    rawTokensOnlyPerSecond: median(rates.rawTokensOnly),
    // Each round's engine rate over the raw rate of the same round: the machine's speed drifts
    // during a run (on a GPU both fell by a fifth over 7 rounds), and a round shares the drift.
    ratio: median(rates.engine.map((rate, index) => rate / rates.raw[index]!)),
    layersOffloaded,
    totalLayers,
    runs: rates,
  }
}

/** 2. Concurrency curve on one model with 8 slots. */
async function measureConcurrency() {
  const concurrentModel = await engine.loadModel(model.path, {
    contextSize: 512,
    slots: 8,
    gpuLayers,
  })
  const curve: Array<{ concurrent: number; tokensPerSecond: number }> = []
  for (const concurrent of smoke ? [1, 2] : [1, 2, 3, 4, 5, 6, 7, 8]) {
    const rates: number[] = []
    for (let run = 0; run < concurrencyRuns; run++) {
      const started = performance.now()
      const results = await Promise.all(
        Array.from(
          { length: concurrent },
          (_, index) =>
            concurrentModel.complete(`${prompt} ${index}`, {
              maxTokens: tokens,
              temperature: 0.8,
              seed: index + run * 10,
            }).result,
        ),
      )
      const seconds = (performance.now() - started) / 1000
      rates.push(results.reduce((sum, result) => sum + result.usage.completionTokens, 0) / seconds)
    }
    curve.push({ concurrent, tokensPerSecond: median(rates) })
  }
  await concurrentModel.dispose()
  const single = curve[0]!.tokensPerSecond
  const four = curve.find((point) => point.concurrent === 4)?.tokensPerSecond ?? 0
  return { curve, single, four, fourOverOne: four / single }
}

/** 3. Time to first token: HTTP against in-process, interleaved. */
async function measureFirstToken() {
  const pool = createModelPool({ engine, contextSize: 512, slots: 1, gpuLayers })
  const server = createNodeServer({ pool, models: [model.path] })
  await server.ready
  const listening = await server.listen()
  const inProcess: number[] = []
  const overHttp: number[] = []
  const ttftRuns = smoke ? 2 : 40
  const messages = [{ role: 'user' as const, content: prompt }]
  for (let run = 0; run < ttftRuns + 2; run++) {
    let started = performance.now()
    const generation = await pool.chat(model.path, messages, { maxTokens: 4, temperature: 0 })
    for await (const _chunk of generation) break
    const local = performance.now() - started
    await generation.result

    started = performance.now()
    const response = await request(`${listening.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        model: model.path,
        messages,
        max_tokens: 4,
        temperature: 0,
        stream: true,
      }),
    })
    let remote = 0
    for await (const chunk of response.body) {
      if (
        remote === 0 &&
        String(chunk).includes('"content":"') &&
        !String(chunk).endsWith('"content":""}')
      ) {
        remote = performance.now() - started
      }
    }
    if (remote === 0) remote = performance.now() - started
    if (run < 2) continue
    inProcess.push(local)
    overHttp.push(remote)
  }
  await listening.close()
  await pool.close()
  return {
    inProcessMs: median(inProcess),
    httpMs: median(overHttp),
    addedMs: median(overHttp) - median(inProcess),
    runs: ttftRuns,
  }
}

/** 4. The library's default thread count, in a child process. */
async function measureLibraryDefault(): Promise<{ threads: number; tokensPerSecond: number }> {
  const { stdout } = await promisify(execFile)(
    process.execPath,
    [new URL('./library-default-child.ts', import.meta.url).pathname, model.path, '16'],
    { timeout: 300_000 },
  )
  return JSON.parse(stdout.trim().split('\n').at(-1)!)
}

const throughput = sections.has('throughput') ? await measureThroughput() : undefined
console.log('1. engine vs raw', throughput)
const concurrency = sections.has('concurrency') ? await measureConcurrency() : undefined
console.log('2. concurrency', concurrency)
const firstToken = sections.has('first-token') ? await measureFirstToken() : undefined
console.log('3. time to first token', firstToken)
const libraryDefault =
  sections.has('threads') && !smoke && !onGpu ? await measureLibraryDefault() : undefined
console.log('4. library default threads', libraryDefault)
await engine.dispose()

const results = {
  date: new Date().toISOString().slice(0, 10),
  cpu: cpus()[0]?.model.trim(),
  cores: cpus().length,
  node: process.version,
  backend: engine.backend,
  devices: hardware.devices,
  vramBytes: hardware.vram.totalBytes,
  modelBytes: model.size,
  tokens,
  threads,
  throughput,
  concurrency,
  firstToken,
  libraryDefault,
}

const number = (value: number, digits = 1) => value.toFixed(digits)
const table = [
  '| figure | llmesh | anchor | ratio | target |',
  '| --- | --- | --- | --- | --- |',
  ...(throughput === undefined
    ? []
    : [
        `| generation, 1 request (${tokens} tokens) | ${number(throughput.engineTokensPerSecond)} tok/s | raw node-llama-cpp ${number(throughput.rawTokensPerSecond)} tok/s (tokens only: ${number(throughput.rawTokensOnlyPerSecond)}) | ${number(throughput.ratio, 3)} | ≥ 0.97 |`,
      ]),
  ...(concurrency === undefined
    ? []
    : [
        `| 4 concurrent requests, aggregate | ${number(concurrency.four)} tok/s | 1 request ${number(concurrency.single)} tok/s | ${number(concurrency.fourOverOne, 2)} | ≥ 1.5 |`,
      ]),
  ...(firstToken === undefined
    ? []
    : [
        `| time to first token, median | HTTP ${number(firstToken.httpMs, 2)} ms | in-process ${number(firstToken.inProcessMs, 2)} ms | +${number(firstToken.addedMs, 2)} ms | ≤ +2 ms |`,
      ]),
  ...(libraryDefault === undefined || throughput === undefined
    ? []
    : [
        `| thread count | ${threads} thread(s): ${number(throughput.engineTokensPerSecond)} tok/s | node-llama-cpp default, ${libraryDefault.threads} threads: ${number(libraryDefault.tokensPerSecond)} tok/s | ${number(throughput.engineTokensPerSecond / libraryDefault.tokensPerSecond, 0)}× | |`,
      ]),
  ...(concurrency === undefined
    ? []
    : [
        '',
        `| concurrent requests | ${concurrency.curve.map((point) => point.concurrent).join(' | ')} |`,
        `| --- | ${concurrency.curve.map(() => '---').join(' | ')} |`,
        `| aggregate tok/s | ${concurrency.curve.map((point) => number(point.tokensPerSecond)).join(' | ')} |`,
      ]),
].join('\n')
console.log(table)

if (!smoke && complete && throughput && concurrency && firstToken) {
  const resultsFolder = new URL('./results/', import.meta.url).pathname
  await mkdir(resultsFolder, { recursive: true })
  const suffix = `${onGpu ? `-${engine.backend}` : ''}${preset === 'bigger' ? '' : `-${preset}`}`
  await writeFile(
    join(resultsFolder, `inference${suffix}.json`),
    `${JSON.stringify({ ...results, model: preset }, null, 2)}\n`,
  )
  const machine = onGpu
    ? `${engine.backend.toUpperCase()} backend on ${hardware.devices.join(', ')} (${(hardware.vram.totalBytes / 1024 ** 3).toFixed(0)} GiB), ${throughput.layersOffloaded} of ${throughput.totalLayers} layers offloaded, ${threads} CPU thread(s) of ${results.cores} cores`
    : `${results.cores} cores (${results.cpu}), CPU backend`
  const readme = new URL('../README.md', import.meta.url).pathname
  const text = await readFile(readme, 'utf8').catch(() => '')
  const section = `bench:inference${onGpu ? '-gpu' : ''}${preset === 'bigger' ? '' : `-${preset}`}`
  const start = `<!-- ${section}:start -->`
  const end = `<!-- ${section}:end -->`
  if (text.includes(start))
    await writeFile(
      readme,
      `${text.slice(0, text.indexOf(start) + start.length)}\n${table}\n\nMeasured ${results.date} with the ${machine}, Node ${process.version}, the testkit's \`${preset}\` model (${(model.size / 1024 / 1024).toFixed(0)} MiB), medians of ${throughputRounds} rounds for generation, ${concurrencyRuns} runs per point of the curve, ${firstToken.runs} for time to first token. Reproduce: \`pnpm --filter @llmesh/inference bench${onGpu ? ` --backend ${engine.backend}` : ''}${preset === 'bigger' ? '' : ` --model ${preset}`}\`.\n${text.slice(text.indexOf(end))}`,
    )
}
