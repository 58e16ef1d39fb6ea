/**
 * Why the HTTP source uses undici's `request` on a shared Agent rather than `fetch`: both fetch
 * the same file in 1 MiB ranges over 8 parallel connections from one local mirror, in the same
 * run, and the bytes are only counted (no hashing, no disk), so the figure is the client's cost.
 *
 *   node bench/http-client.bench.ts [--runs 5] [--smoke]
 */
import { mkdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { Agent, request } from 'undici'
import { MiB, median, startMirrors, writeRandomFile } from './bench-support.ts'

const { values } = parseArgs({
  options: { runs: { type: 'string', default: '5' }, smoke: { type: 'boolean', default: false } },
})
const smoke = values.smoke === true
const runs = smoke ? 1 : Number(values.runs)
const size = (smoke ? 16 : 1024) * MiB
const connections = 8
const folder = join(tmpdir(), smoke ? 'llmesh-bench-http-smoke' : 'llmesh-bench-http')
await mkdir(join(folder, 'data'), { recursive: true })
await writeRandomFile(join(folder, 'data', 'file.bin'), size)
const mirrors = await startMirrors({
  folder,
  dataFolder: join(folder, 'data'),
  files: ['file.bin'],
  count: 1,
  capPerConnection: MiB,
  preferNginx: !smoke,
})
const url = mirrors.urls('file.bin', false)[0]!

async function inRanges(
  fetchRange: (start: number, end: number) => Promise<number>,
): Promise<number> {
  const started = process.hrtime.bigint()
  let next = 0
  let total = 0
  await Promise.all(
    Array.from({ length: connections }, async () => {
      while (next < size) {
        const start = next
        next += MiB
        const received = await fetchRange(start, Math.min(size, start + MiB))
        total += received
      }
    }),
  )
  if (total !== size) throw new Error(`received ${total} of ${size} bytes`)
  return Number(process.hrtime.bigint() - started) / 1e9
}

const agent = new Agent({ connections })
const undiciSeconds: number[] = []
const fetchSeconds: number[] = []
try {
  for (let run = 0; run < runs; run++) {
    undiciSeconds.push(
      await inRanges(async (start, end) => {
        const response = await request(url, {
          dispatcher: agent,
          headers: { range: `bytes=${start}-${end - 1}` },
        })
        let bytes = 0
        for await (const chunk of response.body) bytes += (chunk as Buffer).byteLength
        return bytes
      }),
    )
    fetchSeconds.push(
      await inRanges(async (start, end) => {
        const response = await fetch(url, { headers: { range: `bytes=${start}-${end - 1}` } })
        let bytes = 0
        for await (const chunk of response.body!) bytes += chunk.byteLength
        return bytes
      }),
    )
  }
} finally {
  await agent.close()
  await mirrors.close()
  if (smoke) await rm(folder, { recursive: true, force: true })
}
const ours = median(undiciSeconds)
const anchor = median(fetchSeconds)
console.log(
  `| ${size / MiB} MiB in 1 MiB ranges, ${connections} connections, ${mirrors.kind} | undici request + Agent ${ours.toFixed(2)} s (${(size / MiB / ours).toFixed(0)} MiB/s) | fetch ${anchor.toFixed(2)} s (${(size / MiB / anchor).toFixed(0)} MiB/s) | ratio ${(ours / anchor).toFixed(2)} |`,
)
