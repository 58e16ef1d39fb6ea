/**
 * The whole mesh on one machine, on 127.0.0.1 only, with nothing to configure:
 *
 *   1. a testkit model, its signed manifest and catalog, served by two local mirrors;
 *   2. a registry on embedded SQLite;
 *   3. node A pulls the model from the mirrors, passes its smoke test, registers and serves;
 *   4. node B gets the same model from node A over libp2p (and the mirrors), verifies it, passes
 *      its smoke test, registers and serves;
 *   5. a gateway routes chat requests to them (one streams to this terminal);
 *   6. node A stops in the middle of a burst of requests, and they carry on on node B;
 *   7. a summary, then everything stops: no process is left behind.
 *
 *   node examples/mesh-demo/demo.ts [--json]   (after a build; `pnpm demo` does both)
 *
 * With --json the last line on stdout is the summary as JSON (CI checks it).
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { createDownloader, type DownloadProgressEvent, ModelStore } from '@llmesh/downloader'
import {
  createInferenceEngine,
  createModelPool,
  createNodeServer,
  type InferenceEngine,
  runSmokeTest,
  storeModelResolver,
} from '@llmesh/inference'
import {
  createManifest,
  generateSigningKey,
  importTrustedKey,
  type PieceIndex,
  signCatalog,
  verifyCatalog,
} from '@llmesh/manifest'
import { createPeerNode, PeerByteSource, type PeerNode } from '@llmesh/p2p-storage'
import { createHostCache, createRegistryClient, startHeartbeat } from '@llmesh/registry-client'
import { createRegistry } from '@llmesh/registry-server'
import { createGateway, registryNodeSource } from '@llmesh/router'
import { startMirror, writeTinyGguf } from '@llmesh/testkit'

const { values } = parseArgs({ options: { json: { type: 'boolean', default: false } } })
const say = (text: string) => process.stderr.write(`${text}\n`)
const MODEL_ID = 'demo/tiny-llama'
const cleanup: Array<() => Promise<unknown> | unknown> = []
const started = performance.now()

async function main() {
  const folder = await mkdtemp(join(tmpdir(), 'llmesh-demo-'))
  cleanup.push(() => rm(folder, { recursive: true, force: true }))

  // 1. Publish: a model, its manifest signed with a fresh key, a signed catalog, two mirrors.
  say('1. publishing a model: manifest, signature, catalog, two mirrors')
  const model = await writeTinyGguf(join(folder, 'tiny-llama.gguf'), {
    type: 'f16',
    embeddingLength: 256,
    feedForwardLength: 512,
    vocabularySize: 4096,
    contextLength: 512,
    seed: 2026,
  })
  const key = generateSigningKey()
  const mirrors = [
    await startMirror({
      files: { '/tiny-llama.gguf': model.path },
      bytesPerSecondPerConnection: 1_500_000,
    }),
    await startMirror({
      files: { '/tiny-llama.gguf': model.path },
      bytesPerSecondPerConnection: 1_500_000,
    }),
  ]
  for (const mirror of mirrors) cleanup.push(() => mirror.close())
  const { manifest, pieceIndexes } = await createManifest({
    files: [
      {
        file: model.path,
        path: 'tiny-llama.gguf',
        mirrors: mirrors.map((mirror) => `${mirror.url}/tiny-llama.gguf`),
      },
    ],
    manifest: {
      id: MODEL_ID,
      version: '1.0.0',
      license: { id: 'apache-2.0' },
      smokeTest: {
        prompt: 'Say hello to the mesh.',
        maxTokens: 8,
        maxSeconds: 60,
        expect: { minTokens: 8 },
      },
      entrypoint: { artifact: 'tiny-llama.gguf', contextSize: 256 },
    },
    pieceSize: 64 * 1024,
    allowInsecureMirrors: true,
  })
  const catalog = signCatalog({ schemaVersion: 1, name: 'demo', models: [manifest] }, key, {
    allowInsecureMirrors: true,
  })
  const trusted = importTrustedKey(key.publicKey, 'demo release key')
  say(
    `   ${MODEL_ID}: ${(model.size / 1024 / 1024).toFixed(1)} MiB, ${pieceIndexes[0]!.pieceSize / 1024} KiB pieces, catalog signed by ${key.keyId}`,
  )

  // 2. A registry on embedded SQLite.
  const adminToken = 'demo-admin-token'
  const registry = createRegistry({
    database: join(folder, 'registry.db'),
    adminToken,
    heartbeatIntervalMs: 1_000,
  })
  const registryServer = await registry.listen()
  cleanup.push(async () => {
    await registryServer.close()
    await registry.close()
  })
  const admin = createRegistryClient({ urls: [registryServer.url], token: adminToken })
  say(`2. registry on ${registryServer.url} (SQLite)`)

  const engine = await createInferenceEngine()
  cleanup.push(() => engine.dispose())

  // 3 and 4. Two nodes; each trusts the catalog only after checking its signature.
  const shared: NodeSetup = {
    folder,
    registryUrl: registryServer.url,
    engine,
    admin,
    catalogText: JSON.stringify(catalog),
    trusted,
    pieceIndex: pieceIndexes[0]!,
  }
  const nodeA = await startNode('node-a', shared, [])
  const nodeB = await startNode('node-b', shared, [nodeA.peer.addresses[0]!.toString()])

  // 5. The gateway, over the registry's ready nodes.
  const reader = createRegistryClient({ urls: [registryServer.url], token: adminToken })
  const hosts = createHostCache(reader, { refreshMs: 250 })
  cleanup.push(() => hosts.close())
  await waitFor(async () => {
    await hosts.refresh()
    return hosts.hosts({ state: 'ready' }).length === 2
  }, 'both nodes ready in the registry')
  // A burst of 24 requests is the whole traffic here: allow enough retries for all of them to move.
  const gateway = createGateway({
    nodes: registryNodeSource(hosts),
    firstTokenTimeoutMs: 10_000,
    retryBudget: { minimumPerWindow: 50 },
  })
  const gatewayServer = await gateway.listen()
  cleanup.push(async () => {
    await gatewayServer.close()
    await gateway.close()
  })
  say(`5. gateway on ${gatewayServer.url}/v1, routing over the registry's ready nodes`)
  say('   a streamed answer (the model is random: nonsense, but real generation):')
  process.stderr.write('   > ')
  const stream = await fetch(`${gatewayServer.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      model: MODEL_ID,
      messages: [{ role: 'user', content: 'Hello, mesh!' }],
      max_tokens: 24,
      stream: true,
    }),
  })
  const decoder = new TextDecoder()
  let buffered = ''
  for await (const chunk of stream.body!) {
    buffered += decoder.decode(chunk, { stream: true })
    const events = buffered.split('\n\n')
    buffered = events.pop() ?? ''
    for (const event of events) {
      if (!event.startsWith('data: ') || event === 'data: [DONE]') continue
      process.stderr.write(JSON.parse(event.slice(6)).choices[0]?.delta?.content ?? '')
    }
  }
  say(`\n   (served by ${stream.headers.get('x-llmesh-node')})`)

  // 6. A burst of requests; node A stops in the middle of it.
  say('6. 24 requests in flight; node A stops in the middle')
  const latencies: number[] = []
  const servedBy: Record<string, number> = {}
  let failed = 0
  const failures: string[] = []
  const burst = Array.from({ length: 24 }, async (_, index) => {
    const requestStarted = performance.now()
    const response = await fetch(`${gatewayServer.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        model: MODEL_ID,
        messages: [{ role: 'user', content: `question ${index}` }],
        max_tokens: 16,
      }),
    })
    const text = await response.text()
    if (response.status !== 200) {
      failed++
      failures.push(`${response.status}: ${text.slice(0, 200)}`)
    } else {
      const node = response.headers.get('x-llmesh-node') ?? '?'
      servedBy[node] = (servedBy[node] ?? 0) + 1
      latencies.push(performance.now() - requestStarted)
    }
  })
  await waitFor(async () => latencies.length >= 4, 'the first answers')
  await nodeA.stop()
  say('   node A stopped')
  await Promise.all(burst)
  say(
    `   ${latencies.length} answered (${Object.entries(servedBy)
      .map(([node, count]) => `${node}: ${count}`)
      .join(', ')}), ${failed} failed`,
  )
  for (const failure of failures) say(`   failed: ${failure}`)

  // 7. Summary.
  const sorted = [...latencies].sort((a, b) => a - b)
  const summary = {
    model: MODEL_ID,
    bytes: model.size,
    nodeA: {
      bySource: nodeA.bySource,
      verification: nodeA.verification,
      smokeTest: nodeA.smokeTest,
    },
    nodeB: {
      bySource: nodeB.bySource,
      verification: nodeB.verification,
      smokeTest: nodeB.smokeTest,
    },
    burst: { requests: 24, answered: latencies.length, failed, servedBy },
    latencyMs: {
      p50: sorted[Math.floor(sorted.length * 0.5)] ?? 0,
      p90: sorted[Math.floor(sorted.length * 0.9)] ?? 0,
    },
    usage: gateway.state().usage,
    seconds: (performance.now() - started) / 1000,
  }
  await nodeB.stop()
  say('7. summary')
  for (const [name, node] of [
    ['node A', summary.nodeA],
    ['node B', summary.nodeB],
  ] as const)
    say(
      `   ${name}: ${describeSources(node.bySource)}; verified ${node.verification}; smoke test ${node.smokeTest}`,
    )
  say(
    `   requests: ${summary.burst.answered} of 24 answered during the failover, ${failed} failed; served by ${JSON.stringify(servedBy)}`,
  )
  say(
    `   latency p50 ${summary.latencyMs.p50.toFixed(0)} ms, p90 ${summary.latencyMs.p90.toFixed(0)} ms; whole demo ${summary.seconds.toFixed(1)} s`,
  )
  if (values.json) process.stdout.write(`${JSON.stringify(summary)}\n`)
  return summary
}

interface NodeSetup {
  folder: string
  registryUrl: string
  engine: InferenceEngine
  admin: ReturnType<typeof createRegistryClient>
  /** The catalog as served: verified against `trusted` before a model is taken from it. */
  catalogText: string
  trusted: ReturnType<typeof importTrustedKey>
  pieceIndex: PieceIndex
}

