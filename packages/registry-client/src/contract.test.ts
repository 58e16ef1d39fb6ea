import { describe, expect, it } from 'vitest'
import {
  createCredentialSchema,
  endpoints,
  hostsQuerySchema,
  openApiDocument,
  registerNodeSchema,
} from './contract.js'

describe('contract', () => {
  it('generates an OpenAPI operation for every endpoint, with its request and response schemas', () => {
    const document = openApiDocument() as {
      paths: Record<string, Record<string, { operationId: string; requestBody?: unknown }>>
    }
    const operations = Object.values(document.paths).flatMap((methods) =>
      Object.values(methods).map((operation) => operation.operationId),
    )
    expect(operations.sort()).toEqual(Object.keys(endpoints).sort())
    expect(document.paths['/v1/nodes']?.post?.requestBody).toMatchObject({
      content: {
        'application/json': {
          schema: {
            properties: { nodeId: { type: 'string' }, capacitySlots: { type: 'integer' } },
          },
        },
      },
    })
  })

  it('refuses a host lookup that names no model, and a node credential without its node', () => {
    expect(hostsQuerySchema.safeParse({}).error?.issues[0]?.path).toEqual(['model'])
    expect(hostsQuerySchema.safeParse({ digest: 'a'.repeat(64) }).success).toBe(true)
    expect(
      createCredentialSchema.safeParse({ name: 'n', role: 'node' }).error?.issues[0]?.path,
    ).toEqual(['nodeId'])
  })

  it('names the field of a bad registration', () => {
    const result = registerNodeSchema.safeParse({
      nodeId: 'node-a',
      endpoint: 'ftp://example',
      hardware: { ramBytes: 1, cpu: { model: 'x', cores: 1 } },
      capacitySlots: 1,
    })
    expect(result.error?.issues.map((issue) => issue.path.join('.'))).toEqual(['endpoint'])
  })
})
