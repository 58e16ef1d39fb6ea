/**
 * @packageDocumentation
 * The llmesh registry's HTTP contract (zod schemas shared with the server, an OpenAPI document)
 * and a typed client with failover between registries, a heartbeat loop and a cached host list.
 *
 * @example
 * ```ts
 * import { createRegistryClient, startHeartbeat } from '@llmesh/registry-client'
 *
 * const registry = createRegistryClient({ urls: ['http://127.0.0.1:7070'], token: process.env.NODE_TOKEN })
 * const beat = startHeartbeat(registry, {
 *   registration: {
 *     nodeId: 'node-a',
 *     endpoint: 'http://127.0.0.1:8080',
 *     hardware: { ramBytes: 16e9, cpu: { model: 'x86', cores: 8 } },
 *     capacitySlots: 4,
 *   },
 *   load: () => ({ inFlight: 0, queueDepth: 0, tokensPerSecond: 0 }),
 * })
 * console.log(await registry.hosts({ model: 'acme/tiny' }))
 * await beat.stop()
 * ```
 */
export {
  createHostCache,
  createRegistryClient,
  type HeartbeatLoop,
  type HostCache,
  type RegistryClient,
  type RegistryClientOptions,
  RegistryError,
  startHeartbeat,
} from './client.js'
export {
  API_PREFIX,
  type CreateCredential,
  type CreatedCredential,
  createCredentialSchema,
  createdCredentialSchema,
  credentialRoles,
  type ErrorBody,
  endpoints,
  errorBodySchema,
  type Gpu,
  gpuSchema,
  type Hardware,
  type Heartbeat,
  type HeartbeatAck,
  type HostedModel,
  hardwareSchema,
  heartbeatAckSchema,
  heartbeatSchema,
  hostedModelSchema,
  hostsQuerySchema,
  type ListNodesQuery,
  listNodesQuerySchema,
  type NetworkModel,
  type NodeRecord,
  type NodeRegistration,
  type NodeState,
  networkModelSchema,
  nodeIdSchema,
  nodeRecordSchema,
  nodeStates,
  openApiDocument,
  type ParsedHeartbeat,
  type ParsedNodeRegistration,
  registerNodeSchema,
  type UsageEntry,
  type UsageReport,
  usageEntrySchema,
  usageReportSchema,
} from './contract.js'
