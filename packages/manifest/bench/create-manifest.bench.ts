/**
 * Benchmark: `createManifest` (whole-file sha256 and piece hashes in one pass) against the anchor
 * `sha256sum` (whole-file hash only) on the same file, in the same run, with a warm page cache.
 *
 *   node bench/create-manifest.bench.ts [--size-mib 1024] [--runs 5] [--smoke]
 *
 * Prints a table and the median ratio, and writes bench/results/create-manifest.json
 * (not in --smoke mode). Target: ratio at most 1.15. `openssl dgst -sha256` is timed too when
 * present, as a second anchor: Debian's sha256sum does not use the CPU's SHA extensions, OpenSSL
 * (and so Node) does, so the OpenSSL ratio shows what the one-pass design costs on equal terms.
 */
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdir, mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises'
import { cpus, tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs, promisify } from 'node:util'
import { createManifest } from '@llmesh/manifest'

const execute = promisify(execFile)
const { values } = parseArgs({
  options: {
    'size-mib': { type: 'string', default: '1024' },
    runs: { type: 'string', default: '5' },
    smoke: { type: 'boolean', default: false },
  },
})
const smoke = values.smoke === true
const sizeBytes = (smoke ? 32 : Number(values['size-mib'])) * 1024 * 1024
const runs = smoke ? 1 : Number(values.runs)

const median = (numbers: number[]) => {
  const sorted = [...numbers].sort((left, right) => left - right)
  const middle = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2
}

async function time<Result>(
  work: () => Promise<Result>,
): Promise<{ seconds: number; result: Result }> {
  const start = process.hrtime.bigint()
  const result = await work()
  return { seconds: Number(process.hrtime.bigint() - start) / 1e9, result }
}

const folder = await mkdtemp(join(tmpdir(), 'llmesh-bench-manifest-'))
try {
  const file = join(folder, 'model.bin')
  const handle = await open(file, 'w')
  const block = randomBytes(16 * 1024 * 1024)
  for (let written = 0; written < sizeBytes; written += block.byteLength)
    await handle.write(block, 0, Math.min(block.byteLength, sizeBytes - written))
  await handle.close()
  await readFile(file).catch(() => undefined) // warm the page cache for both contenders

  const ours: number[] = []
  const anchor: number[] = []
  const openssl: number[] = []
  const hasOpenssl = await execute('openssl', ['version']).then(
    () => true,
    () => false,
  )
  for (let run = 0; run < runs; run++) {
    const sha256sum = await time(() => execute('sha256sum', [file]))
    anchor.push(sha256sum.seconds)
    const created = await time(() =>
      createManifest({
        files: [file],
        manifest: { id: 'bench/model', version: '1.0.0', license: { id: 'none' } },
      }),
    )
    ours.push(created.seconds)
    if (hasOpenssl)
      openssl.push((await time(() => execute('openssl', ['dgst', '-sha256', file]))).seconds)
    const expected = sha256sum.result.stdout.split(' ')[0]
    if (created.result.manifest.artifacts[0]!.sha256 !== expected)
      throw new Error('createManifest and sha256sum disagree on the digest')
  }

  const mib = sizeBytes / 1024 / 1024
  const result = {
    benchmark: 'createManifest vs sha256sum',
    date: new Date().toISOString(),
    node: process.version,
    cpu: cpus()[0]?.model ?? 'unknown',
    cores: cpus().length,
    sizeMiB: mib,
    runs,
    pieceSize: '1 MiB (default for this size)',
    oursSeconds: ours,
    anchorSeconds: anchor,
    oursMedianSeconds: median(ours),
    anchorMedianSeconds: median(anchor),
    ratio: median(ours) / median(anchor),
    target: 1.15,
    opensslSeconds: openssl,
    opensslMedianSeconds: hasOpenssl ? median(openssl) : null,
    ratioToOpenssl: hasOpenssl ? median(ours) / median(openssl) : null,
  }
  console.table([
    {
      contender: 'createManifest (sha256 + pieces)',
      'median s': result.oursMedianSeconds.toFixed(3),
      'MiB/s': (mib / result.oursMedianSeconds).toFixed(0),
    },
    {
      contender: 'sha256sum (anchor)',
      'median s': result.anchorMedianSeconds.toFixed(3),
      'MiB/s': (mib / result.anchorMedianSeconds).toFixed(0),
    },
    ...(hasOpenssl
      ? [
          {
            contender: 'openssl dgst -sha256',
            'median s': median(openssl).toFixed(3),
            'MiB/s': (mib / median(openssl)).toFixed(0),
          },
        ]
      : []),
  ])
  console.log(
    `ratio ours/sha256sum: ${result.ratio.toFixed(3)} (target at most ${result.target}), ${runs} runs on ${mib} MiB`,
  )
  if (result.ratioToOpenssl !== null)
    console.log(`ratio ours/openssl: ${result.ratioToOpenssl.toFixed(3)}`)
  if (!smoke) {
    const resultsFolder = new URL('./results/', import.meta.url)
    await mkdir(resultsFolder, { recursive: true })
    await writeFile(
      new URL('create-manifest.json', resultsFolder),
      `${JSON.stringify(result, null, 2)}\n`,
    )
  }
} finally {
  await rm(folder, { recursive: true, force: true })
}
