/**
 * Why a pull's peak memory is above 200 MiB, isolated from the downloader: the same work (4 GiB in
 * 4 MiB ranges over 16 keep-alive connections from local mirrors, each piece copied into its
 * connection's buffer, hashed, and written to a file) through undici's `request`, and through
 * `net.Socket` reads into one reused buffer per connection (`onread`). The second is a prototype
 * for this measurement only (plain HTTP/1.1, `Content-Length` bodies, no errors handled), not a
 * client. Each runs in its own process; peak RSS is the child's VmHWM.
 *
 *   node bench/read-path.bench.ts [--runs 3]
 */
import { createHash } from 'node:crypto'
import { mkdir, open, rm } from 'node:fs/promises'
import { connect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { Agent, request } from 'undici'
import { MiB, measure, median, startMirrors, writeRandomFile } from './bench-support.ts'

const SIZE = 4096 * MiB
const PIECE_SIZE = 4 * MiB
const CONNECTIONS = 16

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    runs: { type: 'string', default: '3' },
    /** Internal: run one read path in this process. */
    child: { type: 'string' },
    output: { type: 'string' },
  },
})

if (values.child !== undefined) await child(values.child, values.output!, positionals)
else await parent()

async function parent(): Promise<void> {
  const folder = join(tmpdir(), 'llmesh-bench-pull')
  const dataFolder = join(folder, 'data')
  await mkdir(dataFolder, { recursive: true })
  await mkdir(join(folder, 'out'), { recursive: true })
  await writeRandomFile(join(dataFolder, 'memory.bin'), SIZE)
  const mirrors = await startMirrors({
    folder,
    dataFolder,
    files: ['memory.bin'],
    count: 4,
    capPerConnection: 8 * MiB,
    preferNginx: true,
  })
  const output = join(folder, 'out', 'read-path.bin')
  const figures: Record<string, { seconds: number[]; peakMiB: number[] }> = {
    undici: { seconds: [], peakMiB: [] },
    reused: { seconds: [], peakMiB: [] },
  }
  try {
    for (let run = 0; run < Number(values.runs); run++)
      for (const path of ['undici', 'reused']) {
        const result = await measure(process.execPath, [
          fileURLToPath(import.meta.url),
          '--child',
          path,
          '--output',
          output,
          ...mirrors.urls('memory.bin', false),
        ])
        figures[path]!.seconds.push(result.seconds)
        figures[path]!.peakMiB.push(result.peakRssBytes / MiB)
        await rm(output, { force: true })
      }
  } finally {
    await mirrors.close()
  }
  console.log(`mirrors: ${mirrors.kind}; medians of ${values.runs} runs`)
  console.log('| read path | time | peak RSS |')
  console.log('| --- | --- | --- |')
  for (const [path, figure] of Object.entries(figures))
    console.log(
      `| ${path === 'undici' ? 'undici `request`' : '`net.Socket` `onread`, one buffer per connection'} | ${median(figure.seconds).toFixed(2)} s | ${median(figure.peakMiB).toFixed(0)} MiB (${figure.peakMiB.map((value) => value.toFixed(0)).join(', ')}) |`,
    )
}

async function child(path: string, output: string, urls: string[]): Promise<void> {
  const file = await open(output, 'w')
  const agent = new Agent({ connections: CONNECTIONS / urls.length })
  let next = 0
  const take = () => (next < SIZE / PIECE_SIZE ? next++ : undefined)

  async function viaUndici(url: string, slot: Buffer): Promise<void> {
    for (let index = take(); index !== undefined; index = take()) {
      const start = index * PIECE_SIZE
      const response = await request(url, {
        dispatcher: agent,
        headers: { range: `bytes=${start}-${start + PIECE_SIZE - 1}` },
      })
      const hash = createHash('sha256')
      let received = 0
      for await (const chunk of response.body as AsyncIterable<Buffer>) {
        slot.set(chunk, received)
        hash.update(chunk)
        received += chunk.byteLength
      }
      hash.digest()
      await file.write(slot, 0, received, start)
    }
  }

  async function viaReusedBuffer(url: string, slot: Buffer): Promise<void> {
    const { hostname, port, pathname } = new URL(url)
    let onBytes: (bytes: Buffer) => void = () => {}
    const socket = connect({
      host: hostname,
      port: Number(port),
      onread: {
        buffer: Buffer.allocUnsafe(64 * 1024),
        callback: (length, buffer) => {
          onBytes((buffer as Buffer).subarray(0, length))
          return true
        },
      },
    })
    await new Promise((resolve) => socket.once('connect', resolve))
    for (let index = take(); index !== undefined; index = take()) {
      const start = index * PIECE_SIZE
      const hash = createHash('sha256')
      await new Promise<void>((resolve, reject) => {
        let head = Buffer.alloc(0)
        let received = -1
        let length = 0
        onBytes = (bytes) => {
          if (received < 0) {
            head = Buffer.concat([head, bytes])
            const end = head.indexOf('\r\n\r\n')
            if (end < 0) return
            const text = head.subarray(0, end).toString('latin1')
            const declared = /content-length: *(\d+)/i.exec(text)
            if (!text.startsWith('HTTP/1.1 206') || declared === null)
              return reject(new Error(`unexpected answer: ${text}`))
            length = Number(declared[1])
            received = 0
            bytes = head.subarray(end + 4)
          }
          slot.set(bytes, received)
          hash.update(bytes)
          received += bytes.byteLength
          if (received >= length) resolve()
        }
        socket.write(
          `GET ${pathname} HTTP/1.1\r\nhost: ${hostname}\r\nrange: bytes=${start}-${start + PIECE_SIZE - 1}\r\n\r\n`,
        )
      })
      hash.digest()
      await file.write(slot, 0, PIECE_SIZE, start)
    }
    socket.end()
  }

  await Promise.all(
    Array.from({ length: CONNECTIONS }, (_, connection) =>
      (path === 'reused' ? viaReusedBuffer : viaUndici)(
        urls[connection % urls.length]!,
        Buffer.allocUnsafe(PIECE_SIZE),
      ),
    ),
  )
  await file.close()
  await agent.close()
}
