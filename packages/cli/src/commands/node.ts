/**
 * `llmesh node --config node.yaml`: an operator's node in one process. It pulls the models it
 * should serve (from catalogs, and from peers when it knows some), runs each one's smoke test,
 * serves those that pass over the OpenAI API, seeds its store over libp2p, and registers with the
 * registry and heartbeats, until Ctrl-C.
 */
import { readFile } from 'node:fs/promises'
import { dirname, resolve } from 'node:path'
import { InvalidArgumentError, LlmeshError } from '@llmesh/core'
import {
  compareVersions,
  createDownloader,
  defaultStoreRoot,
  fetchCatalog,
  ModelStore,
} from '@llmesh/downloader'
import {
  createInferenceEngine,
  createModelPool,
  createNodeServer,
  runSmokeTest,
  storeModelResolver,
} from '@llmesh/inference'
import { importTrustedKey } from '@llmesh/manifest'
import {
  createPeerNode,
  isMultiaddrText,
  PeerByteSource,
  type PeerNodeOptions,
} from '@llmesh/p2p-storage'
import { createRegistryClient, startHeartbeat } from '@llmesh/registry-client'
import type { Command } from 'commander'
import { parse as parseYaml } from 'yaml'
import { z } from 'zod'
import type { CommandContext } from '../program.js'
import { requireDecodes } from './backend-check.js'
import { NOT_A_MULTIADDR } from './option-parsers.js'

/** A multiaddr as text in the config file, such as `/ip4/0.0.0.0/tcp/4001`. */
const multiaddrText = z.string().refine(isMultiaddrText, NOT_A_MULTIADDR)

/** The node's configuration file (YAML or JSON); paths in it are relative to the file. */
export const nodeConfigSchema = z.strictObject({
  /** The store; default LLMESH_HOME or the user's cache folder. */
  store: z.string().optional(),
  /** Models to serve: `id` or `id@version`. Missing ones are pulled from the catalogs. */
  models: z.array(z.string().min(1)).min(1),
  catalogs: z.array(z.string().min(1)).default([]),
  /** Public keys (PEM files) whose signature makes a catalog trusted. */
  trustedKeys: z.array(z.string()).default([]),
  allowUnsigned: z.boolean().default(false),
  allowInsecureMirrors: z.boolean().default(false),
  server: z
    .strictObject({
      host: z.string().default('127.0.0.1'),
      port: z.number().int().min(0).max(65535).default(8080),
      slots: z.number().int().positive().default(4),
      maxQueue: z.number().int().nonnegative().default(16),
    })
    .prefault({}),
  inference: z
    .strictObject({
      backend: z.enum(['auto', 'cpu', 'cuda', 'vulkan', 'metal']).default('auto'),
      threads: z.number().int().positive().optional(),
      memoryBudgetBytes: z.number().int().positive().optional(),
      keepAliveSeconds: z.number().positive().optional(),
      /** Decode a tiny model on the backend in a child process before serving (see `llmesh doctor`). */
      check: z.boolean().default(true),
    })
    .prefault({}),
  registry: z
    .strictObject({
      urls: z.array(z.url()).min(1),
      /** A node credential for this node id (`llmesh registry credentials create`). */
      token: z.string().min(1),
      nodeId: z.string().min(1),
      /** The URL others reach this node's API at; default the address it listens on. */
      endpoint: z.url().optional(),
      heartbeatIntervalMs: z.number().int().positive().default(10_000),
      tokenCostPer1k: z.number().nonnegative().optional(),
    })
    .optional(),
  p2p: z
    .strictObject({
      enabled: z.boolean().default(true),
      listen: z.array(multiaddrText).default(['/ip4/0.0.0.0/tcp/4001']),
      /** Peers to fetch from and connect to (multiaddrs with /p2p/<id>). */
      peers: z.array(multiaddrText).default([]),
      mdns: z.boolean().default(false),
      privateNetworkKey: z.string().optional(),
      /** Caps on bytes per second sent to and received from all peers together. */
      uploadBytesPerSecond: z.number().positive().optional(),
      downloadBytesPerSecond: z.number().positive().optional(),
      /** Connections to peers open at once. */
      maxPeers: z.number().int().positive().optional(),
      /** New connections accepted per second from one IP address (5 by default). */
      connectionsPerHostPerSecond: z.number().int().positive().optional(),
      /** Piece requests served at once (32 by default); past it, peers are told "busy". */
      concurrentUploads: z.number().int().positive().optional(),
      /** How long a piece may take to be taken before its stream ends (60 s by default; a timer's most). */
      uploadTimeoutMs: z
        .number()
        .int()
        .positive()
        .max(2 ** 31 - 1)
        .optional(),
    })
    .prefault({}),
})

