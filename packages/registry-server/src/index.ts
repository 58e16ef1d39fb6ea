/**
 * @packageDocumentation
 * The llmesh registry: which nodes are alive, what hardware they have and which models (by
 * digest) they host, with heartbeats, credentials, a usage ledger, a status page and
 * Prometheus metrics, on embedded SQLite.
 *
 * @example
 * ```ts
 * import { createRegistry } from '@llmesh/registry-server'
 *
 * const registry = createRegistry({ database: './registry.db', adminToken: process.env.ADMIN_TOKEN })
 * const { url } = await registry.listen({ port: 7070 })
 * console.log(`registry on ${url}; status page at ${url}/`)
 * ```
 */
export { createRegistry, type Registry, type RegistryServerOptions } from './registry.js'
export { renderStatusPage } from './status-page.js'
