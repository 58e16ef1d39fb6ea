/**
 * Load on the registry: N simulated nodes, each with its own node credential, heartbeat every
 * 10 s (spread evenly: N / 10 heartbeats per second) for the duration, while clients look up the
 * hosts of random models. Reports latency percentiles and errors of both, measured by the client.
 *
 *   node bench/registry.bench.ts [--nodes 10000] [--seconds 60] [--lookups-per-second 200] [--smoke]
 *
 * The anchor is the same request against a bare node:http server answering a fixed JSON body
 * (raw HTTP cost on this machine), measured in the same run. Writes bench/results/registry.json
 * and the table in README.md (not in --smoke mode).
 */
import { spawn } from 'node:child_process'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
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
const heartbeatIntervalMs = 10_000
const modelCount = 100

const percentile = (sorted: number[], fraction: number) =>
  sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * fraction))] ?? Number.NaN
const summary = (latencies: number[]) => {
  const sorted = [...latencies].sort((a, b) => a - b)
  return {
    count: sorted.length,
    p50: percentile(sorted, 0.5),
    p90: percentile(sorted, 0.9),
    p99: percentile(sorted, 0.99),
    max: sorted.at(-1) ?? Number.NaN,
  }
}
const digestOf = (index: number) => index.toString(16).padStart(64, '0')

const folder = await mkdtemp(join(tmpdir(), 'llmesh-bench-registry-'))
const child =
  values.url === undefined
    ? spawn(
        process.execPath,
        [
          new URL('./registry-server-child.ts', import.meta.url).pathname,
          join(folder, 'registry.db'),
        ],
        { stdio: ['ignore', 'pipe', 'inherit'] },
      )
    : undefined
