/**
 * Benchmarks of `pull` against the tools people use today, measured in the same run:
 *
 *   1. one unthrottled local mirror: ours against `curl -o f && sha256sum f` and curl alone;
 *   2. four local mirrors capped per connection: ours against aria2c (same URIs, same connection
 *      count, checking the same sha256) and ipull (one URL: it has no mirror support);
 *   3. peak RSS while pulling a large file with 16 connections, ours against aria2c's.
 *
 *   node bench/pull.bench.ts [--runs 3] [--smoke]
 *
 * Mirrors are nginx when it is installed (limit_rate for the caps), else the testkit mirror.
 * Writes bench/results/pull.json and the table in README.md (not in --smoke mode, which uses
 * small files, one run, and skips missing tools, to keep the benchmark working in CI).
 */
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises'
import { cpus, tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { createManifest } from '@llmesh/manifest'
import { downloadFile } from 'ipull'
import {
  execute,
  has,
  MiB,
  measure,
  median,
  startMirrors,
  writeRandomFile,
} from './bench-support.ts'

const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '3' },
    smoke: { type: 'boolean', default: false },
    /** Run one case only (single, multi or memory), without writing results. */
    case: { type: 'string' },
  },
})
const smoke = values.smoke === true
const runs = smoke ? 1 : Number(values.runs)
const only = values.case
const sizes = smoke
  ? { single: 32 * MiB, multi: 16 * MiB, memory: 64 * MiB }
  : { single: 2048 * MiB, multi: 1024 * MiB, memory: 4096 * MiB }
/** Per-connection cap of the throttled mirrors, bytes per second. */
const capPerConnection = smoke ? 4 * MiB : 8 * MiB
const connectionsPerMirror = 4
const mirrorCount = 4
const childScript = new URL('./pull-child.ts', import.meta.url).pathname
const folder = join(tmpdir(), smoke ? 'llmesh-bench-pull-smoke' : 'llmesh-bench-pull')

async function manifestFor(
  file: string,
  mirrors: string[],
  id: string,
): Promise<{ path: string; sha256: string }> {
  const { manifest, pieceIndexes } = await createManifest({
    files: [{ file, path: 'model.bin', mirrors }],
    manifest: { id, version: '1.0.0', license: { id: 'mit' } },
    allowInsecureMirrors: true,
  })
  const directory = join(folder, 'manifests', id)
  await mkdir(join(directory, 'pieces'), { recursive: true })
  await writeFile(join(directory, 'manifest.json'), JSON.stringify(manifest))
  await writeFile(
    join(directory, 'pieces', `${manifest.artifacts[0]!.sha256}.json`),
    JSON.stringify(pieceIndexes[0]!.toJSON()),
  )
  return { path: join(directory, 'manifest.json'), sha256: manifest.artifacts[0]!.sha256 }
}

async function ours(manifest: string, options: object) {
  const store = join(folder, 'store')
  await rm(store, { recursive: true, force: true })
  await settleDisk()
  const result = await measure(process.execPath, [
    childScript,
    store,
    manifest,
    JSON.stringify(options),
  ])
  await rm(store, { recursive: true, force: true })
  return result
}

/** Flushes what earlier runs wrote, so that each run starts with no writeback to pay for. */
async function settleDisk(): Promise<void> {
  await execute('sync').catch(() => undefined)
}

const output = join(folder, 'out')
const table: string[][] = []
const results: Record<string, unknown> = {
  date: new Date().toISOString(),
  node: process.version,
  cpu: cpus()[0]?.model.trim(),
  cores: cpus().length,
  runs,
  smoke,
}

