/**
 * `llmesh seed` (alias `share`): serve the store's blobs to peers over libp2p until Ctrl-C.
 * `llmesh peers`: ask peers which pieces of a model they hold.
 */
import { readFile } from 'node:fs/promises'
import { LlmeshError } from '@llmesh/core'
import { createPeerNode, createPrivateNetworkKey, PeerError } from '@llmesh/p2p-storage'
import type { Command } from 'commander'
import type { CommandContext } from '../program.js'
import { table } from '../table.js'
import { collectMultiaddr, parseByteSize, parseInteger } from './option-parsers.js'
import { withOpenStore, withStore } from './store.js'

interface PeerOptions {
  store?: string
  listen?: string[]
  privateNetworkKey?: string
  bootstrap?: string[]
  mdns?: boolean
}

function withPeerOptions(command: Command): Command {
  return withStore(command)
    .option(
      '--listen <multiaddr...>',
      'addresses to listen on (default /ip4/0.0.0.0/tcp/4001 for seed)',
      collectMultiaddr,
    )
    .option(
      '--private-network-key <file>',
      'a swarm key file: only peers with the same key connect',
    )
    .option('--bootstrap <multiaddr...>', 'peers to connect to at start', collectMultiaddr)
    .option('--mdns', 'find peers on the local network')
}

async function networkKey(file: string | undefined): Promise<Uint8Array | undefined> {
  return file === undefined ? undefined : new Uint8Array(await readFile(file))
}

type SeedOptions = PeerOptions & {
  uploadLimit?: number
  maxPeers?: number
  connectionsPerHost?: number
}

export function registerPeerCommands(program: Command, context: CommandContext): void {
  withPeerOptions(
    program
      .command('seed')
      .alias('share')
      .description('serve every blob of the store to peers over libp2p, until Ctrl-C'),
  )
    .option(
      '--upload-limit <rate>',
      'cap on bytes per second sent to all peers, such as 20MB',
      parseByteSize,
    )
    .option('--max-peers <count>', 'cap on connections to peers open at once', parseInteger)
    .option(
      '--connections-per-host <count>',
      'new connections accepted per second from one IP address (default 5): raise it when many peers share one address',
      parseInteger,
    )
    .action(async (options: SeedOptions) =>
      withOpenStore(options, async (store) => {
        const output = context.output()
        const privateNetworkKey = await networkKey(options.privateNetworkKey)
        const node = await createPeerNode({
          store,
          listen: options.listen ?? ['/ip4/0.0.0.0/tcp/4001'],
          ...(privateNetworkKey === undefined ? {} : { privateNetworkKey }),
          ...(options.bootstrap === undefined ? {} : { bootstrap: options.bootstrap }),
          mdns: options.mdns === true,
          limits: {
            ...(options.uploadLimit === undefined
              ? {}
              : { uploadBytesPerSecond: options.uploadLimit }),
            ...(options.maxPeers === undefined ? {} : { maxPeers: options.maxPeers }),
            ...(options.connectionsPerHost === undefined
              ? {}
              : { connectionsPerHostPerSecond: options.connectionsPerHost }),
          },
        })
        const digests = await node.provider.digests()
        const addresses = node.addresses.map(String)
        output.info(
          `seeding ${digests.length} blob(s) as ${node.peerId}; peers can pull with --peer ${addresses[0] ?? ''}`,
        )
        for (const address of addresses) output.info(`  ${address}`)
        output.line({ event: 'seeding', peerId: node.peerId.toString(), addresses, digests })
        await new Promise<void>((resolve) => {
          if (context.signal.aborted) resolve()
          else context.signal.addEventListener('abort', () => resolve(), { once: true })
        })
        const uploaded = [...node.uploaded.values()].reduce((sum, bytes) => sum + bytes, 0)
        await node.stop()
        output.info(`stopped; ${uploaded} bytes uploaded to ${node.uploaded.size} peer(s)`)
        output.line({ event: 'stopped', uploadedBytes: uploaded, peers: node.uploaded.size })
      }),
    )

  withPeerOptions(
    program
      .command('peers')
      .description("ask peers which pieces of a stored model's files (or of a digest) they hold")
      .argument('<peer...>', 'peer multiaddrs with /p2p/<id>', collectMultiaddr)
      .requiredOption('--model <id[@version] | sha256:hex>', 'what to ask about'),
  ).action(async (peers: string[], options: PeerOptions & { model: string }) =>
    withOpenStore(options, async (store) => {
      const digests = options.model.startsWith('sha256:')
        ? [options.model.slice('sha256:'.length)]
        : store.resolve(options.model).files.map((file) => file.sha256)
      const privateNetworkKey = await networkKey(options.privateNetworkKey)
      const node = await createPeerNode({
        ...(options.listen === undefined ? {} : { listen: options.listen }),
        ...(privateNetworkKey === undefined ? {} : { privateNetworkKey }),
      })
      try {
        const rows: Array<Record<string, string | number>> = []
        for (const peer of peers)
          for (const digest of digests) {
            try {
              const answer = await node.have(peer, digest, {
                signal: AbortSignal.any([context.signal, AbortSignal.timeout(10_000)]),
              })
              rows.push({
                peer,
                digest,
                pieces: `${answer.have.count}/${answer.have.size}`,
                state: answer.have.complete ? 'complete' : 'partial',
              })
            } catch (error) {
              rows.push({
                peer,
                digest,
                pieces: '-',
                state:
                  PeerError.isInstance(error) && error.code === 'LLMESH_PEER_UNKNOWN_DIGEST'
                    ? 'none'
                    : `unreachable: ${error instanceof Error ? error.message : String(error)}`,
              })
            }
          }
        context.output().result(
          rows,
          table(
            ['peer', 'digest', 'pieces', 'state'],
            rows.map((row) => [
              String(row.peer),
              String(row.digest).slice(0, 12),
              String(row.pieces),
              String(row.state),
            ]),
          ),
        )
      } finally {
        await node.stop()
      }
    }),
  )

  program
    .command('network-key')
    .description('write a new private network (swarm) key to a file')
    .argument('<file>', 'where to write it')
    .action(async (file: string) => {
      const { writeFile } = await import('node:fs/promises')
      await writeFile(file, createPrivateNetworkKey(), { mode: 0o600, flag: 'wx' }).catch(
        (error: NodeJS.ErrnoException) => {
          if (error.code === 'EEXIST')
            throw new LlmeshError({
              code: 'LLMESH_USAGE',
              message: `${file} exists; choose another file`,
            })
          throw error
        },
      )
      context
        .output()
        .result(
          { file },
          `wrote a private network key to ${file}; give it to every node of the swarm`,
        )
    })
}