export type NodeConfig = z.output<typeof nodeConfigSchema>

type PeerLimits = NonNullable<PeerNodeOptions['limits']>

/** The peer node's limits: the config's `p2p` fields past its address and discovery ones, where set. */
function p2pLimits(p2p: NodeConfig['p2p']): PeerLimits {
  const { enabled, listen, peers, mdns, privateNetworkKey, ...limits } = p2p
  // Every field left is one of the node's limits: another is a compile error here.
  limits satisfies {
    [Field in keyof typeof limits]: Field extends keyof PeerLimits ? unknown : never
  }
  return Object.fromEntries(Object.entries(limits).filter(([, value]) => value !== undefined))
}

export function registerNodeCommands(program: Command, context: CommandContext): void {
  program
    .command('node')
    .description(
      "run an operator's node from a config file: pull, smoke-test, serve, seed and register, until Ctrl-C",
    )
    .requiredOption('--config <file>', 'the node configuration (YAML or JSON)')
    .action(async (options: { config: string }) => {
      const output = context.output()
      const config = await readConfig(options.config)
      const here = dirname(resolve(options.config))
      const at = (path: string) => resolve(here, path)
      const store = await ModelStore.open({
        root: config.store === undefined ? defaultStoreRoot() : at(config.store),
      })
      const stops: Array<() => Promise<unknown> | unknown> = [() => store.close()]
      try {
        const networkKey =
          config.p2p.privateNetworkKey === undefined
            ? undefined
            : new Uint8Array(await readFile(at(config.p2p.privateNetworkKey)))
        const peer = config.p2p.enabled
          ? await createPeerNode({
              store,
              listen: config.p2p.listen,
              ...(config.p2p.peers.length === 0 ? {} : { bootstrap: config.p2p.peers }),
              mdns: config.p2p.mdns,
              ...(networkKey === undefined ? {} : { privateNetworkKey: networkKey }),
              limits: p2pLimits(config.p2p),
            })
          : undefined
        if (peer !== undefined) stops.unshift(() => peer.stop())

        // 1. The models: pulled when missing, from the catalogs (and peers).
        const downloader = createDownloader({
          store,
          allowInsecureMirrors: config.allowInsecureMirrors,
          // Peers: the configured ones, and those the DHT knows to serve the blob. While a model
          // is pulled, the node serves the pieces it verified.
          ...(peer === undefined
            ? {}
            : {
                sharePartial: (blob) => peer.sharePartial(blob),
                extraSources: async ({ sha256 }) => {
                  // With no connection there is no DHT to ask (a first node, a lone node).
                  const found =
                    sha256 === undefined || peer.libp2p.getConnections().length === 0
                      ? []
                      : await peer
                          .findPeers(sha256, { signal: AbortSignal.timeout(5_000), limit: 8 })
                          .catch(() => [])
                  const peers = [...config.p2p.peers, ...found]
                  return peers.length === 0 ? [] : [new PeerByteSource(peer, peers)]
                },
              }),
        })
        try {
          for (const model of config.models) {
            if (isStored(store, model)) continue
            if (config.catalogs.length === 0)
              throw new InvalidArgumentError({
                argument: 'catalogs',
                message: `${model} is not in the store and no catalog is configured`,
              })
            const trustedKeys = await Promise.all(
              config.trustedKeys.map(async (file) =>
                importTrustedKey(await readFile(at(file), 'utf8'), file),
              ),
            )
            // Catalogs given as paths are relative to the config file, like every path in it.
            const catalogs = config.catalogs.map((entry) =>
              /^[a-z][a-z0-9+.-]*:/i.test(entry) ? entry : at(entry),
            )
            const { catalog } = await fetchCatalog(catalogs, {
              trustedKeys,
              allowUnsigned: config.allowUnsigned,
              allowInsecureMirrors: config.allowInsecureMirrors,
              signal: context.signal,
            })
            const separator = model.lastIndexOf('@')
            const id = separator > 0 ? model.slice(0, separator) : model
            const version = separator > 0 ? model.slice(separator + 1) : undefined
            const manifest = catalog.models
              .filter(
                (entry) => entry.id === id && (version === undefined || entry.version === version),
              )
              .sort((a, b) => compareVersions(a.version, b.version))
              .at(-1)
            if (manifest === undefined)
              throw new InvalidArgumentError({
                argument: 'models',
                message: `${model} is in none of the catalogs`,
              })
            output.info(`pulling ${manifest.id}@${manifest.version}`)
            await downloader.pull(manifest, { signal: context.signal })
          }
        } finally {
          await downloader.close()
        }

        // 2. Smoke tests, then the server.
        const engine = await createInferenceEngine({
          backend: config.inference.backend,
          ...(config.inference.threads === undefined ? {} : { threads: config.inference.threads }),
        })
        stops.unshift(() => engine.dispose())
        if (config.inference.check) {
          await requireDecodes(engine.backend, {
            threads: config.inference.threads,
            signal: context.signal,
            output,
          })
        }
        const pool = createModelPool({
          engine,
          resolve: storeModelResolver(store),
          slots: config.server.slots,
          maxQueue: config.server.maxQueue,
          ...(config.inference.memoryBudgetBytes === undefined
            ? {}
            : { budget: { ramBytes: config.inference.memoryBudgetBytes } }),
          ...(config.inference.keepAliveSeconds === undefined
            ? {}
            : { keepAliveMs: config.inference.keepAliveSeconds * 1000 }),
        })
        stops.unshift(() => pool.close())
        const serving: string[] = []
        for (const model of config.models) {
          const record = store.resolve(model)
          if (record.status !== 'available') {
            const result = await runSmokeTest({ pool, store, model, signal: context.signal })
            output.line({
              event: 'smoke-test',
              model,
              passed: result.passed,
              reason: result.reason,
            })
            if (!result.passed) {
              output.info(`${model}: smoke test failed, not serving it: ${result.reason}`)
              continue
            }
          }
          serving.push(model)
        }
        if (serving.length === 0)
          throw new LlmeshError({
            code: 'LLMESH_SMOKE_TEST_FAILED',
            message: 'No model passed its smoke test; nothing to serve.',
          })
        const server = createNodeServer({ pool, models: serving })
        const listening = await server.listen({
          host: config.server.host,
          port: config.server.port,
        })
        stops.unshift(() => listening.close())
        await server.ready

        // 3. Registration and heartbeats.
        if (config.registry !== undefined) {
          const client = createRegistryClient({
            urls: config.registry.urls,
            token: config.registry.token,
          })
          const hardware = await engine.hardware()
          const heartbeat = startHeartbeat(client, {
            registration: {
              nodeId: config.registry.nodeId,
              endpoint: config.registry.endpoint ?? listening.url,
              ...(peer === undefined
                ? {}
                : { peerId: peer.peerId.toString(), addresses: peer.addresses.map(String) }),
              hardware: {
                ramBytes: hardware.ram.totalBytes,
                cpu: { model: hardware.cpu.model, cores: hardware.cpu.logicalCores },
                gpus: hardware.devices.map((name) => ({
                  name,
                  vramBytes: hardware.vram.totalBytes,
                })),
              },
              models: serving.map((model) => {
                const record = store.resolve(model)
                return { id: record.id, version: record.version, digest: record.files[0]!.sha256 }
              }),
              capacitySlots: config.server.slots,
              ...(config.registry.tokenCostPer1k === undefined
                ? {}
                : { tokenCostPer1k: config.registry.tokenCostPer1k }),
            },
            load: () => {
              const loaded = pool.loaded()
              return {
                inFlight: loaded.reduce((sum, entry) => sum + entry.inFlight, 0),
                queueDepth: loaded.reduce((sum, entry) => sum + entry.queued, 0),
                tokensPerSecond: 0,
              }
            },
            intervalMs: config.registry.heartbeatIntervalMs,
            onError: (error) =>
              output.info(
                `heartbeat failed: ${error instanceof Error ? error.message : String(error)}`,
              ),
          })
          stops.unshift(() => heartbeat.stop())
        }
        output.info(
          `node serving ${serving.join(', ')} on ${listening.url}/v1${peer === undefined ? '' : `, seeding as ${peer.peerId}`}; Ctrl-C stops it`,
        )
        output.line({
          event: 'ready',
          url: listening.url,
          models: serving,
          ...(peer === undefined
            ? {}
            : { peerId: peer.peerId.toString(), addresses: peer.addresses.map(String) }),
        })
        await new Promise<void>((resolve) => {
          if (context.signal.aborted) resolve()
          else context.signal.addEventListener('abort', () => resolve(), { once: true })
        })
      } finally {
        for (const stop of stops) await Promise.resolve(stop()).catch(() => {})
        output.info('node stopped')
      }
    })
}

async function readConfig(file: string): Promise<NodeConfig> {
  const parsed = nodeConfigSchema.safeParse(parseYaml(await readFile(file, 'utf8')))
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!
    throw new InvalidArgumentError({
      argument: '--config',
      message: `${file}: ${issue.path.join('.') || 'the file'}: ${issue.message}`,
    })
  }
  return parsed.data
}

function isStored(store: ModelStore, model: string): boolean {
  try {
    store.resolve(model)
    return true
  } catch {
    return false
  }
}
