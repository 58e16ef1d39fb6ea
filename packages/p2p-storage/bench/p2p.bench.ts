/**
 * Peer-to-peer figures, every peer in a process of its own:
 *   1. one seed to one leecher: verified, written to disk, against the bare libp2p stream rate
 *      (same encryption, the same file's bytes, nothing else, received in a process of its own
 *      as the leecher's) and raw TCP, same run; with TLS, then with Noise; each in a new process,
 *      then again in that process (a second GiB over the same connection); and the bare stream
 *      with each piece verified and written by llmesh's writer, no protocol: what checking and
 *      writing alone leave of the bare rate on the machine; and the CPU seconds of each end's main
 *      thread (where every thread has a core of its own, the busiest bounds the rate);
 *   1b. fan-in: one leecher from 8 seeds in pieces of 32 MiB, every seed's upload capped at
 *      32 MiB/s: its time and peak memory with the cap on bytes in flight over all peers (256 MiB
 *      by default), against the same without that cap;
 *   2. swarm: one seed and N leechers (8, and 4), every node's upload capped at 32 MiB/s: when
 *      each finishes, and how much the seed uploaded;
 *   3. a lying peer (one byte flipped in every fourth piece) beside an honest one: pieces wasted,
 *      time to ban;
 *   4. pulls: N nodes pull one file at once through the downloader from one mirror (every mirror
 *      connection capped), sharing their verified pieces, against the same pulls without peers:
 *      when all are done, and how much the mirror sent;
 *   5. DHT: 200 nodes in this process, each bootstrapped from one before it; 3 announce a blob,
 *      10 others look for it: how long, how many found, against asking a known peer directly.
 *
 *   node bench/p2p.bench.ts [--size-mib 1024] [--only transfer,fan-in,swarm,liar,pulls,dht] [--leechers 4,8] [--pullers 4] [--dht-nodes 200] [--runs 3] [--smoke]
 *
 * Writes bench/results/p2p.json and the table in README.md after a complete run (not --smoke).
 */
import { type ChildProcess, execFile, fork } from 'node:child_process'
import { createWriteStream } from 'node:fs'
import { mkdir, open, readFile, rm, writeFile } from 'node:fs/promises'
import { connect } from 'node:net'
import { cpus, tmpdir } from 'node:os'
import { extname, join } from 'node:path'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { parseArgs, promisify } from 'node:util'
import { tuneHeapForTransfers } from '@llmesh/downloader'
import { createManifest, type PieceIndexDocument } from '@llmesh/manifest'
import { Bitfield, createPeerNode, type PeerNode, StoreBlobProvider } from '@llmesh/p2p-storage'
import { startMirror } from '@llmesh/testkit'

const { values } = parseArgs({
  options: {
    'size-mib': { type: 'string', default: '1024' },
    only: { type: 'string' },
    smoke: { type: 'boolean', default: false },
    leechers: { type: 'string' },
    pullers: { type: 'string', default: '4' },
    'dht-nodes': { type: 'string', default: '200' },
    runs: { type: 'string', default: '3' },
  },
})
// As the peers are (and the llmesh CLI): the raw TCP receiver and the DHT's nodes run in this process.
tuneHeapForTransfers()
const smoke = values.smoke
const sizeMiB = smoke ? 16 : Number(values['size-mib'])
const size = sizeMiB * 1024 * 1024
const sections = new Set(
  values.only?.split(',') ?? ['transfer', 'fan-in', 'swarm', 'liar', 'pulls', 'dht'],
)
const complete = values.only === undefined && values.leechers === undefined && values.runs === '3'
const folder = join(tmpdir(), `llmesh-p2p-bench-${process.pid}`)
const children: ChildProcess[] = []
const MiB = 1024 * 1024

await mkdir(folder, { recursive: true })
const file = join(folder, 'blob.bin')
{
  // Incompressible, deterministic enough: a counter-seeded xorshift.
  const out = createWriteStream(file)
  let state = 0x9e3779b9
  const chunk = Buffer.alloc(4 * MiB)
  for (let written = 0; written < size; written += chunk.length) {
    for (let offset = 0; offset < chunk.length; offset += 4) {
      state ^= state << 13
      state ^= state >>> 17
      state ^= state << 5
      chunk.writeUInt32LE(state >>> 0, offset)
    }
    if (!out.write(chunk.subarray(0, Math.min(chunk.length, size - written))))
      await new Promise<void>((resolve) => out.once('drain', () => resolve()))
  }
  await new Promise<void>((resolve) => out.end(() => resolve()))
}
/** The file's piece index, in pieces of `pieceSize` (by default, the size a manifest picks for it). */
async function pieceIndexOfFile(pieceSize?: number): Promise<PieceIndexDocument> {
  const { pieceIndexes } = await createManifest({
    files: [{ file, path: 'blob.bin' }],
    manifest: { id: 'bench/p2p', version: '1.0.0', license: { id: 'mit' } },
    ...(pieceSize === undefined ? {} : { pieceSize }),
  })
  return pieceIndexes[0]!.toJSON()
}
const pieceIndex = await pieceIndexOfFile()
const pieceSize = pieceIndex.pieceSize

/** One receiver's transfers: wall seconds per phase; the first GiB's cores busy and CPU seconds. */
interface ReceiverFigures {
  seconds: { cold: number[]; warm: number[] }
  coresBusy: number[]
  cpu: {
    receiver: number[]
    seed: number[]
    receiverMainThread: number[]
    seedMainThread: number[]
  }
}

function receiverFigures(): ReceiverFigures {
  return {
    seconds: { cold: [], warm: [] },
    coresBusy: [],
    cpu: { receiver: [], seed: [], receiverMainThread: [], seedMainThread: [] },
  }
}

interface Ready {
  child: ChildProcess
  addresses: string[]
  tcpPort?: number
  peerId: string
}

