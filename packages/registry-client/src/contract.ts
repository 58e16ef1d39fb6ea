/**
 * The registry's HTTP contract, versioned under `/v1`: one set of zod schemas that the server
 * validates requests with and the client validates answers with, and from which the OpenAPI
 * document is generated. Changing a schema here changes both sides at once.
 */
import { z } from 'zod'

export const API_PREFIX = '/v1'

const sha256 = z
  .string()
  .regex(/^[0-9a-f]{64}$/, { message: 'must be a sha256 digest: 64 lowercase hex characters' })
const byteCount = z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER)

export const nodeIdSchema = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/, {
  message: 'must be 1-128 letters, digits, ".", "_" or "-"',
})

export const gpuSchema = z.strictObject({
  name: z.string().min(1).max(200),
  vramBytes: byteCount,
  backend: z.enum(['cuda', 'vulkan', 'metal', 'cpu']).optional(),
})

export const hardwareSchema = z.strictObject({
  gpus: z.array(gpuSchema).max(64).default([]),
  ramBytes: byteCount,
  cpu: z.strictObject({
    model: z.string().min(1).max(200),
    cores: z.number().int().positive().max(4096),
  }),
})

export const hostedModelSchema = z.strictObject({
  id: z.string().min(1).max(257),
  version: z.string().min(1).max(200),
  digest: sha256,
  contextSize: z.number().int().positive().optional(),
  specialties: z.array(z.string().min(1).max(64)).max(32).default([]),
})

export const registerNodeSchema = z.strictObject({
  nodeId: nodeIdSchema,
  /** Where the node's OpenAI-compatible API answers. */
  endpoint: z.url({ protocol: /^https?$/, message: 'must be an http(s) URL' }),
  peerId: z.string().min(1).max(200).optional(),
  addresses: z.array(z.string().min(1).max(500)).max(32).default([]),
  hardware: hardwareSchema,
  models: z.array(hostedModelSchema).max(256).default([]),
  /** Requests the node serves at once. */
  capacitySlots: z.number().int().positive().max(4096),
  tokenCostPer1k: z.number().nonnegative().optional(),
})

export const heartbeatSchema = z.strictObject({
  inFlight: z.number().int().nonnegative(),
  queueDepth: z.number().int().nonnegative(),
  tokensPerSecond: z.number().nonnegative(),
  /** Digests of the models loaded in memory now. */
  loadedModels: z.array(sha256).max(256).default([]),
  freeVramBytes: byteCount.optional(),
})

export const nodeStates = ['joining', 'ready', 'draining', 'not-ready'] as const
export type NodeState = (typeof nodeStates)[number]

export const nodeRecordSchema = z.object({
  ...registerNodeSchema.shape,
  state: z.enum(nodeStates),
  registeredAt: z.string(),
  lastHeartbeatAt: z.string().nullable(),
  load: heartbeatSchema.nullable(),
})

/** What a heartbeat answers: small, since a thousand of them arrive every second. */
export const heartbeatAckSchema = z.object({
  nodeId: z.string(),
  state: z.enum(nodeStates),
  lastHeartbeatAt: z.string(),
})

export const listNodesQuerySchema = z.strictObject({
  state: z.enum(nodeStates).optional(),
  model: z.string().min(1).max(257).optional(),
  digest: sha256.optional(),
  specialty: z.string().min(1).max(64).optional(),
})

export const hostsQuerySchema = listNodesQuerySchema.superRefine((query, context) => {
  if (query.model === undefined && query.digest === undefined)
    context.addIssue({ code: 'custom', path: ['model'], message: 'give model (an id) or digest' })
})

export const networkModelSchema = z.object({
  id: z.string(),
  version: z.string(),
  digest: sha256,
  hosts: z.number().int(),
  readyHosts: z.number().int(),
})

export const usageReportSchema = z.strictObject({
  requests: z.number().int().nonnegative(),
  tokensGenerated: z.number().int().nonnegative(),
  /** The model served, by digest; leave out for a node-wide total. */
  digest: sha256.optional(),
  periodStart: z.iso.datetime({ offset: true }).optional(),
  periodEnd: z.iso.datetime({ offset: true }).optional(),
})

export const usageEntrySchema = z.object({
  nodeId: z.string(),
  digest: sha256.nullable(),
  requests: z.number().int(),
  tokensGenerated: z.number().int(),
  reportedAt: z.string(),
})

export const credentialRoles = ['node', 'reader'] as const
export const createCredentialSchema = z
  .strictObject({
    name: z.string().min(1).max(200),
    role: z.enum(credentialRoles),
    /** For a node credential: the one node it may write. */
    nodeId: nodeIdSchema.optional(),
  })
  .superRefine((value, context) => {
    if (value.role === 'node' && value.nodeId === undefined)
      context.addIssue({
        code: 'custom',
        path: ['nodeId'],
        message: 'a node credential needs the nodeId it may write',
      })
  })

export const createdCredentialSchema = z.object({
  id: z.string(),
  name: z.string(),
  role: z.enum(credentialRoles),
  nodeId: z.string().nullable(),
  /** Shown once: the registry keeps only its hash. */
  token: z.string(),
})

export const errorBodySchema = z.object({
  error: z.object({
    code: z.string(),
    message: z.string(),
    /** The offending field, as a dotted path (`hardware.ramBytes`). */
    field: z.string().optional(),
  }),
})

