/**
 * @packageDocumentation
 * Chooses the best llmesh node for each request and fails over without losing it: power of two
 * choices on a peak-EWMA latency cost, outlier ejection with probes, a retry budget, first-token
 * and idle deadlines, and server-sent events passed through untouched. Embed the gateway's
 * `listener` in any Node HTTP server, or `listen()`.
 *
 * @example
 * ```ts
 * import { createGateway, staticNodeSource } from '@llmesh/router'
 *
 * const gateway = createGateway({
 *   nodes: staticNodeSource([
 *     { id: 'a', url: 'http://10.0.0.1:8080', models: [{ id: 'acme/tiny' }] },
 *     { id: 'b', url: 'http://10.0.0.2:8080', models: [{ id: 'acme/tiny' }] },
 *   ]),
 *   policy: { aliases: { fast: 'acme/tiny' } },
 * })
 * const { url } = await gateway.listen({ port: 8000 })
 * // Point any OpenAI client at `${url}/v1`.
 * ```
 */
export { Balancer, type BalancerOptions, type Choice } from './balancer.js'
export {
  createGateway,
  type Gateway,
  type GatewayOptions,
  type NodeUsage,
  type RouterState,
} from './gateway.js'
export {
  type ModelPolicy,
  type ModelPolicyInput,
  modelPolicySchema,
  type ResolvedModel,
  resolveModel,
} from './model-policy.js'
export {
  defaultHealthPolicy,
  type HealthPolicy,
  type NodeCondition,
  NodeHealth,
  type NodeHealthView,
} from './node-health.js'
export {
  type NodeSource,
  type RouterNode,
  type RouterNodeModel,
  registryNodeSource,
  routerNodeSchema,
  staticNodeSource,
} from './node-source.js'
export { RetryBudget, type RetryBudgetOptions } from './retry-budget.js'
