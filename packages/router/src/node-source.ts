/**
 * Where the router learns which nodes exist and what they host: the registry client's cached
 * host list (refreshed in the background) or a static list from configuration. Both give the
 * same `RouterNode` shape, read on every request, so reading must cost nothing.
 */
import type { HostCache, NodeRecord } from '@llmesh/registry-client'
import { z } from 'zod'

export interface RouterNodeModel {
  id: string
  digest?: string | undefined
  contextSize?: number | undefined
  specialties?: readonly string[] | undefined
}

export interface RouterNode {
  id: string
  /** The base URL of the node's OpenAI-compatible API (without `/v1`). */
  url: string
  models: readonly RouterNodeModel[]
  /** Requests the node serves at once, when known. */
  slots?: number | undefined
  tokenCostPer1k?: number | undefined
}

export interface NodeSource {
  /** The nodes now; called on every request, so it must be cheap. */
  nodes(): readonly RouterNode[]
}

export const routerNodeSchema = z.strictObject({
  id: z.string().min(1),
  url: z.url({ protocol: /^https?$/, message: 'must be an http(s) URL' }),
  models: z
    .array(
      z.strictObject({
        id: z.string().min(1),
        digest: z.string().optional(),
        contextSize: z.number().int().positive().optional(),
        specialties: z.array(z.string()).optional(),
      }),
    )
    .min(1),
  slots: z.number().int().positive().optional(),
  tokenCostPer1k: z.number().nonnegative().optional(),
})

/** A fixed list of nodes, validated once. */
export function staticNodeSource(nodes: readonly RouterNode[]): NodeSource {
  const parsed = z.array(routerNodeSchema).parse(nodes).map(withoutTrailingSlash)
  return { nodes: () => parsed }
}

/** The ready nodes of a registry, from the registry client's host cache. */
export function registryNodeSource(cache: HostCache): NodeSource {
  let seenAt: number | undefined
  let nodes: RouterNode[] = []
  return {
    nodes() {
      if (cache.updatedAt !== seenAt) {
        seenAt = cache.updatedAt
        nodes = cache.hosts({ state: 'ready' }).map(fromRecord)
      }
      return nodes
    },
  }
}

function fromRecord(record: NodeRecord): RouterNode {
  return withoutTrailingSlash({
    id: record.nodeId,
    url: record.endpoint,
    models: record.models.map((model) => ({
      id: model.id,
      digest: model.digest,
      contextSize: model.contextSize,
      specialties: model.specialties,
    })),
    slots: record.capacitySlots,
    tokenCostPer1k: record.tokenCostPer1k,
  })
}

function withoutTrailingSlash<Node extends RouterNode>(node: Node): Node {
  return { ...node, url: node.url.replace(/\/+$/, '').replace(/\/v1$/, '') }
}