export type Gpu = z.infer<typeof gpuSchema>
export type Hardware = z.input<typeof hardwareSchema>
export type HostedModel = z.input<typeof hostedModelSchema>
export type NodeRegistration = z.input<typeof registerNodeSchema>
export type ParsedNodeRegistration = z.output<typeof registerNodeSchema>
export type Heartbeat = z.input<typeof heartbeatSchema>
export type ParsedHeartbeat = z.output<typeof heartbeatSchema>
export type HeartbeatAck = z.output<typeof heartbeatAckSchema>
export type NodeRecord = z.output<typeof nodeRecordSchema>
export type ListNodesQuery = z.input<typeof listNodesQuerySchema>
export type NetworkModel = z.output<typeof networkModelSchema>
export type UsageReport = z.input<typeof usageReportSchema>
export type UsageEntry = z.output<typeof usageEntrySchema>
export type CreateCredential = z.input<typeof createCredentialSchema>
export type CreatedCredential = z.output<typeof createdCredentialSchema>
export type ErrorBody = z.output<typeof errorBodySchema>

/** Every endpoint: method, path, what it reads and answers, and who may call it. */
export const endpoints = {
  register: {
    method: 'POST',
    path: '/v1/nodes',
    body: registerNodeSchema,
    response: nodeRecordSchema,
    auth: 'node',
  },
  heartbeat: {
    method: 'POST',
    path: '/v1/nodes/{nodeId}/heartbeat',
    body: heartbeatSchema,
    response: heartbeatAckSchema,
    auth: 'node',
  },
  drain: {
    method: 'POST',
    path: '/v1/nodes/{nodeId}/drain',
    body: undefined,
    response: nodeRecordSchema,
    auth: 'node',
  },
  deregister: {
    method: 'DELETE',
    path: '/v1/nodes/{nodeId}',
    body: undefined,
    response: undefined,
    auth: 'node',
  },
  listNodes: {
    method: 'GET',
    path: '/v1/nodes',
    query: listNodesQuerySchema,
    response: z.object({ nodes: z.array(nodeRecordSchema) }),
    auth: 'read',
  },
  getNode: { method: 'GET', path: '/v1/nodes/{nodeId}', response: nodeRecordSchema, auth: 'read' },
  hosts: {
    method: 'GET',
    path: '/v1/hosts',
    query: hostsQuerySchema,
    response: z.object({ nodes: z.array(nodeRecordSchema) }),
    auth: 'read',
  },
  models: {
    method: 'GET',
    path: '/v1/models',
    response: z.object({ models: z.array(networkModelSchema) }),
    auth: 'read',
  },
  reportUsage: {
    method: 'POST',
    path: '/v1/nodes/{nodeId}/usage',
    body: usageReportSchema,
    response: usageEntrySchema,
    auth: 'node',
  },
  listUsage: {
    method: 'GET',
    path: '/v1/usage',
    response: z.object({ entries: z.array(usageEntrySchema) }),
    auth: 'read',
  },
  createCredential: {
    method: 'POST',
    path: '/v1/credentials',
    body: createCredentialSchema,
    response: createdCredentialSchema,
    auth: 'admin',
  },
  health: {
    method: 'GET',
    path: '/health',
    response: z.object({ status: z.literal('ok'), nodes: z.number().int() }),
    auth: 'none',
  },
} as const

/**
 * The OpenAPI 3.1 document of the contract, generated from the schemas above (zod's JSON Schema
 * output), so it cannot drift from what the server checks.
 */
export function openApiDocument(): Record<string, unknown> {
  const paths: Record<string, Record<string, unknown>> = {}
  const security = {
    node: [{ bearer: [] }],
    read: [{ bearer: [] }, {}],
    admin: [{ bearer: [] }],
    none: [],
  }
  for (const [name, endpoint] of Object.entries(endpoints)) {
    const operation: Record<string, unknown> = {
      operationId: name,
      security: security[endpoint.auth],
      responses: {
        [endpoint.method === 'DELETE' ? '204' : '200']: endpoint.response
          ? {
              description: 'OK',
              content: {
                'application/json': {
                  schema: z.toJSONSchema(endpoint.response, {
                    io: 'output',
                    unrepresentable: 'any',
                  }),
                },
              },
            }
          : { description: 'Done' },
        '400': {
          description: 'Invalid input; `error.field` names the field',
          content: { 'application/json': { schema: z.toJSONSchema(errorBodySchema) } },
        },
        ...(endpoint.auth === 'none'
          ? {}
          : {
              '401': { description: 'No or unknown credential' },
              '403': { description: 'The credential may not do this' },
            }),
      },
    }
    if ('body' in endpoint && endpoint.body !== undefined)
      operation.requestBody = {
        required: true,
        content: {
          'application/json': {
            schema: z.toJSONSchema(endpoint.body, { io: 'input', unrepresentable: 'any' }),
          },
        },
      }
    if ('query' in endpoint && endpoint.query !== undefined) {
      const schema = z.toJSONSchema(endpoint.query, { io: 'input', unrepresentable: 'any' }) as {
        properties?: Record<string, unknown>
      }
      operation.parameters = Object.entries(schema.properties ?? {}).map(
        ([parameter, parameterSchema]) => ({
          name: parameter,
          in: 'query',
          required: false,
          schema: parameterSchema,
        }),
      )
    }
    const pathParameters = [...endpoint.path.matchAll(/\{(\w+)\}/g)].map((match) => ({
      name: match[1],
      in: 'path',
      required: true,
      schema: { type: 'string' },
    }))
    if (pathParameters.length > 0)
      operation.parameters = [...((operation.parameters as unknown[]) ?? []), ...pathParameters]
    paths[endpoint.path] = { ...paths[endpoint.path], [endpoint.method.toLowerCase()]: operation }
  }
  return {
    openapi: '3.1.0',
    info: { title: 'llmesh registry', version: '1' },
    components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
    paths,
  }
}
