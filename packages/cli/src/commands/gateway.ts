/**
 * `llmesh gateway`: the router as an OpenAI-compatible gateway, over the nodes of a registry or
 * a static list from a file.
 */
import { readFile } from 'node:fs/promises'
import { InvalidArgumentError, LlmeshError } from '@llmesh/core'
import { createHostCache, createRegistryClient } from '@llmesh/registry-client'
import {
  createGateway,
  modelPolicySchema,
  type NodeSource,
  registryNodeSource,
  routerNodeSchema,
  staticNodeSource,
} from '@llmesh/router'
import { type Command, Option } from 'commander'
import { parse as parseYaml } from 'yaml'
import { z } from 'zod'
import type { CommandContext } from '../program.js'
import { parseInteger } from './option-parsers.js'

/** The `--nodes` file: a list of nodes, or nodes and a model policy (JSON or YAML). */
const gatewayConfigSchema = z.union([
  z.array(routerNodeSchema),
  z.strictObject({
    nodes: z.array(routerNodeSchema).default([]),
    policy: modelPolicySchema.optional(),
  }),
])

export function registerGatewayCommands(program: Command, context: CommandContext): void {
  program
    .command('gateway')
    .description(
      'route OpenAI API requests to the best node that hosts the model, with failover, until Ctrl-C',
    )
    .addOption(
      new Option('--registry <url...>', 'registry URLs whose ready nodes to route to').env(
        'LLMESH_REGISTRY',
      ),
    )
    .addOption(
      new Option('--token <token>', 'a reader token for the registry').env('LLMESH_REGISTRY_TOKEN'),
    )
    .option('--nodes <file>', 'a JSON or YAML file: a list of nodes, or { nodes, policy }')
    .option('--port <port>', 'port to listen on', parseInteger, 8000)
    .option('--host <host>', 'address to listen on', '127.0.0.1')
    .option(
      '--first-token-timeout <ms>',
      'try another node without a first byte by then',
      parseInteger,
      30_000,
    )
    .option('--idle-timeout <ms>', 'end a stream with no byte for this long', parseInteger, 30_000)
    .action(
      async (options: {
        registry?: string[]
        token?: string
        nodes?: string
        port: number
        host: string
        firstTokenTimeout: number
        idleTimeout: number
      }) => {
        const output = context.output()
        const registryUrls = (options.registry ?? [])
          .flatMap((entry) => entry.split(','))
          .filter(Boolean)
        if ((registryUrls.length === 0) === (options.nodes === undefined))
          throw new LlmeshError({
            code: 'LLMESH_USAGE',
            message: 'Give the nodes with either --registry <url> or --nodes <file>.',
          })
        let source: NodeSource
        let policy: z.input<typeof modelPolicySchema> | undefined
        let closeSource = () => {}
        if (options.nodes !== undefined) {
          const text = await readFile(options.nodes, 'utf8')
          const parsed = gatewayConfigSchema.safeParse(parseYaml(text))
          if (!parsed.success) {
            const issue = parsed.error.issues[0]!
            throw new InvalidArgumentError({
              argument: '--nodes',
              message: `${options.nodes}: ${issue.path.join('.') || 'the file'}: ${issue.message}`,
            })
          }
          const config = Array.isArray(parsed.data) ? { nodes: parsed.data } : parsed.data
          source = staticNodeSource(config.nodes)
          policy = 'policy' in config ? config.policy : undefined
        } else {
          const client = createRegistryClient({
            urls: registryUrls,
            ...(options.token === undefined ? {} : { token: options.token }),
          })
          const cache = createHostCache(client, {
            onError: (error) => output.info(`registry refresh failed: ${String(error)}`),
          })
          await cache.refresh({ signal: context.signal })
          source = registryNodeSource(cache)
          closeSource = () => cache.close()
        }
        const gateway = createGateway({
          nodes: source,
          ...(policy === undefined ? {} : { policy }),
          firstTokenTimeoutMs: options.firstTokenTimeout,
          idleTimeoutMs: options.idleTimeout,
        })
        const listening = await gateway.listen({ port: options.port, host: options.host })
        output.info(
          `gateway on ${listening.url}/v1 over ${source.nodes().length} node(s); state at ${listening.url}/v1/router/state; Ctrl-C stops it`,
        )
        output.line({ event: 'listening', url: listening.url, nodes: source.nodes().length })
        await new Promise<void>((resolve) => {
          if (context.signal.aborted) resolve()
          else context.signal.addEventListener('abort', () => resolve(), { once: true })
        })
        await listening.close()
        await gateway.close()
        closeSource()
        output.info('gateway stopped')
      },
    )
}