await mkdir(join(folder, 'data'), { recursive: true })
await mkdir(output, { recursive: true })
const dataFolder = join(folder, 'data')
await writeRandomFile(join(dataFolder, 'single.bin'), sizes.single)
await writeRandomFile(join(dataFolder, 'multi.bin'), sizes.multi)
await writeRandomFile(join(dataFolder, 'memory.bin'), sizes.memory)
const mirrors = await startMirrors({
  folder,
  dataFolder,
  files: ['single.bin', 'multi.bin', 'memory.bin'],
  count: mirrorCount,
  capPerConnection,
  preferNginx: !smoke,
})
results.mirrors = mirrors.kind
const tools = {
  curl: await has('curl'),
  sha256sum: await has('sha256sum'),
  aria2c: await has('aria2c'),
}
try {
  // 1. One unthrottled mirror.
  if (only === undefined || only === 'single') {
    const single = await manifestFor(
      join(dataFolder, 'single.bin'),
      mirrors.urls('single.bin', false).slice(0, 1),
      'bench/single',
    )
    const singleUrl = mirrors.urls('single.bin', false)[0]!
    await readFile(join(dataFolder, 'single.bin')).catch(() => undefined)
    const one = { ours: [] as number[], curlSha256sum: [] as number[], curl: [] as number[] }
    for (let run = 0; run < runs; run++) {
      one.ours.push(
        (
          await ours(single.path, {
            connections: 4,
            initialConnectionsPerSource: 4,
            maxConnectionsPerSource: 4,
          })
        ).seconds,
      )
      if (tools.curl && tools.sha256sum) {
        const target = join(output, 'single.bin')
        await settleDisk()
        one.curlSha256sum.push(
          (await measure('sh', ['-c', `curl -s -o ${target} ${singleUrl} && sha256sum ${target}`]))
            .seconds,
        )
        await rm(target, { force: true })
        await settleDisk()
        one.curl.push((await measure('curl', ['-s', '-o', target, singleUrl])).seconds)
        await rm(target, { force: true })
      }
    }
    const oneRatio =
      one.curlSha256sum.length > 0 ? median(one.ours) / median(one.curlSha256sum) : undefined
    results.singleMirror = {
      sizeMiB: sizes.single / MiB,
      ...one,
      ratioToCurlSha256sum: oneRatio,
      ratioToCurl: one.curl.length > 0 ? median(one.ours) / median(one.curl) : undefined,
      target: 1.0,
    }
    table.push([
      `${sizes.single / MiB} MiB, 1 local mirror`,
      `${median(one.ours).toFixed(2)} s`,
      'curl + sha256sum',
      one.curlSha256sum.length > 0 ? `${median(one.curlSha256sum).toFixed(2)} s` : 'n/a',
      oneRatio?.toFixed(2) ?? 'n/a',
      '≤ 1.0',
    ])
    if (one.curl.length > 0)
      table.push([
        '',
        '',
        'curl alone',
        `${median(one.curl).toFixed(2)} s`,
        (median(one.ours) / median(one.curl)).toFixed(2),
        '',
      ])
  }
  // 2. Four mirrors, each connection capped.
  if (only === undefined || only === 'multi') {
    const multiUrls = mirrors.urls('multi.bin', true)
    const multi = await manifestFor(join(dataFolder, 'multi.bin'), multiUrls, 'bench/multi')
    const connections = mirrorCount * connectionsPerMirror
    const capsSum = connections * capPerConnection
    const four = { ours: [] as number[], aria2c: [] as number[], ipull: [] as number[] }
    for (let run = 0; run < runs; run++) {
      four.ours.push(
        (
          await ours(multi.path, {
            connections,
            initialConnectionsPerSource: connectionsPerMirror,
            maxConnectionsPerSource: connectionsPerMirror,
          })
        ).seconds,
      )
      if (tools.aria2c) {
        await rm(join(output, 'multi.bin'), { force: true })
        await settleDisk()
        four.aria2c.push(
          (
            await measure('aria2c', [
              '-q',
              '-d',
              output,
              '-o',
              'multi.bin',
              '--allow-overwrite=true',
              '--file-allocation=none',
              `-x${connectionsPerMirror}`,
              `-s${connections}`,
              '-k1M',
              `--checksum=sha-256=${multi.sha256}`,
              ...multiUrls,
            ])
          ).seconds,
        )
        await rm(join(output, 'multi.bin'), { force: true })
      }
      await settleDisk()
      const started = process.hrtime.bigint()
      const ipull = await downloadFile({
        url: multiUrls[0]!,
        directory: output,
        fileName: 'ipull.bin',
        parallelStreams: connections,
        cliProgress: false,
      })
      await ipull.download()
      four.ipull.push(Number(process.hrtime.bigint() - started) / 1e9)
      await rm(join(output, 'ipull.bin'), { force: true })
    }
    const oursThroughput = sizes.multi / median(four.ours)
    results.fourMirrors = {
      sizeMiB: sizes.multi / MiB,
      connections,
      capPerConnectionMiBps: capPerConnection / MiB,
      capsSumMiBps: capsSum / MiB,
      ...four,
      ratioToAria2c: four.aria2c.length > 0 ? median(four.ours) / median(four.aria2c) : undefined,
      ratioToIpull: median(four.ours) / median(four.ipull),
      fractionOfCaps: oursThroughput / capsSum,
      targets: { ratioToAria2c: 1.0, fractionOfCaps: 0.9 },
    }
    table.push([
      `${sizes.multi / MiB} MiB, 4 mirrors × ${connectionsPerMirror} connections capped at ${capPerConnection / MiB} MiB/s`,
      `${median(four.ours).toFixed(2)} s`,
      'aria2c (same URIs, connections, sha-256 check)',
      four.aria2c.length > 0 ? `${median(four.aria2c).toFixed(2)} s` : 'n/a',
      four.aria2c.length > 0 ? (median(four.ours) / median(four.aria2c)).toFixed(2) : 'n/a',
      '≤ 1.0',
    ])
    table.push([
      '',
      '',
      'ipull (one URL, same connection count)',
      `${median(four.ipull).toFixed(2)} s`,
      (median(four.ours) / median(four.ipull)).toFixed(2),
      '',
    ])
    table.push([
      '',
      `${(oursThroughput / MiB).toFixed(0)} MiB/s`,
      `sum of the caps in use`,
      `${(capsSum / MiB).toFixed(0)} MiB/s`,
      (oursThroughput / capsSum).toFixed(2),
      '≥ 0.9',
    ])
  }
  // 3. Peak memory, 16 connections.
  if (only === undefined || only === 'memory') {
    const memory = await manifestFor(
      join(dataFolder, 'memory.bin'),
      mirrors.urls('memory.bin', false),
      'bench/memory',
    )
    const rss = { ours: [] as number[], aria2c: [] as number[] }
    for (let run = 0; run < Math.min(runs, 2); run++) {
      rss.ours.push(
        (
          await ours(memory.path, {
            connections: 16,
            initialConnectionsPerSource: 4,
            maxConnectionsPerSource: 4,
          })
        ).peakRssBytes,
      )
      if (tools.aria2c) {
        await settleDisk()
        rss.aria2c.push(
          (
            await measure('aria2c', [
              '-q',
              '-d',
              output,
              '-o',
              'memory.bin',
              '--allow-overwrite=true',
              '--file-allocation=none',
              '-x4',
              '-s16',
              '-k1M',
              ...mirrors.urls('memory.bin', false),
            ])
          ).peakRssBytes,
        )
        await rm(join(output, 'memory.bin'), { force: true })
      }
    }
    results.peakMemory = {
      sizeMiB: sizes.memory / MiB,
      connections: 16,
      oursMiB: rss.ours.map((bytes) => bytes / MiB),
      aria2cMiB: rss.aria2c.map((bytes) => bytes / MiB),
      targetMiB: 200,
    }
    table.push([
      `peak RSS, ${sizes.memory / MiB} MiB with 16 connections`,
      `${(median(rss.ours) / MiB).toFixed(0)} MiB`,
      'aria2c',
      rss.aria2c.length > 0 ? `${(median(rss.aria2c) / MiB).toFixed(0)} MiB` : 'n/a',
      rss.aria2c.length > 0 ? (median(rss.ours) / median(rss.aria2c)).toFixed(2) : 'n/a',
      '≤ 200 MiB',
    ])
  }
} finally {
  await mirrors.close()
}

