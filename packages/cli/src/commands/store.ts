import { readFile } from 'node:fs/promises'
import { LlmeshError } from '@llmesh/core'
import {
  createDownloader,
  type Downloader,
  defaultStoreRoot,
  fetchCatalog,
  formatBytes,
  ModelStore,
  type PullResult,
  precache,
} from '@llmesh/downloader'
import { importTrustedKey, type Manifest, type TrustedKey } from '@llmesh/manifest'
import { createPeerNode, PeerByteSource } from '@llmesh/p2p-storage'
import type { Command } from 'commander'
import type { CommandContext } from '../program.js'
import { describeVerification, PullProgress } from '../pull-progress.js'
import { table } from '../table.js'
import { collectMultiaddr, parseByteSize, parseInteger } from './option-parsers.js'

interface StoreOptions {
  store?: string
}

interface SourceOptions extends StoreOptions {
  catalog?: string[]
  trustedKey?: string[]
  allowUnsigned?: boolean
  allowInsecureMirrors?: boolean
  allowHost?: string[]
  connections?: number
  bandwidth?: number
  hfEndpoint?: string
  peer?: string[]
}

/** Adds `--store <dir>`; shared by every command that reads the store. */
export function withStore(command: Command): Command {
  return command.option(
    '--store <dir>',
    `the model store (default LLMESH_HOME or ${defaultStoreRoot()})`,
  )
}

function withSources(command: Command): Command {
  return withStore(command)
    .option(
      '--trusted-key <file...>',
      'public keys (PEM) whose signatures make manifests and catalogs trusted',
    )
    .option('--allow-unsigned', 'accept an unsigned catalog (or one signed by an unknown key)')
    .option('--allow-insecure-mirrors', 'accept http mirrors (a LAN or test mirror)')
    .option('--allow-host <host...>', 'download only from these mirror hosts')
    .option('--connections <count>', 'requests in flight per file (default 16)', parseInteger)
    .option(
      '--bandwidth <rate>',
      'cap on bytes per second over all downloads, such as 20MB',
      parseByteSize,
    )
    .option(
      '--hf-endpoint <url>',
      'hub for hf: URIs (default HF_ENDPOINT or https://huggingface.co)',
    )
    .option(
      '--peer <multiaddr...>',
      'libp2p peers (with /p2p/<id>) to fetch pieces from, beside the mirrors',
      collectMultiaddr,
    )
}

async function openStore(options: StoreOptions): Promise<ModelStore> {
  return ModelStore.open({ root: options.store ?? defaultStoreRoot() })
}

/** Runs `body` on the store named by the options, closing it afterwards whatever happens. */
export async function withOpenStore<Result>(
  options: StoreOptions,
  body: (store: ModelStore) => Promise<Result> | Result,
): Promise<Result> {
  const store = await openStore(options)
  try {
    return await body(store)
  } finally {
    store.close()
  }
}

async function trustedKeys(files: string[] | undefined): Promise<TrustedKey[] | undefined> {
  if (files === undefined) return undefined
  return Promise.all(
    files.map(async (file) => importTrustedKey(await readFile(file, 'utf8'), file)),
  )
}

async function withDownloader<Result>(
  options: SourceOptions,
  body: (downloader: Downloader, store: ModelStore) => Promise<Result>,
): Promise<Result> {
  const store = await openStore(options)
  const peers = options.peer ?? []
  const node = peers.length === 0 ? undefined : await createPeerNode({ store })
  const downloader = createDownloader({
    store,
    // The peers beside the mirrors; and while it pulls, the node serves the pieces it verified.
    ...(node === undefined
      ? {}
      : {
          extraSources: () => [new PeerByteSource(node, peers)],
          sharePartial: (blob) => node.sharePartial(blob),
        }),
    allowInsecureMirrors: options.allowInsecureMirrors === true,
    ...(options.allowHost === undefined ? {} : { allowHosts: options.allowHost }),
    ...(options.connections === undefined ? {} : { connections: options.connections }),
    ...(options.bandwidth === undefined ? {} : { bandwidth: options.bandwidth }),
    ...(options.hfEndpoint === undefined ? {} : { hfEndpoint: options.hfEndpoint }),
  })
  try {
    return await body(downloader, store)
  } finally {
    await downloader.close()
    await node?.stop()
    store.close()
  }
}