/** The peers' module, beside this one: peer-child.ts, or peer-child.js in a bundle (the device kit). */
const childModule = new URL(`./peer-child${extname(import.meta.filename)}`, import.meta.url)
  .pathname

async function startPeer(setup: Record<string, unknown>): Promise<Ready> {
  const child = fork(childModule, [JSON.stringify({ size, pieceSize, pieceIndex, ...setup })])
  children.push(child)
  const ready = await new Promise<{ addresses: string[]; tcpPort?: number; peerId: string }>(
    (resolve) => child.once('message', resolve as never),
  )
  return { child, ...ready }
}

/**
 * Seconds `dd` takes to write the file's size to a fresh file in `folder` (where the leechers
 * write) in 1 MiB writes past the page cache, as llmesh's writer does: the disk's own rate, the
 * anchor of what writing alone allows. Undefined where the filesystem refuses O_DIRECT.
 */
async function diskWriteSeconds(): Promise<number | undefined> {
  const target = join(folder, 'disk-anchor.bin')
  await rm(target, { force: true })
  const started = performance.now()
  try {
    await promisify(execFile)('dd', [
      'if=/dev/zero',
      `of=${target}`,
      'bs=1M',
      `count=${sizeMiB}`,
      'oflag=direct',
    ])
    return (performance.now() - started) / 1000
  } catch {
    return undefined
  } finally {
    await rm(target, { force: true })
  }
}

function request<T>(
  child: ChildProcess,
  message: Record<string, unknown>,
  key: string,
): Promise<T> {
  return new Promise((resolve) => {
    const onMessage = (answer: Record<string, unknown>) => {
      if (!(key in answer)) return
      child.off('message', onMessage)
      resolve(answer as T)
    }
    child.on('message', onMessage)
    child.send(message)
  })
}

/** A child's CPU time so far (user and system): all its threads, and its main thread. */
function cpuOf(child: ChildProcess): Promise<{ cpuSeconds: number; mainThreadCpuSeconds: number }> {
  return request(child, { report: true }, 'cpuSeconds')
}

/**
 * Reads a file through, so that the transfer measured next reads it from the page cache. This
 * machine's host takes page cache back within minutes: a GiB read from its disk cost the reader
 * 1.6 s of CPU (against 0.23 s cached), and a seed that paid it in one run and not another made the
 * anchor's runs differ by half.
 */
async function readIntoPageCache(path: string): Promise<void> {
  const handle = await open(path, 'r')
  try {
    const buffer = Buffer.allocUnsafe(16 * MiB)
    let bytesRead: number
    do ({ bytesRead } = await handle.read(buffer, 0, buffer.byteLength, null))
    while (bytesRead > 0)
  } finally {
    await handle.close()
  }
}

const median = (numbers: number[]) => [...numbers].sort((a, b) => a - b)[numbers.length >> 1]!

const SWARM_UPLOAD_CAP = 32 * MiB

interface SwarmRun {
  allFinishedSeconds: number
  finishSeconds: number[]
  seedUploadedMiB: number
  /** Endgame duplicates (and pieces that arrived after another copy), over all leechers. */
  wastedPieces: number
  largestLeecherPeakRssMiB: number
  errors: string[]
}

/** One seed and `leechers` leechers, each in a process of its own, every upload capped. */
async function swarmRun(leechers: number, superSeeding: boolean): Promise<SwarmRun> {
  const seed = await startPeer({
    role: 'seed',
    file,
    uploadBytesPerSecond: SWARM_UPLOAD_CAP,
    superSeeding,
  })
  const peers: Ready[] = []
  for (let index = 0; index < leechers; index++)
    peers.push(
      await startPeer({
        role: 'leecher',
        output: join(folder, `swarm-${index}.bin`),
        uploadBytesPerSecond: SWARM_UPLOAD_CAP,
      }),
    )
  const everyone = [seed.addresses[0]!, ...peers.map((peer) => peer.addresses[0]!)]
  const started = performance.now()
  const finished = await Promise.all(
    peers.map((peer, index) =>
      request<{ seconds: number; wastedPieces?: number; peakRssMiB?: number; error?: string }>(
        peer.child,
        { start: everyone.filter((_, position) => position !== index + 1) },
        'done',
      ),
    ),
  )
  const allFinishedSeconds = (performance.now() - started) / 1000
  const { uploaded } = await request<{ uploaded: number }>(seed.child, { report: true }, 'uploaded')
  seed.child.kill()
  for (const peer of peers) peer.child.kill()
  for (let index = 0; index < leechers; index++) {
    await rm(join(folder, `swarm-${index}.bin`), { force: true })
    await rm(join(folder, `swarm-${index}.bin.journal`), { force: true })
  }
  return {
    allFinishedSeconds,
    finishSeconds: finished.map((entry) => entry.seconds),
    seedUploadedMiB: uploaded / MiB,
    wastedPieces: finished.reduce((sum, entry) => sum + (entry.wastedPieces ?? 0), 0),
    largestLeecherPeakRssMiB: Math.max(...finished.map((entry) => entry.peakRssMiB ?? 0)),
    errors: finished.flatMap((entry) => (entry.error === undefined ? [] : [entry.error])),
  }
}
/** Per mirror connection, and connections per node, in the pulls: 16 MiB/s per node. */
const PULL_CONNECTION_CAP = 4 * MiB
const PULL_MIRROR_CONNECTIONS = 4

interface PullsRun {
  allFinishedSeconds: number
  mirrorSentMiB: number
  /** Bytes the pullers got from each other, over all of them. */
  fromPeersMiB: number
  errors: string[]
}