async function startNode(name: string, setup: NodeSetup, peers: string[]) {
  const label = name === 'node-a' ? '3. node A' : '4. node B'
  const { catalog, keyId } = verifyCatalog(setup.catalogText, [setup.trusted], {
    allowInsecureMirrors: true,
  })
  const manifest = catalog.models.find((model) => model.id === MODEL_ID)!
  const store = await ModelStore.open({ root: join(setup.folder, name) })
  const peer: PeerNode = await createPeerNode({ store })
  const downloader = createDownloader({
    store,
    allowInsecureMirrors: true,
    // While it pulls, the node serves the pieces it verified (as `llmesh node` does).
    sharePartial: (blob) => peer.sharePartial(blob),
    ...(peers.length === 0 ? {} : { extraSources: () => [new PeerByteSource(peer, peers)] }),
  })
  say(
    `${label}: catalog signature checked (${keyId}); pulling ${MODEL_ID}${peers.length === 0 ? ' from the mirrors' : ' from node A over libp2p and the mirrors'}`,
  )
  let lastShown = -1
  const pulled = await downloader.pull(manifest, {
    pieceIndexes: [setup.pieceIndex],
    onProgress: (event: DownloadProgressEvent) => {
      if (event.type !== 'download:progress') return
      const percent = Math.floor((event.detail.verifiedBytes / event.detail.totalBytes) * 10) * 10
      if (percent > lastShown) {
        lastShown = percent
        process.stderr.write(`   ${percent} %`)
      }
    },
  })
  process.stderr.write('\n')
  await downloader.close()
  const file = pulled.files[0]!
  say(`   verified (${file.verification}): ${describeSources(file.bySource)}`)

  const pool = createModelPool({
    engine: setup.engine,
    resolve: storeModelResolver(store),
    slots: 2,
    // Room for the whole burst when the other node is gone.
    maxQueue: 64,
  })
  const smoke = await runSmokeTest({ pool, store, model: MODEL_ID })
  if (!smoke.passed) throw new Error(`${name}: smoke test failed: ${smoke.reason}`)
  say(
    `   smoke test passed (${smoke.completionTokens} tokens in ${smoke.seconds.toFixed(2)} s); status ${store.resolve(MODEL_ID).status}`,
  )
  const server = createNodeServer({ pool, models: [MODEL_ID] })
  await server.ready
  const listening = await server.listen()
  const credential = await setup.admin.createCredential({ name, role: 'node', nodeId: name })
  const client = createRegistryClient({ urls: [setup.registryUrl], token: credential.token })
  const hardware = await setup.engine.hardware()
  const heartbeat = startHeartbeat(client, {
    registration: {
      nodeId: name,
      endpoint: listening.url,
      peerId: peer.peerId.toString(),
      addresses: peer.addresses.map(String),
      hardware: {
        ramBytes: hardware.ram.totalBytes,
        cpu: { model: hardware.cpu.model, cores: hardware.cpu.logicalCores },
      },
      models: [{ id: MODEL_ID, version: '1.0.0', digest: file.sha256, contextSize: 256 }],
      capacitySlots: 2,
    },
    load: () => {
      const loaded = pool.loaded()
      return {
        inFlight: loaded.reduce((sum, entry) => sum + entry.inFlight, 0),
        queueDepth: loaded.reduce((sum, entry) => sum + entry.queued, 0),
        tokensPerSecond: 0,
      }
    },
    intervalMs: 500,
  })
  say(
    `   serving on ${listening.url}/v1, registered; seeding over libp2p as ${peer.peerId.toString().slice(0, 16)}…`,
  )
  let stopped = false
  const stop = async () => {
    if (stopped) return
    stopped = true
    await heartbeat.stop()
    await listening.close()
    await pool.close()
    await peer.stop()
    store.close()
  }
  cleanup.push(stop)
  return {
    peer,
    bySource: file.bySource,
    verification: file.verification,
    smokeTest: 'passed',
    stop,
  }
}

function describeSources(bySource: Record<string, number>): string {
  const parts = Object.entries(bySource)
    .filter(([, bytes]) => bytes > 0)
    .map(
      ([source, bytes]) =>
        `${(bytes / 1024 / 1024).toFixed(1)} MiB from ${source.startsWith('peers:') ? 'node A (libp2p)' : source.replace(/\/tiny-llama\.gguf$/, '')}`,
    )
  return parts.join(', ') || 'nothing (already in the store)'
}

async function waitFor(
  check: () => Promise<boolean>,
  what: string,
  timeoutMs = 30_000,
): Promise<void> {
  const deadline = performance.now() + timeoutMs
  while (!(await check())) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

let exitCode = 0
try {
  await main()
} catch (error) {
  exitCode = 1
  say(`demo failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`)
} finally {
  for (const step of cleanup.reverse()) await Promise.resolve(step()).catch(() => {})
}
process.exit(exitCode)
