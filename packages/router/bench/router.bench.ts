/**
 * Router figures, each against its anchor in the same run:
 *   1. added latency: the gateway against calling a mock node directly, interleaved, at a
 *      steady 200 requests per second;
 *   2. chaos: 4 mock nodes, one killed and restarted every 10 s for 2 minutes under load,
 *      30 % of requests streaming;
 *   3. one of 4 nodes turns 10 times slower: fleet p99 time to first token, the gateway and
 *      haproxy (leastconn, health checks) in front of the same fleet;
 *   4. routing decisions per second with 1,000 candidate nodes, against a bare random pick.
 *
 *   node bench/router.bench.ts [--only latency,chaos,slow-node,decisions] [--smoke]
 *
 * Mock nodes and the gateway run in processes of their own. Writes bench/results/router.json and
 * the table in README.md after a complete run (not in --smoke mode).
 */
import { type ChildProcess, execFileSync, fork, spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises'
import { cpus, tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { Balancer, type RouterNode } from '@llmesh/router'
import { Agent, request } from 'undici'

const { values } = parseArgs({
  options: {
    smoke: { type: 'boolean', default: false },
    only: { type: 'string' },
  },
})
const smoke = values.smoke
const sections = new Set(values.only?.split(',') ?? ['latency', 'chaos', 'slow-node', 'decisions'])
const complete = values.only === undefined
const here = (name: string) => new URL(name, import.meta.url).pathname
const children: ChildProcess[] = []
const agent = new Agent({ connections: 512, keepAliveTimeout: 30_000 })

/** Debian installs haproxy in /usr/sbin, which a plain user's PATH may leave out. */
function haproxyBinary(): string {
  const folders = [...(process.env.PATH ?? '').split(':'), '/usr/sbin', '/usr/local/sbin']
  for (const folder of folders)
    if (folder !== '' && existsSync(join(folder, 'haproxy'))) return join(folder, 'haproxy')
  throw new Error(
    'haproxy is not installed (Debian: apt-get install haproxy); it is the slow-node anchor',
  )
}

function percentile(numbers: number[], share: number): number {
  if (numbers.length === 0) return Number.NaN
  const sorted = [...numbers].sort((first, second) => first - second)
  return sorted[Math.min(sorted.length - 1, Math.floor(share * sorted.length))]!
}

async function startFleet(count: number, options: Record<string, unknown>) {
  const child = fork(here('./fleet-child.ts'), [JSON.stringify({ count, options })], {
    stdio: 'inherit',
  })
  children.push(child)
  const { urls } = await new Promise<{ urls: string[] }>((resolve) =>
    child.once('message', resolve as never),
  )
  let next = 0
  const command = (message: Record<string, unknown>) =>
    new Promise<void>((resolve) => {
      const id = ++next
      const onMessage = (answer: { id?: number }) => {
        if (answer.id !== id) return
        child.off('message', onMessage)
        resolve()
      }
      child.on('message', onMessage)
      child.send({ ...message, id })
    })
  return { urls, command, child }
}

async function startGateway(urls: string[]): Promise<string> {
  const nodes = urls.map((url, index) => ({
    id: `node-${index}`,
    url,
    models: [{ id: 'mock-model' }],
  }))
  const child = fork(here('./gateway-child.ts'), [JSON.stringify(nodes)], { stdio: 'inherit' })
  children.push(child)
  const { url } = await new Promise<{ url: string }>((resolve) =>
    child.once('message', resolve as never),
  )
  return url
}

interface Outcome {
  status: number
  /** Milliseconds to the response's first body byte. */
  firstByteMs: number
  totalMs: number
  /** For streams: ended with [DONE]; false when it ended with an error event (or not at all). */
  completed: boolean
  errorEvent: boolean
}

async function send(url: string, { stream = false, maxTokens = 1 } = {}): Promise<Outcome> {
  const started = performance.now()
  try {
    const response = await request(`${url}/v1/chat/completions`, {
      method: 'POST',
      dispatcher: agent,
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        model: 'mock-model',
        messages: [{ role: 'user', content: 'hello bench' }],
        max_tokens: maxTokens,
        stream,
      }),
      headersTimeout: 30_000,
      bodyTimeout: 30_000,
    })
    let firstByteMs = 0
    let text = ''
    for await (const chunk of response.body) {
      if (firstByteMs === 0) firstByteMs = performance.now() - started
      text += String(chunk)
    }
    return {
      status: response.statusCode,
      firstByteMs,
      totalMs: performance.now() - started,
      completed: !stream || text.includes('data: [DONE]'),
      errorEvent: stream && text.includes('"error"'),
    }
  } catch {
    return {
      status: 0,
      firstByteMs: 0,
      totalMs: performance.now() - started,
      completed: false,
      errorEvent: false,
    }
  }
}

