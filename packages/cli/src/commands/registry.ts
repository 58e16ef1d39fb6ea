import { mkdir } from 'node:fs/promises'
import { dirname } from 'node:path'
import { LlmeshError } from '@llmesh/core'
import { defaultStoreRoot } from '@llmesh/downloader'
import { createRegistryClient, type NodeRecord } from '@llmesh/registry-client'
import { createRegistry } from '@llmesh/registry-server'
import { type Command, Option } from 'commander'
import type { CommandContext } from '../program.js'
import { table } from '../table.js'
import { parseInteger } from './option-parsers.js'

interface ClientOptions {
  registry?: string[]
  token?: string
}

/** `--registry` (repeatable, failover order) and `--token`, defaulting to LLMESH_REGISTRY(_TOKEN). */
function withRegistryClient(command: Command): Command {
  return command
    .addOption(
      new Option('--registry <url...>', 'registry URLs, tried in order').env('LLMESH_REGISTRY'),
    )
    .addOption(
      new Option('--token <token>', 'a reader, node or admin token').env('LLMESH_REGISTRY_TOKEN'),
    )
}

function clientFor(options: ClientOptions) {
  const urls = (options.registry ?? [])
    .flatMap((entry) => entry.split(','))
    .filter((url) => url !== '')
  if (urls.length === 0)
    throw new LlmeshError({
      code: 'LLMESH_USAGE',
      message: 'Give the registry with --registry <url> or LLMESH_REGISTRY',
    })
  return createRegistryClient({
    urls,
    ...(options.token === undefined ? {} : { token: options.token }),
  })
}

export function registerRegistryCommands(program: Command, context: CommandContext): void {
  const registry = program
    .command('registry')
    .description('run a registry and manage its credentials')

  registry
    .command('start')
    .description(
      'run the registry (node membership, model-to-host index, status page) until Ctrl-C',
    )
    .option(
      '--db <file>',
      'SQLite file (":memory:" keeps nothing)',
      `${defaultStoreRoot()}/registry.db`,
    )
    .option('--port <port>', 'port to listen on', parseInteger, 7070)
    .option('--host <host>', 'address to listen on', '127.0.0.1')
    .addOption(
      new Option('--admin-token <token>', 'the token that creates credentials').env(
        'LLMESH_REGISTRY_ADMIN_TOKEN',
      ),
    )
    .option('--public-reads', 'let anyone read nodes, hosts, models and the status page')
    .option('--heartbeat-interval <ms>', 'interval nodes heartbeat at', parseInteger, 10_000)
    .action(
      async (options: {
        db: string
        port: number
        host: string
        adminToken?: string
        publicReads?: boolean
        heartbeatInterval: number
      }) => {
        const output = context.output()
        if (options.db !== ':memory:') await mkdir(dirname(options.db), { recursive: true })
        const instance = createRegistry({
          database: options.db,
          ...(options.adminToken === undefined ? {} : { adminToken: options.adminToken }),
          publicReads: options.publicReads === true,
          heartbeatIntervalMs: options.heartbeatInterval,
        })
        const server = await instance.listen({ port: options.port, host: options.host })
        output.info(
          `registry listening on ${server.url} (status page ${server.url}/, database ${options.db}); Ctrl-C stops it`,
        )
        output.line({ event: 'listening', url: server.url })
        if (options.adminToken === undefined)
          output.info('no --admin-token: credentials cannot be created, and only public reads work')
        await new Promise<void>((resolve) => {
          if (context.signal.aborted) resolve()
          else context.signal.addEventListener('abort', () => resolve(), { once: true })
        })
        await server.close()
        await instance.close()
        output.info('registry stopped')
      },
    )

  withRegistryClient(
    registry
      .command('credentials')
      .description('manage credentials')
      .command('create')
      .description('create a node or reader credential (needs the admin token as --token)')
      .requiredOption('--name <name>', 'who it is for')
      .addOption(
        new Option('--role <role>', 'node (writes one node) or reader')
          .choices(['node', 'reader'])
          .makeOptionMandatory(),
      )
      .option('--node-id <id>', 'for a node credential: the node it may write'),
  ).action(
    async (options: ClientOptions & { name: string; role: 'node' | 'reader'; nodeId?: string }) => {
      const output = context.output()
      const created = await clientFor(options).createCredential({
        name: options.name,
        role: options.role,
        ...(options.nodeId === undefined ? {} : { nodeId: options.nodeId }),
      })
      output.result(
        created,
        `${created.role} credential for ${created.name}${created.nodeId ? ` (node ${created.nodeId})` : ''}:\n${created.token}\n(shown once: the registry keeps only its hash)`,
      )
    },
  )

  withRegistryClient(
    program
      .command('nodes')
      .description("list the network's nodes from a registry")
      .option('--state <state>', 'joining, ready, draining or not-ready')
      .option('--model <id>', 'only nodes hosting this model'),
  ).action(async (options: ClientOptions & { state?: string; model?: string }) => {
    const output = context.output()
    const nodes = await clientFor(options).listNodes({
      ...(options.state === undefined ? {} : { state: options.state as NodeRecord['state'] }),
      ...(options.model === undefined ? {} : { model: options.model }),
    })
    const rows = nodes.map((node) => [
      node.nodeId,
      node.state,
      node.endpoint,
      node.models.map((model) => `${model.id}@${model.version}`).join(', '),
      node.load === null ? '-' : `${node.load.inFlight}/${node.capacitySlots}`,
      node.lastHeartbeatAt ?? 'never',
    ])
    output.result(
      nodes,
      nodes.length === 0
        ? 'no nodes'
        : table(['NODE', 'STATE', 'ENDPOINT', 'MODELS', 'BUSY', 'LAST HEARTBEAT'], rows),
    )
  })

  withRegistryClient(
    program
      .command('models')
      .description('list models (across the network with --network)')
      .requiredOption('--network', 'list the models the registry knows, with host counts'),
  ).action(async (options: ClientOptions) => {
    const output = context.output()
    const models = await clientFor(options).models()
    output.result(
      models,
      models.length === 0
        ? 'no models on the network'
        : table(
            ['MODEL', 'DIGEST', 'HOSTS', 'READY'],
            models.map((model) => [
              `${model.id}@${model.version}`,
              model.digest.slice(0, 16),
              String(model.hosts),
              String(model.readyHosts),
            ]),
          ),
    )
  })
}