export function registerStoreCommands(program: Command, context: CommandContext): void {
  withSources(
    program
      .command('pull')
      .description('download a model, verify every piece, and keep it in the store')
      .argument(
        '<model>',
        'a manifest file or URL, an hf:<owner>/<repo>/<file>[#revision] URI, or id[@version] (from the store or --catalog)',
      )
      .option(
        '--catalog <location...>',
        'catalogs (URLs or files, tried in order) to find id[@version] in',
      ),
  ).action(async (target: string, options: SourceOptions) => {
    const output = context.output()
    const keys = await trustedKeys(options.trustedKey)
    await withDownloader(options, async (downloader, store) => {
      const progress = new PullProgress(output)
      try {
        let pullTarget: string | Manifest = target
        const isReference =
          !/^(hf:|https?:|file:)/.test(target) &&
          !/\.(json|ya?ml)$/i.test(target) &&
          !target.startsWith('.') &&
          !target.startsWith('/')
        if (isReference && options.catalog !== undefined) {
          const { catalog } = await fetchCatalog(options.catalog, {
            trustedKeys: keys ?? [],
            allowUnsigned: options.allowUnsigned === true,
            allowInsecureMirrors: options.allowInsecureMirrors === true,
            signal: context.signal,
          })
          const at = target.lastIndexOf('@')
          const id = at > 0 ? target.slice(0, at) : target
          const version = at > 0 ? target.slice(at + 1) : undefined
          const found = catalog.models
            .filter(
              (model) => model.id === id && (version === undefined || model.version === version),
            )
            .at(-1)
          if (found !== undefined) pullTarget = found
        }
        const result = await downloader.pull(pullTarget, {
          signal: context.signal,
          onProgress: progress.onProgress,
          ...(keys === undefined || typeof pullTarget !== 'string' ? {} : { trustedKeys: keys }),
        })
        progress.stop()
        if (output.json) output.line({ result })
        else output.result(result, describePull(result, store))
      } finally {
        progress.stop()
      }
    })
  })

  withSources(
    program
      .command('precache')
      .description(
        'pull every model a catalog marks as required; fails naming each model that failed',
      )
      .argument(
        '<catalog...>',
        'catalog URLs or files, tried in order until one is valid and trusted',
      ),
  ).action(async (endpoints: string[], options: SourceOptions) => {
    const output = context.output()
    const keys = await trustedKeys(options.trustedKey)
    await withDownloader(options, async (downloader) => {
      const { catalog, endpoint, keyId } = await fetchCatalog(endpoints, {
        trustedKeys: keys ?? [],
        allowUnsigned: options.allowUnsigned === true,
        allowInsecureMirrors: options.allowInsecureMirrors === true,
        signal: context.signal,
      })
      output.info(
        `catalog from ${endpoint} (${keyId === undefined ? 'unsigned, accepted by --allow-unsigned' : `signed by ${keyId}`}); ${catalog.required.length} required models`,
      )
      const progress = new PullProgress(output)
      try {
        const result = await precache(downloader, catalog, {
          signal: context.signal,
          onProgress: progress.onProgress,
        })
        progress.stop()
        output.result(result, `${result.pulled.length} required models in the store`)
      } finally {
        progress.stop()
      }
    })
  })

  withStore(program.command('ls').description('list the models in the store')).action(
    async (options: StoreOptions) => {
      const output = context.output()
      await withOpenStore(options, async (store) => {
        const models = store.list()
        const rows = models.map((model) => [
          `${model.id}@${model.version}`,
          model.stage,
          model.status,
          formatBytes(model.files.reduce((sum, file) => sum + file.size, 0)),
          model.pinned ? 'pinned' : '',
          store.modelPath(model.id, model.version),
        ])
        output.result(
          models.map((model) => ({ ...model, path: store.modelPath(model.id, model.version) })),
          models.length === 0
            ? `no models in ${store.root}`
            : table(['MODEL', 'STAGE', 'STATUS', 'SIZE', 'PIN', 'PATH'], rows),
        )
      })
    },
  )

  withStore(program.command('rm').description('remove a model, and the files no other model uses'))
    .argument('<model>', 'id or id@version')
    .option('--force', 'remove even a pinned or in-use model')
    .action(async (reference: string, options: StoreOptions & { force?: boolean }) => {
      const output = context.output()
      await withOpenStore(options, async (store) => {
        const { removed, freedBytes } = await store.remove(reference, {
          force: options.force === true,
        })
        output.result(
          { removed, freedBytes },
          `removed ${removed.id}@${removed.version}, freed ${formatBytes(freedBytes)}`,
        )
      })
    })

  withStore(program.command('pin').description('keep a model through prune and rm'))
    .argument('<model>', 'id or id@version')
    .option('--remove', 'unpin instead')
    .action(async (reference: string, options: StoreOptions & { remove?: boolean }) => {
      const output = context.output()
      await withOpenStore(options, async (store) => {
        const model = store.pin(reference, options.remove !== true)
        output.result(model, `${model.pinned ? 'pinned' : 'unpinned'} ${model.id}@${model.version}`)
      })
    })

  withStore(
    program
      .command('prune')
      .description('remove old versions, least recently used first, never pinned or in-use ones'),
  )
    .option('--keep <count>', 'versions kept per model', parseInteger, 1)
    .option(
      '--max-size <size>',
      'stop once the store uses at most this much, such as 50GB',
      parseByteSize,
    )
    .option('--dry-run', 'show what would be removed')
    .action(
      async (options: StoreOptions & { keep: number; maxSize?: number; dryRun?: boolean }) => {
        const output = context.output()
        await withOpenStore(options, async (store) => {
          const result = await store.prune({
            keepVersions: options.keep,
            ...(options.maxSize === undefined ? {} : { maxBytes: options.maxSize }),
            dryRun: options.dryRun === true,
          })
          const names = result.removed.map((model) => `${model.id}@${model.version}`)
          output.result(
            result,
            names.length === 0
              ? 'nothing to prune'
              : `${options.dryRun ? 'would remove' : 'removed'} ${names.join(', ')} (${formatBytes(result.freedBytes)})`,
          )
        })
      },
    )

  withStore(
    program.command('verify').description('re-hash every file in the store and report damage'),
  )
    .option('--remove', 'delete damaged files so the next pull fetches them again')
    .action(async (options: StoreOptions & { remove?: boolean }) => {
      const output = context.output()
      await withOpenStore(options, async (store) => {
        const report = await store.verify({
          signal: context.signal,
          remove: options.remove === true,
        })
        const human =
          report.damaged.length === 0
            ? `${report.checked} ${report.checked === 1 ? 'file' : 'files'} checked, all intact`
            : `${report.damaged.length} of ${report.checked} ${report.checked === 1 ? 'file' : 'files'} damaged:\n${report.damaged.map((blob) => `  ${blob.sha256} ${blob.reason} (${blob.models.join(', ') || 'no model'})`).join('\n')}`
        output.result(report, human)
        if (report.damaged.length > 0)
          throw new LlmeshError({
            code: 'LLMESH_STORE_DAMAGED',
            message: `${report.damaged.length} damaged files in ${store.root}${options.remove ? ' (removed; pull again)' : '; run llmesh verify --remove, then pull again'}`,
          })
      })
    })

  withStore(program.command('du').description('show how much space the store uses')).action(
    async (options: StoreOptions) => {
      const output = context.output()
      await withOpenStore(options, async (store) => {
        const usage = await store.usage()
        const rows = usage.models.map((model) => [
          `${model.id}@${model.version}`,
          formatBytes(model.bytes),
          model.pinned ? 'pinned' : '',
        ])
        output.result(
          { root: store.root, ...usage },
          `${rows.length > 0 ? `${table(['MODEL', 'SIZE', 'PIN'], rows)}\n` : ''}files ${formatBytes(usage.blobBytes)} (shared files counted once), partial downloads ${formatBytes(usage.partialBytes)}, in ${store.root}`,
        )
      })
    },
  )
}

function describePull(result: PullResult, store: ModelStore): string {
  const lines = [
    `${result.id}@${result.version} is in the store (${(result.durationMs / 1000).toFixed(1)} s)`,
  ]
  for (const file of result.files) {
    lines.push(
      `  ${file.path}: ${formatBytes(file.size)}, ${file.cached ? 'already in the store' : describeVerification(file.verification)}`,
    )
    const sources = Object.entries(file.bySource)
    if (sources.length > 0)
      lines.push(
        `    from ${sources.map(([source, bytes]) => `${source} (${formatBytes(bytes)})`).join(', ')}`,
      )
    if (file.resumedBytes > 0)
      lines.push(`    resumed with ${formatBytes(file.resumedBytes)} already verified`)
  }
  lines.push(`  path: ${store.modelPath(result.id, result.version)}`)
  return lines.join('\n')
}