/** `pullers` nodes pull one file at once from the mirror, with or without each other as peers. */
async function pullsRun(
  pullers: number,
  together: boolean,
  pull: { manifest: unknown; pieceIndex: unknown; size: number; mirror: { bodyBytesSent: number } },
): Promise<PullsRun> {
  const nodes: Ready[] = []
  for (let index = 0; index < pullers; index++)
    nodes.push(
      await startPeer({
        role: 'puller',
        manifest: pull.manifest,
        pieceIndex: pull.pieceIndex,
        size: pull.size,
        store: join(folder, `puller-${index}`),
        mirrorConnections: PULL_MIRROR_CONNECTIONS,
      }),
    )
  const sentBefore = pull.mirror.bodyBytesSent
  const started = performance.now()
  const finished = await Promise.all(
    nodes.map((node, index) =>
      request<{ seconds: number; bySource?: Record<string, number>; error?: string }>(
        node.child,
        {
          start: together
            ? nodes.filter((_, position) => position !== index).map((other) => other.addresses[0])
            : [],
        },
        'done',
      ),
    ),
  )
  const allFinishedSeconds = (performance.now() - started) / 1000
  for (const node of nodes) node.child.kill()
  for (let index = 0; index < pullers; index++)
    await rm(join(folder, `puller-${index}`), { recursive: true, force: true })
  const fromPeers = finished.reduce(
    (sum, entry) =>
      sum +
      Object.entries(entry.bySource ?? {})
        .filter(([source]) => source.startsWith('peers:'))
        .reduce((bytes, [, count]) => bytes + count, 0),
    0,
  )
  return {
    allFinishedSeconds,
    mirrorSentMiB: (pull.mirror.bodyBytesSent - sentBefore) / MiB,
    fromPeersMiB: fromPeers / MiB,
    errors: finished.flatMap((entry) => (entry.error === undefined ? [] : [entry.error])),
  }
}

const results: Record<string, unknown> = {
  date: new Date().toISOString().slice(0, 10),
  cpu: cpus()[0]?.model.trim(),
  cores: cpus().length,
  node: process.version,
  sizeMiB,
  pieceSize,
}
const rows: string[] = []
const rate = (bytes: number, seconds: number) => `${(bytes / MiB / seconds).toFixed(0)} MiB/s`

