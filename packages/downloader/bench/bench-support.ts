/** What the downloader's benchmarks share: timing child processes, peak memory, local mirrors. */
import { type ChildProcess, execFile, spawn } from 'node:child_process'
import { randomFillSync } from 'node:crypto'
import { existsSync, readFileSync } from 'node:fs'
import { open, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { startMirror } from '@llmesh/testkit'

export const execute = promisify(execFile)

export const MiB = 1024 * 1024

export const median = (numbers: number[]) => {
  const sorted = [...numbers].sort((left, right) => left - right)
  const middle = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2
}

export async function has(tool: string): Promise<boolean> {
  return execute('sh', ['-c', `command -v ${tool}`]).then(
    () => true,
    () => false,
  )
}

/** Runs a command, timing it and sampling its peak resident memory (VmHWM) from /proc. */
export async function measure(
  command: string,
  args: string[],
): Promise<{ seconds: number; peakRssBytes: number; stdout: string }> {
  const started = process.hrtime.bigint()
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (chunk) => {
    stdout += chunk
  })
  child.stderr.on('data', (chunk) => {
    stderr += chunk
  })
  let peakRssBytes = 0
  const sampler = setInterval(() => {
    peakRssBytes = Math.max(peakRssBytes, readPeakRss(child))
  }, 20)
  // Timed to 'exit'; read to 'close', which can come later, once stdout is read to its end.
  const closed = new Promise<void>((resolve) => child.once('close', () => resolve()))
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve))
  clearInterval(sampler)
  const seconds = Number(process.hrtime.bigint() - started) / 1e9
  await closed
  if (code !== 0) throw new Error(`${command} ${args.join(' ')} exited ${code}: ${stderr}`)
  return { seconds, peakRssBytes, stdout }
}

function readPeakRss(child: ChildProcess): number {
  try {
    const status = readFileSync(`/proc/${child.pid}/status`, 'utf8')
    const match = /VmHWM:\s+(\d+) kB/.exec(status)
    return match === null ? 0 : Number(match[1]) * 1024
  } catch {
    return 0
  }
}

export async function writeRandomFile(path: string, size: number): Promise<void> {
  if (existsSync(path) && (await stat(path)).size === size) return
  const handle = await open(path, 'w')
  const block = Buffer.allocUnsafe(16 * MiB)
  for (let written = 0; written < size; written += block.byteLength) {
    randomFillSync(block)
    await handle.write(block, 0, Math.min(block.byteLength, size - written))
  }
  await handle.close()
}

export interface Mirrors {
  urls: (file: string, throttled: boolean) => string[]
  close(): Promise<void>
  kind: string
}

/**
 * Local mirrors serving `files` from `dataFolder`, `count` of each kind. `fast` ones are nginx
 * (sendfile) when it is installed and `preferNginx`, else testkit mirrors. `capped` ones are
 * always testkit mirrors whose every connection is held to `capPerConnection` bytes per second
 * by a token bucket across all the requests it carries: nginx's `limit_rate` counts per request,
 * so a client making many short range requests would slip past it, and the caps would not be
 * the same for a client that keeps one long request per connection (aria2c).
 */
export async function startMirrors({
  folder,
  dataFolder,
  files,
  count,
  capPerConnection,
  preferNginx,
}: {
  folder: string
  dataFolder: string
  files: string[]
  count: number
  capPerConnection: number
  preferNginx: boolean
}): Promise<Mirrors> {
  const served = Object.fromEntries(files.map((file) => [`/${file}`, join(dataFolder, file)]))
  const capped = await Promise.all(
    Array.from({ length: count }, () =>
      startMirror({ files: served, bytesPerSecondPerConnection: capPerConnection }),
    ),
  )
  const closeCapped = async () => {
    for (const mirror of capped) await mirror.close()
  }
  const cappedUrls = (file: string) => capped.map((mirror) => mirror.urlOf(`/${file}`))
  if (preferNginx && (await has('nginx'))) {
    const ports = Array.from({ length: count }, (_, index) => 18_480 + index)
    const servers = ports
      .map(
        (port) =>
          `server { listen 127.0.0.1:${port}; root ${dataFolder}; location /fast/ { alias ${dataFolder}/; } }`,
      )
      .join('\n')
    const config = join(folder, 'nginx.conf')
    await writeFile(
      config,
      `daemon off; worker_processes 2; pid ${folder}/nginx.pid; error_log ${folder}/nginx-error.log;
       events { worker_connections 1024; }
       http { access_log off; sendfile on; tcp_nopush on; keepalive_requests 100000;
         types { application/octet-stream bin; } default_type application/octet-stream;
         client_body_temp_path ${folder}; proxy_temp_path ${folder}; fastcgi_temp_path ${folder}; uwsgi_temp_path ${folder}; scgi_temp_path ${folder};
         ${servers} }`,
    )
    const nginx = spawn('nginx', ['-c', config, '-p', folder], { stdio: 'inherit' })
    await waitForPort(ports[0]!)
    return {
      kind: 'nginx (fast), testkit mirror (capped)',
      urls: (file, throttled) =>
        throttled ? cappedUrls(file) : ports.map((port) => `http://127.0.0.1:${port}/fast/${file}`),
      async close() {
        nginx.kill()
        await new Promise((resolve) => nginx.once('exit', resolve))
        await closeCapped()
      },
    }
  }
  const fast = await Promise.all(
    Array.from({ length: count }, () => startMirror({ files: served })),
  )
  return {
    kind: 'testkit mirror',
    urls: (file, throttled) =>
      throttled ? cappedUrls(file) : fast.map((mirror) => mirror.urlOf(`/${file}`)),
    async close() {
      for (const mirror of fast) await mirror.close()
      await closeCapped()
    },
  }
}

async function waitForPort(port: number): Promise<void> {
  for (let attempt = 0; attempt < 100; attempt++) {
    const ok = await fetch(`http://127.0.0.1:${port}/`).then(
      () => true,
      () => false,
    )
    if (ok) return
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  throw new Error(`nginx did not start on port ${port}`)
}
