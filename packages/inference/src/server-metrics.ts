/** The node server's Prometheus metrics, on a registry of its own (two servers in one process do not mix). */
import { Counter, Gauge, Histogram, Registry } from 'prom-client'
import type { ModelPool } from './model-pool.js'

export type ServerMetrics = ReturnType<typeof createServerMetrics>

export function createServerMetrics(pool: ModelPool) {
  const registry = new Registry()
  const requests = new Counter({
    name: 'llmesh_inference_requests_total',
    help: 'Inference requests answered, by endpoint, model and HTTP status.',
    labelNames: ['endpoint', 'model', 'status'] as const,
    registers: [registry],
  })
  const completionTokens = new Counter({
    name: 'llmesh_inference_tokens_generated_total',
    help: 'Tokens generated, by model.',
    labelNames: ['model'] as const,
    registers: [registry],
  })
  const promptTokens = new Counter({
    name: 'llmesh_inference_prompt_tokens_total',
    help: 'Prompt tokens processed, by model.',
    labelNames: ['model'] as const,
    registers: [registry],
  })
  const cancelled = new Counter({
    name: 'llmesh_inference_cancelled_total',
    help: 'Generations cancelled because the client went away, by model.',
    labelNames: ['model'] as const,
    registers: [registry],
  })
  const tokensPerSecond = new Histogram({
    name: 'llmesh_inference_tokens_per_second',
    help: 'Decoding speed of each request (after its first token), by model.',
    labelNames: ['model'] as const,
    buckets: [1, 5, 10, 20, 40, 80, 160, 320, 640, 1280],
    registers: [registry],
  })
  const timeToFirstToken = new Histogram({
    name: 'llmesh_inference_time_to_first_token_seconds',
    help: 'Seconds from the request to its first token, queueing included, by model.',
    labelNames: ['model'] as const,
    buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [registry],
  })
  const modelLoadSeconds = new Histogram({
    name: 'llmesh_inference_model_load_seconds',
    help: 'Seconds to validate and load a model, by model.',
    labelNames: ['model'] as const,
    buckets: [0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300],
    registers: [registry],
  })
  pool.events.on('model-loaded', ({ name, seconds }) =>
    modelLoadSeconds.observe({ model: name }, seconds),
  )
  // Read from the pool when scraped, so they are never stale.
  new Gauge({
    name: 'llmesh_inference_loaded_models',
    help: 'Models in memory.',
    registers: [registry],
    collect() {
      this.set(pool.loaded().length)
    },
  })
  new Gauge({
    name: 'llmesh_inference_queue_depth',
    help: 'Requests waiting for a slot, by model.',
    labelNames: ['model'] as const,
    registers: [registry],
    collect() {
      this.reset()
      for (const model of pool.loaded()) this.set({ model: model.name }, model.queued)
    },
  })
  new Gauge({
    name: 'llmesh_inference_in_flight',
    help: 'Requests generating now, by model.',
    labelNames: ['model'] as const,
    registers: [registry],
    collect() {
      this.reset()
      for (const model of pool.loaded()) this.set({ model: model.name }, model.inFlight)
    },
  })
  return {
    registry,
    requests,
    completionTokens,
    promptTokens,
    cancelled,
    tokensPerSecond,
    timeToFirstToken,
  }
}
