/** The gateway's Prometheus metrics, on a registry of its own. */
import { Counter, Gauge, Registry } from 'prom-client'
import type { RouterState } from './gateway.js'

export type GatewayMetrics = ReturnType<typeof createGatewayMetrics>

export function createGatewayMetrics(state: () => RouterState) {
  const registry = new Registry()
  const requests = new Counter({
    name: 'llmesh_router_requests_total',
    help: 'Requests answered, by model, node and status (broken: a stream that failed mid-way).',
    labelNames: ['model', 'node', 'status'] as const,
    registers: [registry],
  })
  const retries = new Counter({
    name: 'llmesh_router_retries_total',
    help: 'Attempts on another node after a failure before the first byte.',
    registers: [registry],
  })
  const ejections = new Counter({
    name: 'llmesh_router_ejections_total',
    help: 'Times a node was ejected after failures in a row, by node.',
    labelNames: ['node'] as const,
    registers: [registry],
  })
  const tokens = new Counter({
    name: 'llmesh_router_tokens_total',
    help: 'Tokens served, by node, model and kind (prompt or completion).',
    labelNames: ['node', 'model', 'kind'] as const,
    registers: [registry],
  })
  new Gauge({
    name: 'llmesh_router_in_flight',
    help: 'Requests in flight, by node.',
    labelNames: ['node'] as const,
    registers: [registry],
    collect() {
      this.reset()
      for (const node of state().nodes) this.set({ node: node.id }, node.inFlight)
    },
  })
  new Gauge({
    name: 'llmesh_router_node_ejected',
    help: '1 while a node is ejected or probed, by node.',
    labelNames: ['node'] as const,
    registers: [registry],
    collect() {
      this.reset()
      for (const node of state().nodes)
        this.set({ node: node.id }, node.condition === 'healthy' ? 0 : 1)
    },
  })
  new Counter({
    name: 'llmesh_router_cost_total',
    help: 'Cost of the tokens served (token cost per 1k from the registry), by node and model.',
    labelNames: ['node', 'model'] as const,
    registers: [registry],
    collect() {
      this.reset()
      for (const entry of state().usage)
        this.inc({ node: entry.node, model: entry.model }, entry.cost)
    },
  })
  return { registry, requests, retries, ejections, tokens }
}