const url =
  values.url ??
  (await new Promise<string>((resolve, reject) => {
    child!.stdout!.once('data', (chunk: Buffer) =>
      resolve((JSON.parse(chunk.toString()) as { url: string }).url),
    )
    child!.once('exit', (code) => reject(new Error(`registry exited ${code}`)))
  }))

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

  const heartbeatLatencies: number[] = []
  const lookupLatencies: number[] = []
  let heartbeatErrors = 0
  let lookupErrors = 0
  let hostsReturned = 0
  const body = JSON.stringify({
    inFlight: 1,
    queueDepth: 0,
    tokensPerSecond: 25.5,
    loadedModels: [digestOf(1)],
  })
  const timed = async (
    path: string,
    init: { method: 'GET' | 'POST'; headers?: Record<string, string>; body?: string },
    into: number[],
  ): Promise<Buffer[] | undefined> => {
    const started = performance.now()
    try {
      const response = await pool.request({
        path,
        method: init.method,
        headers: init.headers,
        body: init.body,
      })
      // Bytes are kept as chunks, not decoded: the load generator must not stall the figures.
      const chunks: Buffer[] = []
      for await (const chunk of response.body) chunks.push(chunk as Buffer)
      into.push(performance.now() - started)
      return response.statusCode === 200 ? chunks : undefined
    } catch {
      return undefined
    }
  }

  // Heartbeats spread evenly over each 10 s interval; lookups at a steady rate.
  const heartbeatsPerTick = (nodeCount / heartbeatIntervalMs) * 10
  let nextNode = 0
  let carry = 0
  const pending = new Set<Promise<unknown>>()
  const track = (promise: Promise<unknown>) => {
    pending.add(promise)
    void promise.finally(() => pending.delete(promise))
  }
  const started = performance.now()
  await new Promise<void>((resolve) => {
    const ticker = setInterval(() => {
      if (performance.now() - started >= seconds * 1000) {
        clearInterval(ticker)
        resolve()
        return
      }
      carry += heartbeatsPerTick
      for (; carry >= 1; carry--) {
        const index = nextNode++ % nodeCount
        track(
          timed(
            `/v1/nodes/node-${index}/heartbeat`,
            {
              method: 'POST',
              headers: {
                authorization: `Bearer ${tokens[index]}`,
                'content-type': 'application/json',
              },
              body,
            },
            heartbeatLatencies,
          ).then((text) => {
            if (text === undefined) heartbeatErrors++
          }),
        )
      }
      for (let lookup = 0; lookup < lookupsPerSecond / 100; lookup++) {
        const model = Math.floor(Math.random() * modelCount)
        track(
          timed(
            `/v1/hosts?model=acme/model-${model}`,
            { method: 'GET', headers: { authorization: `Bearer ${tokens[0]}` } },
            lookupLatencies,
          ).then((text) => {
            if (text === undefined) lookupErrors++
            // One lookup in twenty is decoded to count its hosts, so the generator stays light.
            else if (lookupLatencies.length % 20 === 0) {
              hostsReturned += (Buffer.concat(text).toString().split('"nodeId"').length - 1) * 20
            }
          }),
        )
      }
    }, 10)
  })
  await Promise.all(pending)

  // Anchor: a bare node:http server answering a fixed body, same client, same connection count.
  const fixed = JSON.stringify({ state: 'ready' })
  const bare = createServer((request, response) => {
    request.resume()
    request.on('end', () =>
      response.writeHead(200, { 'content-type': 'application/json' }).end(fixed),
    )
  })
  await new Promise<void>((resolve) => bare.listen(0, '127.0.0.1', resolve))
  const barePool = new Pool(`http://127.0.0.1:${(bare.address() as AddressInfo).port}`, {
    connections: 64,
  })
  const anchorLatencies: number[] = []
  for (let round = 0; round < Math.min(seconds, 10) * 100; round++) {
    await Promise.all(
      Array.from({ length: Math.ceil(heartbeatsPerTick) }, async () => {
        const at = performance.now()
        const response = await barePool.request({ path: '/', method: 'POST', body })
        await response.body.text()
        anchorLatencies.push(performance.now() - at)
      }),
    )
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
  await barePool.close()
  bare.close()

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
  const heartbeat = summary(heartbeatLatencies)
  const lookup = summary(lookupLatencies)
  const anchor = summary(anchorLatencies)
  const results = {
    date: new Date().toISOString(),
    node: process.version,
    cpu: cpus()[0]?.model.trim(),
    cores: cpus().length,
    nodes: nodeCount,
    seconds,
    heartbeatsPerSecond: nodeCount / (heartbeatIntervalMs / 1000),
    lookupsPerSecond,
    averageHostsPerLookup: lookup.count === 0 ? 0 : hostsReturned / lookup.count,
    heartbeat: {
      ...heartbeat,
      errors: heartbeatErrors,
      serverP99AtMostMs: serverP99('/v1/nodes/:nodeId/heartbeat'),
    },
    lookup: { ...lookup, errors: lookupErrors, serverP99AtMostMs: serverP99('/v1/hosts') },
    bareHttpAnchor: anchor,
    targets: { errors: 0, heartbeatP99Ms: 20, lookupP99Ms: 5 },
  }
  const ms = (value: number) => `${value.toFixed(2)} ms`
  const table = [
    '| figure | p50 | p90 | p99 | max | count | errors | target |',
    '| --- | --- | --- | --- | --- | --- | --- | --- |',
    `| heartbeat (${results.heartbeatsPerSecond}/s from ${nodeCount} nodes) | ${ms(heartbeat.p50)} | ${ms(heartbeat.p90)} | ${ms(heartbeat.p99)} | ${ms(heartbeat.max)} | ${heartbeat.count} | ${heartbeatErrors} | p99 ≤ 20 ms, no errors |`,
    `| host lookup (${lookupsPerSecond}/s, ${results.averageHostsPerLookup.toFixed(0)} hosts each) | ${ms(lookup.p50)} | ${ms(lookup.p90)} | ${ms(lookup.p99)} | ${ms(lookup.max)} | ${lookup.count} | ${lookupErrors} | p99 ≤ 5 ms, no errors |`,
    `| same, inside the registry (its histogram: p99 at most) | | | heartbeat ≤ ${results.heartbeat.serverP99AtMostMs} ms, lookup ≤ ${results.lookup.serverP99AtMostMs} ms | | | | |`,
    `| anchor: bare node:http, fixed body | ${ms(anchor.p50)} | ${ms(anchor.p90)} | ${ms(anchor.p99)} | ${ms(anchor.max)} | ${anchor.count} | 0 | |`,
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
        `${text.slice(0, text.indexOf(start) + start.length)}\n${table}\n\nMeasured ${results.date} on ${results.cores} cores (${results.cpu}), Node ${process.version}, ${seconds} s, registry on SQLite in its own process. Reproduce: \`pnpm --filter @llmesh/registry-server bench\`.\n${text.slice(text.indexOf(end))}`,
      )
  }
  if (heartbeatErrors + lookupErrors > 0 && smoke) process.exitCode = 1
} finally {
  await pool.close()
  child?.kill('SIGTERM')
  await rm(folder, { recursive: true, force: true })
}