/** Sends `perSecond` requests a second for `seconds`, spread evenly, each made by `make(index)`. */
async function steadyLoad<T>(
  perSecond: number,
  seconds: number,
  make: (index: number) => Promise<T>,
): Promise<T[]> {
  const total = Math.round(perSecond * seconds)
  const started = performance.now()
  const pending: Promise<T>[] = []
  for (let index = 0; index < total; index++) {
    const due = started + (index * 1000) / perSecond
    const wait = due - performance.now()
    if (wait > 1) await new Promise((resolve) => setTimeout(resolve, wait))
    pending.push(make(index))
  }
  return Promise.all(pending)
}

const results: Record<string, unknown> = {
  date: new Date().toISOString().slice(0, 10),
  cpu: cpus()[0]?.model.trim(),
  cores: cpus().length,
  node: process.version,
}
const rows: string[] = []
const ms = (value: number) => `${value.toFixed(2)} ms`

try {
  if (sections.has('latency')) {
    const fleet = await startFleet(1, { firstTokenMs: 1, tokenIntervalMs: 0 })
    const gateway = await startGateway(fleet.urls)
    const seconds = smoke ? 2 : 30
    await steadyLoad(200, smoke ? 0.5 : 3, (index) =>
      send(index % 2 === 0 ? fleet.urls[0]! : gateway),
    )
    const outcomes = await steadyLoad(200, seconds, async (index) => ({
      via: index % 2 === 0 ? 'direct' : 'gateway',
      outcome: await send(index % 2 === 0 ? fleet.urls[0]! : gateway),
    }))
    const direct = outcomes
      .filter((entry) => entry.via === 'direct')
      .map((entry) => entry.outcome.totalMs)
    const routed = outcomes
      .filter((entry) => entry.via === 'gateway')
      .map((entry) => entry.outcome.totalMs)
    const failures = outcomes.filter((entry) => entry.outcome.status !== 200).length
    const latency = {
      requestsPerSecond: 200,
      seconds,
      direct: { p50: percentile(direct, 0.5), p99: percentile(direct, 0.99) },
      gateway: { p50: percentile(routed, 0.5), p99: percentile(routed, 0.99) },
      addedP50: percentile(routed, 0.5) - percentile(direct, 0.5),
      addedP99: percentile(routed, 0.99) - percentile(direct, 0.99),
      failures,
    }
    results.latency = latency
    console.log('1. added latency', latency)
    rows.push(
      `| added latency at 200 req/s (interleaved, ${seconds} s) | p50 ${ms(latency.gateway.p50)}, p99 ${ms(latency.gateway.p99)} | direct to the node: p50 ${ms(latency.direct.p50)}, p99 ${ms(latency.direct.p99)} | +${ms(latency.addedP50)} p50, +${ms(latency.addedP99)} p99 | ≤ +1 ms p50, ≤ +3 ms p99 |`,
    )
    fleet.child.kill()
  }

  if (sections.has('chaos')) {
    const fleet = await startFleet(4, { firstTokenMs: 5, tokenIntervalMs: 2 })
    const gateway = await startGateway(fleet.urls)
    const seconds = smoke ? 6 : 120
    const period = smoke ? 3 : 10
    let kills = 0
    const chaos = (async () => {
      for (let at = period; at < seconds; at += period) {
        await new Promise((resolve) => setTimeout(resolve, period * 1000))
        const index = kills++ % 4
        await fleet.command({ command: 'stop', index })
        setTimeout(() => void fleet.command({ command: 'start', index }), (period * 1000) / 2)
      }
    })()
    const outcomes = await steadyLoad(smoke ? 50 : 100, seconds, async (index) => {
      const stream = index % 10 < 3
      return { stream, outcome: await send(gateway, { stream, maxTokens: 10 }) }
    })
    await chaos
    const plain = outcomes.filter((entry) => !entry.stream)
    const streams = outcomes.filter((entry) => entry.stream)
    const chaosResult = {
      seconds,
      kills,
      requests: outcomes.length,
      failedNonStreaming: plain.filter((entry) => entry.outcome.status !== 200).length,
      streamsFailedBeforeFirstToken: streams.filter((entry) => entry.outcome.status !== 200).length,
      streamsBroken: streams.filter(
        (entry) => entry.outcome.status === 200 && !entry.outcome.completed,
      ).length,
      streamsBrokenWithErrorEvent: streams.filter(
        (entry) =>
          entry.outcome.status === 200 && !entry.outcome.completed && entry.outcome.errorEvent,
      ).length,
    }
    results.chaos = chaosResult
    console.log('2. chaos', chaosResult)
    rows.push(
      `| chaos: 4 nodes, one killed and restarted every ${period} s for ${seconds} s, ${outcomes.length} requests (30 % streaming) | ${chaosResult.failedNonStreaming} failed non-streaming; ${chaosResult.streamsFailedBeforeFirstToken} streams failed before their first token; ${chaosResult.streamsBroken} broken mid-way, ${chaosResult.streamsBrokenWithErrorEvent} of them with an error event | | | 0; 0; all broken streams end with an error event |`,
    )
    fleet.child.kill()
  }

  if (sections.has('slow-node')) {
    const fleet = await startFleet(4, { firstTokenMs: 5, tokenIntervalMs: 1 })
    const gateway = await startGateway(fleet.urls)
    const folder = join(tmpdir(), `llmesh-haproxy-${process.pid}`)
    await mkdir(folder, { recursive: true })
    const configuration = join(folder, 'haproxy.cfg')
    // haproxy cannot report the port of a port-0 bind: one is picked from the process id.
    const haproxyPort = 20_000 + (process.pid % 20_000)
    await writeFile(
      configuration,
      [
        'global',
        '  maxconn 4096',
        'defaults',
        '  mode http',
        '  timeout connect 2s',
        '  timeout client 30s',
        '  timeout server 30s',
        'frontend bench',
        `  bind 127.0.0.1:${haproxyPort}`,
        '  default_backend fleet',
        'backend fleet',
        '  balance leastconn',
        '  option httpchk GET /health',
        ...fleet.urls.map(
          (url, index) => `  server node${index} ${new URL(url).host} check inter 1s`,
        ),
        '',
      ].join('\n'),
    )
    execFileSync(haproxyBinary(), ['-c', '-q', '-f', configuration])
    const haproxy = spawn(haproxyBinary(), ['-f', configuration, '-db'], { stdio: 'ignore' })
    children.push(haproxy)
    const haproxyUrl = `http://127.0.0.1:${haproxyPort}`
    for (let attempt = 0; attempt < 50 && (await send(haproxyUrl)).status !== 200; attempt++)
      await new Promise((resolve) => setTimeout(resolve, 100))
    const perSecond = 100
    const phase = smoke ? 2 : 20
    const measure = (seconds: number) =>
      steadyLoad(perSecond, seconds, async (index) => ({
        via: index % 2 === 0 ? 'gateway' : 'haproxy',
        outcome: await send(index % 2 === 0 ? gateway : haproxyUrl, { stream: true, maxTokens: 4 }),
      }))
    const p99 = (entries: Awaited<ReturnType<typeof measure>>, via: string) =>
      percentile(
        entries
          .filter((entry) => entry.via === via && entry.outcome.status === 200)
          .map((entry) => entry.outcome.firstByteMs),
        0.99,
      )
    await measure(smoke ? 1 : 5)
    const healthy = await measure(phase)
    await fleet.command({ command: 'faults', index: 0, faults: { slowdown: 10 } })
    await measure(smoke ? 1 : 10)
    const degraded = await measure(phase)
    const slow = {
      healthy: { gateway: p99(healthy, 'gateway'), haproxy: p99(healthy, 'haproxy') },
      degraded: { gateway: p99(degraded, 'gateway'), haproxy: p99(degraded, 'haproxy') },
      gatewayRatio: p99(degraded, 'gateway') / p99(healthy, 'gateway'),
      haproxyRatio: p99(degraded, 'haproxy') / p99(healthy, 'haproxy'),
    }
    results.slowNode = slow
    console.log('3. slow node', slow)
    rows.push(
      `| one of 4 nodes 10× slower: fleet p99 time to first token, 10 s after | gateway ${ms(slow.degraded.gateway)} (all healthy ${ms(slow.healthy.gateway)}), ratio ${slow.gatewayRatio.toFixed(2)} | haproxy leastconn + health checks: ${ms(slow.degraded.haproxy)} (all healthy ${ms(slow.healthy.haproxy)}), ratio ${slow.haproxyRatio.toFixed(2)} | | gateway ratio ≤ 1.5 |`,
    )
    haproxy.kill()
    fleet.child.kill()
    await rm(folder, { recursive: true, force: true })
  }

  if (sections.has('decisions')) {
    const nodes: RouterNode[] = Array.from({ length: 1000 }, (_, index) => ({
      id: `node-${index}`,
      url: `http://10.0.${index >> 8}.${index & 255}:8080`,
      models: [{ id: 'mock-model' }],
    }))
    const balancer = new Balancer()
    for (const [index, node] of nodes.entries())
      balancer.health(node.id).answered(5 + (index % 17), Date.now())
    const count = smoke ? 100_000 : 2_000_000
    const rates: number[] = []
    const anchorRates: number[] = []
    let sink = 0
    for (let run = 0; run < (smoke ? 1 : 5); run++) {
      let started = performance.now()
      for (let index = 0; index < count; index++) {
        const choice = balancer.choose(nodes)!
        choice.health.started()
        choice.health.finished()
      }
      rates.push(count / ((performance.now() - started) / 1000))
      started = performance.now()
      for (let index = 0; index < count; index++)
        sink += nodes[Math.floor(Math.random() * nodes.length)]!.id.length
      anchorRates.push(count / ((performance.now() - started) / 1000))
    }
    const decisions = {
      perSecond: percentile(rates, 0.5),
      randomPickPerSecond: percentile(anchorRates, 0.5),
      sink,
    }
    results.decisions = decisions
    console.log('4. decisions', decisions)
    rows.push(
      `| routing decisions per second, 1,000 candidates | ${Math.round(decisions.perSecond).toLocaleString('en')} | a bare random pick: ${Math.round(decisions.randomPickPerSecond).toLocaleString('en')} | ${(decisions.perSecond / decisions.randomPickPerSecond).toFixed(2)} | ≥ 100,000 |`,
    )
  }
} finally {
  for (const child of children) child.kill()
  await agent.close()
}

const table = [
  '| figure | llmesh | anchor (same run) | ratio | target |',
  '| --- | --- | --- | --- | --- |',
  ...rows,
].join('\n')
console.log(table)
if (!smoke && complete) {
  const resultsFolder = here('./results/')
  await mkdir(resultsFolder, { recursive: true })
  await writeFile(join(resultsFolder, 'router.json'), `${JSON.stringify(results, null, 2)}\n`)
  const readme = here('../README.md')
  const text = await readFile(readme, 'utf8').catch(() => '')
  const start = '<!-- bench:router:start -->'
  const end = '<!-- bench:router:end -->'
  if (text.includes(start))
    await writeFile(
      readme,
      `${text.slice(0, text.indexOf(start) + start.length)}\n${table}\n\nMeasured ${results.date} on ${results.cores} cores (${results.cpu}), Node ${process.version}; mock nodes, the gateway and haproxy in processes of their own, the load generator in the benchmark's. Reproduce: \`pnpm --filter @llmesh/router bench\`.\n${text.slice(text.indexOf(end))}`,
    )
}
process.exit(0)
