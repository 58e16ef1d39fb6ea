/**
 * Load on the registry: N simulated nodes, each with its own node credential, heartbeat every
 * 10 s (N / 10 heartbeats per second) for the duration, while clients look up the hosts of random
 * models. Reports latency percentiles and errors of both, as the clients see them.
 *
 *   node bench/registry.bench.ts [--nodes 10000] [--seconds 60] [--lookups-per-second 200] [--smoke]
 *
 * The load comes from wrk (Debian's `wrk`, C, with the Lua scripts in bench/wrk/): a load
 * generator in Node would add its own garbage-collection pauses to the figures it measures, and
 * share the cores with the registry more heavily. Each wrk connection waits a random delay between
 * requests, so requests arrive spread out at the set rates. Setup (credentials, registrations)
 * goes through @llmesh/registry-client.
 *
 * The anchor is the same load against a bare node:http server answering a fixed body of the same
 * size (what node:http itself costs on this machine), in the same run. Writes
 * bench/results/registry.json and the table in README.md (not in --smoke mode).
 */
import { spawn } from 'node:child_process'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { cpus, tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { createRegistryClient } from '@llmesh/registry-client'
import { Pool } from 'undici'

const { values } = parseArgs({
  options: {
    nodes: { type: 'string', default: '10000' },
    seconds: { type: 'string', default: '60' },
    'lookups-per-second': { type: 'string', default: '200' },
    smoke: { type: 'boolean', default: false },
    /** Load a registry already running (admin token `bench-admin`) instead of starting one. */
    url: { type: 'string' },
  },
})
const smoke = values.smoke === true
const nodeCount = smoke ? 200 : Number(values.nodes)
const seconds = smoke ? 3 : Number(values.seconds)
const lookupsPerSecond = smoke ? 50 : Number(values['lookups-per-second'])
const heartbeatsPerSecond = nodeCount / 10
const modelCount = 100
const wrkFolder = new URL('./wrk/', import.meta.url).pathname

const digestOf = (index: number) => index.toString(16).padStart(64, '0')

/** A child process that prints `{"url": ...}` on its first line, and its URL. */
async function startChild(script: string, args: string[]) {
  const child = spawn(process.execPath, [new URL(script, import.meta.url).pathname, ...args], {
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  const url = await new Promise<string>((resolve, reject) => {
    child.stdout.once('data', (chunk: Buffer) =>
      resolve((JSON.parse(chunk.toString()) as { url: string }).url),
    )
    child.once('exit', (code) => reject(new Error(`${script} exited ${code}`)))
  })
  return { child, url }
}

interface WrkSummary {
  requests: number
  bytes: number
  durationUs: number
  errors: { connect: number; read: number; write: number; status: number; timeout: number }
  p50: number
  p90: number
  p99: number
  max: number
}

/** One wrk process sending `rate` requests per second for `duration` seconds; its summary. */
async function runWrk(
  script: 'heartbeat' | 'lookup',
  target: string,
  rate: number,
  duration: number,
  environment: Record<string, string>,
): Promise<WrkSummary> {
  // About 20 requests per second per connection, each waiting a random delay between requests.
  const connections = Math.max(1, Math.ceil(rate / 20))
  const child = spawn(
    'wrk',
    ['-t1', `-c${connections}`, `-d${duration}s`, '-s', join(wrkFolder, `${script}.lua`), target],
    {
      stdio: ['ignore', 'pipe', 'inherit'],
      env: {
        ...process.env,
        ...environment,
        LLMESH_WRK_DIR: wrkFolder,
        LLMESH_DELAY_MS: String((connections * 1000) / rate),
      },
    },
  )
  let output = ''
  child.stdout.on('data', (chunk: Buffer) => {
    output += chunk.toString()
  })
  const code = await new Promise<number | null>((resolve, reject) => {
    child.once('error', (error) =>
      reject(new Error(`wrk could not start (${error.message}); install it: apt-get install wrk`)),
    )
    // 'close', not 'exit': 'exit' can come before stdout is read to its end (the summary lost).
    child.once('close', resolve)
  })
  const line = output.split('\n').find((text) => text.startsWith('{'))
  if (code !== 0 || line === undefined) throw new Error(`wrk ${script} failed (${code}): ${output}`)
  return JSON.parse(line) as WrkSummary
}

/** Heartbeats and lookups at once against `target`, with the same rates and duration. */
async function load(target: string, duration: number, tokensFile: string, readToken: string) {
  const [heartbeat, lookup] = await Promise.all([
    runWrk('heartbeat', target, heartbeatsPerSecond, duration, { LLMESH_TOKENS: tokensFile }),
    runWrk('lookup', target, lookupsPerSecond, duration, {
      LLMESH_MODELS: String(modelCount),
      LLMESH_READ_TOKEN: readToken,
    }),
  ])
  return { heartbeat, lookup }
}

const errorsOf = (summary: WrkSummary) =>
  Object.values(summary.errors).reduce((total, count) => total + count, 0)

const folder = await mkdtemp(join(tmpdir(), 'llmesh-bench-registry-'))
const registry =
  values.url === undefined
    ? await startChild('./registry-server-child.ts', [join(folder, 'registry.db')])
    : undefined
const url = values.url ?? registry!.url
let anchorServer: Awaited<ReturnType<typeof startChild>> | undefined

const pool = new Pool(url, { connections: 64, pipelining: 1 })
try {
  // Setup: one credential and one registration per node (not timed).
  const admin = createRegistryClient({ urls: [url], token: 'bench-admin', dispatcher: pool })
  const tokens: string[] = []
  for (let start = 0; start < nodeCount; start += 200) {
    const batch = Array.from(
      { length: Math.min(200, nodeCount - start) },
      (_, offset) => start + offset,
    )
    const created = await Promise.all(
      batch.map((index) =>
        admin.createCredential({ name: `node-${index}`, role: 'node', nodeId: `node-${index}` }),
      ),
    )
    await Promise.all(
      created.map(({ token }, offset) => {
        const index = start + offset
        tokens[index] = token
        return createRegistryClient({ urls: [url], token, dispatcher: pool }).register({
          nodeId: `node-${index}`,
          endpoint: `http://10.0.${Math.floor(index / 250)}.${index % 250}:8080`,
          hardware: {
            ramBytes: 64 * 1024 ** 3,
            cpu: { model: 'EPYC', cores: 32 },
            gpus: [{ name: 'RTX 4090', vramBytes: 24 * 1024 ** 3, backend: 'cuda' }],
          },
          models: [index % modelCount, (index * 7 + 3) % modelCount].map((model) => ({
            id: `acme/model-${model}`,
            version: '1.0.0',
            digest: digestOf(model),
            specialties: model % 3 === 0 ? ['code'] : ['chat'],
          })),
          capacitySlots: 4,
          tokenCostPer1k: 0.1,
        })
      }),
    )
  }

  const tokensFile = join(folder, 'tokens.txt')
  await writeFile(tokensFile, `${tokens.join('\n')}\n`)

  const measured = await load(url, seconds, tokensFile, tokens[0]!)

  // How many hosts a lookup returned: every model once, after the load.
  let hosts = 0
  for (let model = 0; model < modelCount; model++) {
    const response = await pool.request({
      path: `/v1/hosts?model=acme/model-${model}`,
      method: 'GET',
      headers: { authorization: `Bearer ${tokens[0]}` },
    })
    hosts += ((await response.body.json()) as { nodes: unknown[] }).nodes.length
  }

  // The registry's own view: its request-duration histogram, which leaves out the client's queue.
  const metricsText = await (await pool.request({ path: '/metrics', method: 'GET' })).body.text()
  const serverP99 = (route: string) => {
    const buckets = [
      ...metricsText.matchAll(
        new RegExp(
          `llmesh_registry_request_duration_seconds_bucket\\{le="([^"]+)",route="${route.replaceAll('/', '\\/')}",status="200"\\} (\\d+)`,
          'g',
        ),
      ),
    ].map((match) => ({
      le: match[1] === '+Inf' ? Number.POSITIVE_INFINITY : Number(match[1]) * 1000,
      count: Number(match[2]),
    }))
    const total = buckets.at(-1)?.count ?? 0
    return buckets.find((bucket) => bucket.count >= total * 0.99)?.le ?? Number.NaN
  }

  // Anchor: the same load against a bare node:http server answering bodies of the same sizes.
  const lookupBytes = Math.round(measured.lookup.bytes / Math.max(1, measured.lookup.requests))
  anchorServer = await startChild('./bare-server-child.ts', [String(lookupBytes)])
  const anchor = await load(anchorServer.url, Math.min(seconds, 30), tokensFile, tokens[0]!)

  const rateOf = (summary: WrkSummary) => summary.requests / (summary.durationUs / 1e6)
  const figures = (summary: WrkSummary) => ({
    count: summary.requests,
    perSecond: rateOf(summary),
    p50: summary.p50,
    p90: summary.p90,
    p99: summary.p99,
    max: summary.max,
    errors: errorsOf(summary),
  })
  const results = {
    date: new Date().toISOString(),
    node: process.version,
    cpu: cpus()[0]?.model.trim(),
    cores: cpus().length,
    loadGenerator: 'wrk',
    nodes: nodeCount,
    seconds,
    heartbeatsPerSecond,
    lookupsPerSecond,
    averageHostsPerLookup: hosts / modelCount,
    averageLookupBytes: lookupBytes,
    heartbeat: {
      ...figures(measured.heartbeat),
      serverP99AtMostMs: serverP99('/v1/nodes/:nodeId/heartbeat'),
    },
    lookup: { ...figures(measured.lookup), serverP99AtMostMs: serverP99('/v1/hosts') },
    bareHttpAnchor: { heartbeat: figures(anchor.heartbeat), lookup: figures(anchor.lookup) },
    targets: { errors: 0, heartbeatP99Ms: 20, lookupP99Ms: 5 },
  }
  const ms = (value: number) => `${value.toFixed(2)} ms`
  const row = (name: string, summary: WrkSummary, target: string) =>
    `| ${name} | ${rateOf(summary).toFixed(0)}/s | ${ms(summary.p50)} | ${ms(summary.p90)} | ${ms(summary.p99)} | ${ms(summary.max)} | ${summary.requests} | ${errorsOf(summary)} | ${target} |`
  const kilobytes = `${(lookupBytes / 1000).toFixed(0)} kB`
  const table = [
    '| figure | rate | p50 | p90 | p99 | max | count | errors | target |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- |',
    row(`heartbeat (from ${nodeCount} nodes)`, measured.heartbeat, 'p99 ≤ 20 ms, no errors'),
    row(
      `host lookup (${results.averageHostsPerLookup.toFixed(0)} hosts, ${kilobytes})`,
      measured.lookup,
      'p99 ≤ 5 ms, no errors',
    ),
    `| same, inside the registry (its histogram: p99 at most) | | | | heartbeat ≤ ${results.heartbeat.serverP99AtMostMs} ms, lookup ≤ ${results.lookup.serverP99AtMostMs} ms | | | | |`,
    row('anchor: bare node:http, heartbeat', anchor.heartbeat, ''),
    row(`anchor: bare node:http, fixed ${kilobytes} body`, anchor.lookup, ''),
  ].join('\n')
  console.log(table)
  if (!smoke) {
    const resultsFolder = new URL('./results/', import.meta.url).pathname
    await import('node:fs/promises').then(({ mkdir }) => mkdir(resultsFolder, { recursive: true }))
    await writeFile(join(resultsFolder, 'registry.json'), `${JSON.stringify(results, null, 2)}\n`)
    const readme = new URL('../README.md', import.meta.url).pathname
    const text = await readFile(readme, 'utf8').catch(() => '')
    const start = '<!-- bench:registry:start -->'
    const end = '<!-- bench:registry:end -->'
    if (text.includes(start))
      await writeFile(
        readme,
        `${text.slice(0, text.indexOf(start) + start.length)}\n${table}\n\nMeasured ${results.date} on ${results.cores} cores (${results.cpu}), Node ${process.version}, ${seconds} s of load from wrk, registry on SQLite in its own process. Reproduce: \`pnpm --filter @llmesh/registry-server bench\`.\n${text.slice(text.indexOf(end))}`,
      )
  }
  if (errorsOf(measured.heartbeat) + errorsOf(measured.lookup) > 0 && smoke) process.exitCode = 1
} finally {
  await pool.close()
  registry?.child.kill('SIGTERM')
  anchorServer?.child.kill('SIGTERM')
  await rm(folder, { recursive: true, force: true })
}