const header = ['case', 'ours (median)', 'anchor', 'anchor (median)', 'ratio', 'target']
const markdown = [
  `| ${header.join(' | ')} |`,
  `| ${header.map(() => '---').join(' | ')} |`,
  ...table.map((row) => `| ${row.join(' | ')} |`),
].join('\n')
console.log(markdown)
if (!smoke && only === undefined) {
  const resultsFolder = new URL('./results/', import.meta.url).pathname
  await mkdir(resultsFolder, { recursive: true })
  await writeFile(join(resultsFolder, 'pull.json'), `${JSON.stringify(results, null, 2)}\n`)
  const readme = new URL('../README.md', import.meta.url).pathname
  const text = await readFile(readme, 'utf8').catch(() => '')
  const start = '<!-- bench:pull:start -->'
  const end = '<!-- bench:pull:end -->'
  if (text.includes(start)) {
    const note = `Measured ${results.date as string} on ${results.cores as number} cores (${results.cpu as string}), Node ${process.version}, mirrors: ${mirrors.kind}; medians of ${runs} runs. Reproduce: \`pnpm --filter @llmesh/downloader bench\`.`
    await writeFile(
      readme,
      `${text.slice(0, text.indexOf(start) + start.length)}\n${markdown}\n\n${note}\n${text.slice(text.indexOf(end))}`,
    )
  }
} else if (smoke) {
  await rm(folder, { recursive: true, force: true })
}