try {
  if (sections.has('transfer')) {
    const transfers: Record<string, unknown> = {}
    // TLS first (the node's preference), then Noise; each against a bare stream of its own kind.
    // The leecher and the bare stream's receiving end each run in a process of their own, started
    // for the run: the first transfer is what a new process gets (`llmesh pull`: a new connection,
    // code not yet optimized, a heap still growing); the second, over the same connection, is the
    // rate of a process that has moved a GiB already, as in a long download.
    //
    // Before each measured pair, the seed moves the file once the same way to a receiver thrown
    // away after it, so that the seed is in the same state for the subject and the anchor. A seed
    // that had just served the other kind of transfer touched fresh memory for this one (a bare
    // stream after llmesh's: 186,000 page faults against 17,000 to 32,000 after another bare
    // stream, and up to 3.3 s of the seed's CPU against 1.3 s), which made the anchor's first
    // GiB swing between 1.4 and 2.8 s from run to run on this VM.
    const warmSeed = async (
      role: 'leecher' | 'bare',
      seed: Ready,
      setup: Record<string, unknown>,
    ) => {
      const receiver = await startPeer({ role, ...setup })
      await readIntoPageCache(file)
      const output = join(folder, 'warm-up.bin')
      if (role === 'bare') await request(receiver.child, { bare: seed.addresses[0] }, 'bytes')
      else await request(receiver.child, { start: [seed.addresses[0]], output }, 'done')
      receiver.child.kill()
      await rm(output, { force: true })
      await rm(`${output}.journal`, { force: true })
    }
    /**
     * The file moved twice to one receiver in a process of its own (see above), the seed's CPU
     * measured around each transfer: llmesh's leecher, or the bare stream's receiver (with
     * `verified`, each piece checked and written by llmesh's writer).
     */
    const measureReceiver = async (
      kind: 'llmesh' | 'bare' | 'bareVerified',
      seed: Ready,
      encryption: 'tls' | 'noise',
      run: number,
      figures: ReceiverFigures,
    ) => {
      const receiver = await startPeer({ role: kind === 'llmesh' ? 'leecher' : 'bare', encryption })
      for (const phase of ['cold', 'warm'] as const) {
        const output = join(folder, `${kind}-${run}-${phase}.bin`)
        await readIntoPageCache(file)
        const seedBefore = await cpuOf(seed.child)
        const done = await request<{
          seconds: number
          cpuSeconds: number
          mainThreadCpuSeconds: number
          bytes?: number
          error?: string
        }>(
          receiver.child,
          kind === 'llmesh'
            ? { start: [seed.addresses[0]], output }
            : { bare: seed.addresses[0], ...(kind === 'bareVerified' ? { output } : {}) },
          kind === 'llmesh' ? 'done' : 'bytes',
        )
        if (done.error !== undefined) throw new Error(done.error)
        if (kind !== 'llmesh' && done.bytes !== size)
          throw new Error(`bare stream carried ${done.bytes} bytes`)
        const seedAfter = await cpuOf(seed.child)
        const seedCpu = seedAfter.cpuSeconds - seedBefore.cpuSeconds
        const seedMainThread = seedAfter.mainThreadCpuSeconds - seedBefore.mainThreadCpuSeconds
        figures.seconds[phase].push(done.seconds)
        if (phase === 'cold') {
          // Both ends' CPU time over the wall time: 2 means both cores were busy throughout.
          figures.coresBusy.push((done.cpuSeconds + seedCpu) / done.seconds)
          figures.cpu.receiver.push(done.cpuSeconds)
          figures.cpu.seed.push(seedCpu)
          figures.cpu.receiverMainThread.push(done.mainThreadCpuSeconds)
          figures.cpu.seedMainThread.push(seedMainThread)
        }
        const what = {
          llmesh: 'leecher',
          bare: 'bare stream',
          bareVerified: 'bare stream, verified and written,',
        }[kind]
        console.log(
          `  ${encryption} run ${run} (${phase}): ${what} ${done.cpuSeconds.toFixed(2)} s of CPU (main thread ${done.mainThreadCpuSeconds.toFixed(2)}), seed ${seedCpu.toFixed(2)} s (${seedMainThread.toFixed(2)}), wall ${done.seconds.toFixed(2)} s`,
        )
        await rm(output, { force: true })
        await rm(`${output}.journal`, { force: true })
      }
      receiver.child.kill()
    }
    /** The bare TLS stream's medians, for the run with larger pieces. */
    let bareTls = { cold: 0, warm: 0 }
    for (const encryption of ['tls', 'noise'] as const) {
      const seed = await startPeer({ role: 'seed', file, encryption })
      const llmesh = receiverFigures()
      const bare = receiverFigures()
      const bareVerified = receiverFigures()
      const tcpSeconds: number[] = []
      const diskSeconds: number[] = []
      for (let run = 0; run < (smoke ? 1 : Number(values.runs)); run++) {
        await warmSeed('leecher', seed, { encryption })
        await measureReceiver('llmesh', seed, encryption, run, llmesh)
        // The bare stream, then the same with each piece verified and written as a download
        // does (the seed, warm from the first, needs no warm-up for the second).
        await warmSeed('bare', seed, { encryption })
        await measureReceiver('bare', seed, encryption, run, bare)
        await measureReceiver('bareVerified', seed, encryption, run, bareVerified)

        await readIntoPageCache(file)
        const started = performance.now()
        await new Promise<void>((resolve, reject) => {
          let bytes = 0
          const socket = connect(seed.tcpPort!, '127.0.0.1')
          socket.on('data', (chunk) => {
            bytes += chunk.byteLength
          })
          socket.on('end', () =>
            bytes === size ? resolve() : reject(new Error(`tcp carried ${bytes}`)),
          )
          socket.on('error', reject)
        })
        tcpSeconds.push((performance.now() - started) / 1000)
        const disk = await diskWriteSeconds()
        if (disk !== undefined) diskSeconds.push(disk)
      }
      seed.child.kill()
      /** Medians in a new process (cold) and in one that moved the file already (warm). */
      const seconds = (figures: ReceiverFigures) => ({
        cold: median(figures.seconds.cold),
        warm: median(figures.seconds.warm),
      })
      const llmeshSeconds = seconds(llmesh)
      const bareSeconds = seconds(bare)
      const bareVerifiedSeconds = seconds(bareVerified)
      /**
       * Medians of the first GiB's CPU seconds. The busiest main thread bounds the rate where
       * every thread has a core of its own (an estimate for larger machines: here both ends
       * share two cores).
       */
      const cpuMedians = (figures: ReceiverFigures) => {
        const receiverMainThread = median(figures.cpu.receiverMainThread)
        const seedMainThread = median(figures.cpu.seedMainThread)
        return {
          receiver: median(figures.cpu.receiver),
          seed: median(figures.cpu.seed),
          receiverMainThread,
          seedMainThread,
          busiestMainThread: Math.max(receiverMainThread, seedMainThread),
        }
      }
      const cpu = {
        llmesh: cpuMedians(llmesh),
        bare: cpuMedians(bare),
        bareVerified: cpuMedians(bareVerified),
      }
      const transfer = {
        swarmSeconds: llmeshSeconds.cold,
        bareLibp2pSeconds: bareSeconds.cold,
        ratioToBareLibp2p: bareSeconds.cold / llmeshSeconds.cold,
        warmSwarmSeconds: llmeshSeconds.warm,
        warmBareLibp2pSeconds: bareSeconds.warm,
        warmRatioToBareLibp2p: bareSeconds.warm / llmeshSeconds.warm,
        // The bare stream verified and written: what checking and writing alone leave of the
        // bare rate on this machine, and llmesh against that.
        bareVerifiedSeconds: bareVerifiedSeconds.cold,
        bareVerifiedRatioToBareLibp2p: bareSeconds.cold / bareVerifiedSeconds.cold,
        ratioToBareVerified: bareVerifiedSeconds.cold / llmeshSeconds.cold,
        warmBareVerifiedSeconds: bareVerifiedSeconds.warm,
        warmBareVerifiedRatioToBareLibp2p: bareSeconds.warm / bareVerifiedSeconds.warm,
        warmRatioToBareVerified: bareVerifiedSeconds.warm / llmeshSeconds.warm,
        rawTcpSeconds: median(tcpSeconds),
        // The disk alone: a verified download's rate is at most its write rate.
        diskWriteSeconds: diskSeconds.length === 0 ? undefined : median(diskSeconds),
        coresBusy: median(llmesh.coresBusy),
        bareCoresBusy: median(bare.coresBusy),
        bareVerifiedCoresBusy: median(bareVerified.coresBusy),
        cpuSeconds: cpu,
        // Where each thread has a core of its own: the ratios the busiest main threads allow.
        mainThreadBound: {
          ratioToBareLibp2p: cpu.bare.busiestMainThread / cpu.llmesh.busiestMainThread,
          bareVerifiedRatioToBareLibp2p:
            cpu.bare.busiestMainThread / cpu.bareVerified.busiestMainThread,
        },
        runs: { llmesh, bare, bareVerified, tcpSeconds, diskSeconds },
      }
      transfers[encryption] = transfer
      if (encryption === 'tls')
        bareTls = { cold: transfer.bareLibp2pSeconds, warm: transfer.warmBareLibp2pSeconds }
      console.log(`1. transfer (${encryption})`, transfer)
      const encryptionName = encryption === 'tls' ? 'TLS' : 'Noise'
      rows.push(
        `| one seed to one leecher, ${sizeMiB} MiB, verified and written (${encryptionName}) | ${rate(size, transfer.swarmSeconds)} (${transfer.swarmSeconds.toFixed(2)} s) in a new process; ${rate(size, transfer.warmSwarmSeconds)} in one that moved ${sizeMiB} MiB already | bare libp2p stream ${rate(size, transfer.bareLibp2pSeconds)} (${rate(size, transfer.warmBareLibp2pSeconds)}); raw TCP ${rate(size, transfer.rawTcpSeconds)} | ${transfer.ratioToBareLibp2p.toFixed(2)} of bare libp2p (${transfer.warmRatioToBareLibp2p.toFixed(2)}) | ≥ 0.85 |`,
        `| the same bare ${encryptionName} stream, each piece verified and written by llmesh's writer, no protocol (what checking and writing leave of the bare rate) | the leecher above: ${transfer.ratioToBareVerified.toFixed(2)} of this rate (${transfer.warmRatioToBareVerified.toFixed(2)}) | bare stream verified and written ${rate(size, transfer.bareVerifiedSeconds)} (${rate(size, transfer.warmBareVerifiedSeconds)}); ${transfer.bareVerifiedCoresBusy.toFixed(1)} cores busy | ${transfer.bareVerifiedRatioToBareLibp2p.toFixed(2)} of bare libp2p (${transfer.warmBareVerifiedRatioToBareLibp2p.toFixed(2)}) | reported |`,
        `| CPU seconds of the main threads, ${sizeMiB} MiB in a new process (${encryptionName}): where each thread has a core of its own, the busiest bounds the rate | leecher ${cpu.llmesh.receiverMainThread.toFixed(2)} s, seed ${cpu.llmesh.seedMainThread.toFixed(2)} s | bare stream: receiver ${cpu.bare.receiverMainThread.toFixed(2)} s, seed ${cpu.bare.seedMainThread.toFixed(2)} s; verified and written: receiver ${cpu.bareVerified.receiverMainThread.toFixed(2)} s | ${transfer.mainThreadBound.ratioToBareLibp2p.toFixed(2)} of bare libp2p (verified and written, no protocol: ${transfer.mainThreadBound.bareVerifiedRatioToBareLibp2p.toFixed(2)}); an estimate for larger machines | reported |`,
      )
      if (encryption === 'tls' && transfer.diskWriteSeconds !== undefined)
        rows.push(
          `| the disk the leechers write to: ${sizeMiB} MiB to a fresh file in writes of 1 MiB past the page cache, as llmesh's writer does (no verified download is faster) | the leecher above (TLS): ${(transfer.diskWriteSeconds / transfer.swarmSeconds).toFixed(2)} of this rate | \`dd oflag=direct\` ${rate(size, transfer.diskWriteSeconds)} | ${(transfer.bareLibp2pSeconds / transfer.diskWriteSeconds).toFixed(2)} of the bare TLS stream | reported |`,
        )
    }

    // The same over TLS in larger pieces, against the bare stream measured above: 4 MiB, the
    // default piece size of files of 8 to 16 GiB, and 32 MiB, that of 64 to 128 GiB (a 100 GB
    // model's; most models are larger than the file moved here).
    for (const [largePieceMiB, whose] of [
      [4, 'files of 8 to 16 GiB'],
      [32, 'files of 64 to 128 GiB'],
    ] as const) {
      const largePieceSize = largePieceMiB * MiB
      const large = await pieceIndexOfFile(largePieceSize)
      const pieceSetup = { encryption: 'tls', pieceSize: largePieceSize, pieceIndex: large }
      const largeSeed = await startPeer({ role: 'seed', file, ...pieceSetup })
      const largeSeconds = { cold: [] as number[], warm: [] as number[] }
      for (let run = 0; run < (smoke ? 1 : Number(values.runs)); run++) {
        await warmSeed('leecher', largeSeed, pieceSetup)
        const leecher = await startPeer({ role: 'leecher', ...pieceSetup })
        for (const phase of ['cold', 'warm'] as const) {
          const output = join(folder, `leech-large-${run}-${phase}.bin`)
          await readIntoPageCache(file)
          const done = await request<{ seconds: number; error?: string }>(
            leecher.child,
            { start: [largeSeed.addresses[0]], output },
            'done',
          )
          if (done.error !== undefined) throw new Error(done.error)
          largeSeconds[phase].push(done.seconds)
          await rm(output, { force: true })
          await rm(`${output}.journal`, { force: true })
        }
        leecher.child.kill()
      }
      largeSeed.child.kill()
      const largePieces = {
        swarmSeconds: median(largeSeconds.cold),
        warmSwarmSeconds: median(largeSeconds.warm),
        ratioToBareLibp2p: bareTls.cold / median(largeSeconds.cold),
        warmRatioToBareLibp2p: bareTls.warm / median(largeSeconds.warm),
        runs: largeSeconds,
      }
      transfers[`tlsPiecesOf${largePieceMiB}MiB`] = largePieces
      console.log(`1. transfer (tls, pieces of ${largePieceMiB} MiB)`, largePieces)
      rows.push(
        `| the same in pieces of ${largePieceMiB} MiB (the default for ${whose}), TLS | ${rate(size, largePieces.swarmSeconds)} (${largePieces.swarmSeconds.toFixed(2)} s) in a new process; ${rate(size, largePieces.warmSwarmSeconds)} in one that moved ${sizeMiB} MiB already | the bare TLS stream above | ${largePieces.ratioToBareLibp2p.toFixed(2)} of bare libp2p (${largePieces.warmRatioToBareLibp2p.toFixed(2)}) | ≥ 0.85 |`,
      )
    }
    results.transfer = transfers
  }

  if (sections.has('fan-in')) {
    // One leecher from 8 seeds in pieces of 32 MiB (a 100 GB model's), each seed's upload capped
    // at 32 MiB/s: the peers' windows (2 pieces each) would allow 512 MiB in flight, the cap over
    // all peers (256 MiB by default) holds it to 8 pieces. Against the same without that cap.
    const seedCount = smoke ? 2 : 8
    const fanInPieceSize = (smoke ? 4 : 32) * MiB
    const fanInIndex = await pieceIndexOfFile(fanInPieceSize)
    const fanInSetup = { encryption: 'tls', pieceSize: fanInPieceSize, pieceIndex: fanInIndex }
    const seeds: Ready[] = []
    for (let index = 0; index < seedCount; index++)
      seeds.push(
        await startPeer({
          role: 'seed',
          file,
          uploadBytesPerSecond: SWARM_UPLOAD_CAP,
          ...fanInSetup,
        }),
      )
    const byMode = {
      capped: [] as Array<{ seconds: number; peakRssMiB: number }>,
      uncapped: [] as Array<{ seconds: number; peakRssMiB: number }>,
    }
    // Run -1 warms the seeds up (their first pieces ran a third slower, whichever mode came first).
    for (let run = smoke ? 0 : -1; run < (smoke ? 1 : Number(values.runs)); run++)
      for (const mode of ['capped', 'uncapped'] as const) {
        await readIntoPageCache(file)
        const leecher = await startPeer({
          role: 'leecher',
          ...fanInSetup,
          ...(mode === 'uncapped' ? { maxInFlightBytes: Number.MAX_SAFE_INTEGER } : {}),
        })
        const output = join(folder, `fan-in-${mode}.bin`)
        const done = await request<{ seconds: number; peakRssMiB: number; error?: string }>(
          leecher.child,
          { start: seeds.map((peer) => peer.addresses[0]), output },
          'done',
        )
        if (done.error !== undefined) throw new Error(done.error)
        if (run >= 0) byMode[mode].push({ seconds: done.seconds, peakRssMiB: done.peakRssMiB })
        console.log(
          `  fan-in ${run < 0 ? 'warm-up' : `run ${run}`} (${mode}): ${done.seconds.toFixed(2)} s, peak RSS ${done.peakRssMiB.toFixed(0)} MiB`,
        )
        leecher.child.kill()
        await rm(output, { force: true })
        await rm(`${output}.journal`, { force: true })
      }
    for (const peer of seeds) peer.child.kill()
    const summary = (runs: Array<{ seconds: number; peakRssMiB: number }>) => ({
      seconds: median(runs.map((run) => run.seconds)),
      peakRssMiB: median(runs.map((run) => run.peakRssMiB)),
    })
    const capped = summary(byMode.capped)
    const uncapped = summary(byMode.uncapped)
    results.fanIn = {
      seeds: seedCount,
      pieceSizeMiB: fanInPieceSize / MiB,
      uploadCapMiB: SWARM_UPLOAD_CAP / MiB,
      capped,
      uncapped,
      runs: byMode,
    }
    console.log('1b. fan-in', results.fanIn)
    rows.push(
      `| one leecher from ${seedCount} seeds, ${sizeMiB} MiB in pieces of ${fanInPieceSize / MiB} MiB, each seed's upload capped at 32 MiB/s | ${rate(size, capped.seconds)} (${capped.seconds.toFixed(2)} s); peak RSS ${capped.peakRssMiB.toFixed(0)} MiB, at most 256 MiB of pieces in flight | the same without the cap over all peers: ${rate(size, uncapped.seconds)} (${uncapped.seconds.toFixed(2)} s), peak RSS ${uncapped.peakRssMiB.toFixed(0)} MiB | ${(uncapped.seconds / capped.seconds).toFixed(2)} of its rate, ${(capped.peakRssMiB / uncapped.peakRssMiB).toFixed(2)} of its memory | reported |`,
    )
  }

  if (sections.has('swarm')) {
    const swarm: Record<string, unknown> = {}
    for (const leechers of smoke ? [2] : (values.leechers?.split(',').map(Number) ?? [4, 8])) {
      // Alternated with runs whose seed does not super-seed (the anchor), on the same VM's mood.
      const runs: SwarmRun[] = []
      const withoutSuperSeeding: SwarmRun[] = []
      for (let run = 0; run < (smoke ? 1 : Number(values.runs)); run++) {
        await readIntoPageCache(file)
        runs.push(await swarmRun(leechers, true))
        await readIntoPageCache(file)
        withoutSuperSeeding.push(await swarmRun(leechers, false))
      }
      const wall = median(runs.map((run) => run.allFinishedSeconds))
      const uploaded = median(runs.map((run) => run.seedUploadedMiB))
      const anchorWall = median(withoutSuperSeeding.map((run) => run.allFinishedSeconds))
      const anchorUploaded = median(withoutSuperSeeding.map((run) => run.seedUploadedMiB))
      const failed = runs.reduce((sum, run) => sum + run.errors.length, 0)
      const anchorFailed = withoutSuperSeeding.reduce((sum, run) => sum + run.errors.length, 0)
      const peakRss = Math.max(...runs.map((run) => run.largestLeecherPeakRssMiB))
      swarm[leechers] = {
        allFinishedSeconds: wall,
        seedUploadedMiB: uploaded,
        largestLeecherPeakRssMiB: peakRss,
        singleSourceBaselineSeconds: (leechers * size) / SWARM_UPLOAD_CAP,
        runs,
        withoutSuperSeeding: {
          allFinishedSeconds: anchorWall,
          seedUploadedMiB: anchorUploaded,
          runs: withoutSuperSeeding,
        },
      }
      console.log(`2. swarm of ${leechers}`, swarm[leechers])
      rows.push(
        `| swarm: 1 seed + ${leechers} leechers, ${sizeMiB} MiB, uploads capped at 32 MiB/s | all done in ${wall.toFixed(1)} s (runs: ${runs.map((run) => run.allFinishedSeconds.toFixed(1)).join(', ')}); the seed uploaded ${uploaded.toFixed(0)} MiB; leecher peak RSS ≤ ${peakRss.toFixed(0)} MiB${failed > 0 ? `; ${failed} failed` : ''} | one source: ${((leechers * size) / SWARM_UPLOAD_CAP).toFixed(0)} s, ${leechers * sizeMiB} MiB; without super-seeding: ${anchorWall.toFixed(1)} s (runs: ${withoutSuperSeeding.map((run) => run.allFinishedSeconds.toFixed(1)).join(', ')}), the seed uploaded ${anchorUploaded.toFixed(0)} MiB${anchorFailed > 0 ? `; ${anchorFailed} failed` : ''} | ${((leechers * size) / SWARM_UPLOAD_CAP / wall).toFixed(1)}× faster | ${leechers === 8 ? `≤ ${((48 * sizeMiB) / 1024).toFixed(0)} s, seed ≤ ${(1.5 * sizeMiB).toFixed(0)} MiB` : 'reported'} |`,
      )
    }
    results.swarm = swarm
  }

  if (sections.has('liar')) {
    await readIntoPageCache(file)
    const liar = await startPeer({ role: 'seed', file, lie: 'flip' })
    const honest = await startPeer({ role: 'seed', file })
    const leecher = await startPeer({ role: 'leecher', output: join(folder, 'liar-leech.bin') })
    const done = await request<{
      seconds: number
      wastedPieces: number
      banned: Array<{ peer: string; reason: string; afterMs: number }>
    }>(leecher.child, { start: [liar.addresses[0], honest.addresses[0]] }, 'done')
    const liarResult = {
      seconds: done.seconds,
      wastedPieces: done.wastedPieces,
      banned: done.banned,
      liarBanned: done.banned.some((entry) => entry.peer === liar.peerId),
    }
    results.liar = liarResult
    console.log('3. liar', liarResult)
    const ban = done.banned.find((entry) => entry.peer === liar.peerId)
    rows.push(
      `| lying peer (a byte flipped in every fourth piece) beside an honest one | banned after ${ban === undefined ? '-' : `${ban.afterMs.toFixed(0)} ms`}; ${done.wastedPieces} piece(s) of ${(pieceSize / MiB).toFixed(0)} MiB wasted; file correct | | | banned on its first bad piece |`,
    )
    for (const child of [liar, honest, leecher]) child.child.kill()
  }

  if (sections.has('pulls')) {
    // A quarter of the file (at most 256 MiB): alone, a node needs 16 s for 256 MiB.
    const pullsMiB = smoke ? 16 : Math.min(256, sizeMiB)
    const pullsFile = join(folder, 'pulls.bin')
    {
      const bytes = await readFile(file)
      await writeFile(pullsFile, bytes.subarray(0, pullsMiB * MiB))
    }
    await using mirror = await startMirror({
      files: { '/pulls.bin': pullsFile },
      bytesPerSecondPerConnection: PULL_CONNECTION_CAP,
    })
    const pulled = await createManifest({
      files: [{ file: pullsFile, path: 'pulls.bin', mirrors: [mirror.urlOf('/pulls.bin')] }],
      manifest: { id: 'bench/pulls', version: '1.0.0', license: { id: 'mit' } },
      allowInsecureMirrors: true,
    })
    const pull = {
      manifest: pulled.manifest,
      pieceIndex: pulled.pieceIndexes[0]!.toJSON(),
      size: pullsMiB * MiB,
      mirror,
    }
    const pullers = smoke ? 2 : Number(values.pullers)
    const byMode: Record<string, PullsRun[]> = { alone: [], together: [] }
    for (let run = 0; run < (smoke ? 1 : Number(values.runs)); run++)
      for (const together of [false, true]) {
        await readIntoPageCache(pullsFile)
        byMode[together ? 'together' : 'alone']!.push(await pullsRun(pullers, together, pull))
      }
    const summary = (runs: PullsRun[]) => ({
      allFinishedSeconds: median(runs.map((run) => run.allFinishedSeconds)),
      mirrorSentMiB: median(runs.map((run) => run.mirrorSentMiB)),
      fromPeersMiB: median(runs.map((run) => run.fromPeersMiB)),
      failed: runs.reduce((sum, run) => sum + run.errors.length, 0),
    })
    const alone = summary(byMode.alone!)
    const together = summary(byMode.together!)
    results.pulls = {
      pullers,
      sizeMiB: pullsMiB,
      mirrorConnectionsPerNode: PULL_MIRROR_CONNECTIONS,
      capPerConnectionMiB: PULL_CONNECTION_CAP / MiB,
      alone,
      together,
      runs: byMode,
    }
    console.log('4. pulls', results.pulls)
    rows.push(
      `| pulls: ${pullers} nodes pull ${pullsMiB} MiB at once from one mirror (${PULL_MIRROR_CONNECTIONS} connections of ${PULL_CONNECTION_CAP / MiB} MiB/s each per node), sharing verified pieces | all done in ${together.allFinishedSeconds.toFixed(1)} s (runs: ${byMode.together!.map((run) => run.allFinishedSeconds.toFixed(1)).join(', ')}); the mirror sent ${together.mirrorSentMiB.toFixed(0)} MiB, the peers ${together.fromPeersMiB.toFixed(0)} MiB${together.failed > 0 ? `; ${together.failed} failed` : ''} | the same pulls without peers: ${alone.allFinishedSeconds.toFixed(1)} s, the mirror sent ${alone.mirrorSentMiB.toFixed(0)} MiB | ${(alone.allFinishedSeconds / together.allFinishedSeconds).toFixed(1)}× faster, ${(alone.mirrorSentMiB / together.mirrorSentMiB).toFixed(1)}× less from the mirror | reported |`,
    )
  }

  if (sections.has('dht')) {
    // Every node in this one process (shared event loop, two cores): slower than nodes on
    // machines of their own. They keep the default cap on new connections per second from one
    // address, though all are 127.0.0.1 here: lifted, lookups found the blob less often (4 to 10
    // of 10 in five runs, against 10 of 10 in three with the cap), the event loop carrying more
    // connections.
    const count = smoke ? 10 : Number(values['dht-nodes'])
    const nodes: PeerNode[] = []
    const seedProviders: StoreBlobProvider[] = []
    try {
      for (let index = 0; index < count; index++) {
        const provider = new StoreBlobProvider()
        if (index >= count - 3) seedProviders.push(provider)
        const known = nodes[Math.floor(Math.random() * nodes.length)]
        nodes.push(
          await createPeerNode({
            provider,
            ...(known === undefined ? {} : { bootstrap: [known.addresses[0]!.toString()] }),
          }),
        )
      }
      // Let bootstrap dials and identify fill the routing tables.
      await new Promise((resolve) => setTimeout(resolve, smoke ? 1_000 : 10_000))
      const seeds = nodes.slice(count - 3)
      // A seed that knows no peer yet would announce into an empty routing table and wait there
      // for a minute (a smoke run in CI, its cores shared with other benchmarks, saw it): up to
      // 30 s more for each seed's first connection.
      const connectedBy = performance.now() + 30_000
      while (
        seeds.some((seed) => seed.libp2p.getConnections().length === 0) &&
        performance.now() < connectedBy
      )
        await new Promise((resolve) => setTimeout(resolve, 100))
      for (const provider of seedProviders)
        provider.serve(pieceIndex.sha256, {
          size,
          pieceSize,
          have: Bitfield.full(Math.ceil(size / pieceSize)),
          path: file,
        })
      // How late the shared event loop runs timers while the DHT works: how loaded this one
      // process is, which bounds what its figures say about nodes on machines of their own.
      const loopDelay = monitorEventLoopDelay({ resolution: 10 })
      loopDelay.enable()
      let started = performance.now()
      // An announce that fails (after a minute, at most) is counted, not fatal.
      const announced = (
        await Promise.all(
          seeds.map((seed) =>
            seed.announce(pieceIndex.sha256, { signal: AbortSignal.timeout(60_000) }).then(
              () => true,
              (error: unknown) => {
                console.log(`  an announce failed: ${error}`)
                return false
              },
            ),
          ),
        )
      ).filter(Boolean).length
      const announceSeconds = (performance.now() - started) / 1000
      const lookups: number[] = []
      const direct: number[] = []
      let found = 0
      let directFailures = 0
      // Askers are never seeds (10, or all the others in a smoke run).
      for (const asker of nodes.slice(0, Math.min(10, count - 3))) {
        started = performance.now()
        const peers = await asker
          .findPeers(pieceIndex.sha256, { signal: AbortSignal.timeout(30_000), limit: 1 })
          .catch(() => [])
        lookups.push(performance.now() - started)
        if (peers.length > 0) found++
        // The anchor: asking a peer it already knows (a configured one) for its piece list.
        started = performance.now()
        const seed = seeds[lookups.length % seeds.length]!
        try {
          await asker.have(seed.addresses, pieceIndex.sha256, {
            signal: AbortSignal.timeout(30_000),
          })
          direct.push(performance.now() - started)
        } catch (error) {
          directFailures++
          console.log(`  a direct ask failed: ${error}`)
        }
      }
      loopDelay.disable()
      const delayMs = (nanoseconds: number) => nanoseconds / 1e6
      const dht = {
        nodes: count,
        announceSeconds,
        announced,
        found,
        askers: lookups.length,
        lookupMs: { median: median(lookups), max: Math.max(...lookups), runs: lookups },
        directHaveMs: {
          median: direct.length === 0 ? undefined : median(direct),
          runs: direct,
          failures: directFailures,
        },
        rssMiB: process.memoryUsage().rss / MiB,
        eventLoopDelayMs: {
          median: delayMs(loopDelay.percentile(50)),
          p99: delayMs(loopDelay.percentile(99)),
          max: delayMs(loopDelay.max),
        },
      }
      results.dht = dht
      console.log('5. dht', dht)
      rows.push(
        `| DHT: ${count} nodes (one process), 3 announce a blob, ${lookups.length} others look for it | announced in ${announceSeconds.toFixed(1)} s${announced < seeds.length ? ` (${seeds.length - announced} of ${seeds.length} failed)` : ''}; found by ${found} of ${lookups.length}, median ${dht.lookupMs.median.toFixed(0)} ms, slowest ${dht.lookupMs.max.toFixed(0)} ms | ${direct.length === 0 ? 'asking a known peer directly: every ask failed' : `asking a known peer directly: median ${median(direct).toFixed(0)} ms${directFailures > 0 ? ` (${directFailures} failed)` : ''}`}; the shared event loop ran late by ${dht.eventLoopDelayMs.median.toFixed(0)} ms (median), ${dht.eventLoopDelayMs.p99.toFixed(0)} ms (p99) | ${direct.length === 0 ? '' : `${(median(lookups) / median(direct)).toFixed(1)}× a direct ask`} | reported |`,
      )
    } finally {
      await Promise.all(nodes.map((node) => node.stop().catch(() => {})))
    }
  }
} finally {
  for (const child of children) child.kill()
  await rm(folder, { recursive: true, force: true })
}

const table = [
  '| figure | llmesh | anchor (same run) | ratio | target |',
  '| --- | --- | --- | --- | --- |',
  ...rows,
].join('\n')
console.log(table)
if (!smoke && complete) {
  const resultsFolder = new URL('./results/', import.meta.url).pathname
  await mkdir(resultsFolder, { recursive: true })
  await writeFile(join(resultsFolder, 'p2p.json'), `${JSON.stringify(results, null, 2)}\n`)
  const readme = new URL('../README.md', import.meta.url).pathname
  const text = await readFile(readme, 'utf8').catch(() => '')
  const start = '<!-- bench:p2p:start -->'
  const end = '<!-- bench:p2p:end -->'
  if (text.includes(start))
    await writeFile(
      readme,
      `${text.slice(0, text.indexOf(start) + start.length)}\n${table}\n\nMeasured ${results.date} on ${results.cores} cores (${results.cpu}), Node ${process.version}, every peer in its own process on 127.0.0.1, pieces of ${(pieceSize / MiB).toFixed(0)} MiB. Reproduce: \`pnpm --filter @llmesh/p2p-storage bench\`.\n${text.slice(text.indexOf(end))}`,
    )
}
process.exit(0)
