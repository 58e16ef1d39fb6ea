/**
 * Generates with node-llama-cpp's own defaults (no thread count given), in a process of its own
 * so that nothing set by the benchmark's engine leaks in. Prints one JSON line.
 *
 *   node bench/library-default-child.ts <model.gguf> <tokens>
 */
import { getLlama, LlamaCompletion, LlamaLogLevel } from 'node-llama-cpp'

const [path, tokens] = process.argv.slice(2)
const llama = await getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error })
const model = await llama.loadModel({ modelPath: path! })
const context = await model.createContext({ contextSize: 512 })
const completion = new LlamaCompletion({ contextSequence: context.getSequence() })
let generated = 0
const started = performance.now()
await completion.generateCompletion('hello world', {
  maxTokens: Number(tokens),
  temperature: 0,
  onToken: (chunk) => {
    generated += chunk.length
  },
})
const seconds = (performance.now() - started) / 1000
console.log(
  JSON.stringify({
    threads: context.currentThreads,
    tokens: generated,
    seconds,
    tokensPerSecond: generated / seconds,
  }),
)
await llama.dispose()
