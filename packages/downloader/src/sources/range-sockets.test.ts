import { createServer, type Server } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import { startMirror, testTlsCertificate, testTlsKey } from '@llmesh/testkit'
import { afterEach, describe, expect, it } from 'vitest'
import { RangeSockets } from './range-sockets.js'

const data = new Uint8Array(3_000_000).map((_, index) => (index * 7) % 251)
const open: Array<{ close(): Promise<void> | void }> = []
afterEach(async () => {
  for (const item of open.splice(0)) await item.close()
})

async function read(sockets: RangeSockets, url: URL, start: number, end: number) {
  const response = await sockets.request(url, { range: `bytes=${start}-${end - 1}` })
  if (response === undefined) return undefined
  const chunks: Buffer[] = []
  // The views are valid until the next one is asked for: copy each.
  for await (const chunk of response.body) chunks.push(Buffer.from(chunk))
  return { status: response.statusCode, headers: response.headers, body: Buffer.concat(chunks) }
}

/** Reads [start, end) and tells whether every byte is right. */
async function readsRight(sockets: RangeSockets, url: URL, start: number, end: number) {
  return (await read(sockets, url, start, end))?.body.equals(data.subarray(start, end)) === true
}

/** A bare range server that records its connections, and can drop a connection's second request. */
async function startRangeServer(
  options: { dropSecondRequest?: boolean; closeEach?: boolean } = {},
) {
  const served = new WeakMap<object, number>()
  const connections: Socket[] = []
  const server = createServer((request, response) => {
    const count = (served.get(request.socket) ?? 0) + 1
    served.set(request.socket, count)
    if (options.dropSecondRequest === true && count > 1) return request.socket.destroy()
    const [, first, last] = /bytes=(\d+)-(\d+)/.exec(request.headers.range ?? '')!.map(Number)
    response.writeHead(206, {
      'content-range': `bytes ${first}-${last}/${data.byteLength}`,
      'content-length': last! - first! + 1,
      ...(options.closeEach === true ? { connection: 'close' } : {}),
    })
    response.end(data.subarray(first, last! + 1))
  })
  server.on('connection', (socket) => connections.push(socket))
  open.push({ close: () => new Promise<void>((resolve) => server.close(() => resolve())) })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const url = new URL(`http://127.0.0.1:${(server.address() as AddressInfo).port}/model.bin`)
  return { url, connections }
}

describe('RangeSockets', () => {
  it('reads ranges over one kept-alive socket, every byte right', async () => {
    const mirror = await startMirror({ files: { '/model.bin': data } })
    open.push(mirror)
    const sockets = new RangeSockets()
    open.push(sockets)
    const url = new URL(mirror.urlOf('/model.bin'))
    for (const [start, end] of [
      [0, 1_000_000],
      [1_000_000, 3_000_000],
      [5, 77],
    ] as const) {
      const answer = await read(sockets, url, start, end)
      expect(answer?.status).toBe(206)
      expect(answer?.headers['content-range']).toBe(`bytes ${start}-${end - 1}/${data.byteLength}`)
      expect(answer?.body.equals(data.subarray(start, end))).toBe(true)
    }
    expect(new Set(mirror.requests.map((request) => request.connection)).size).toBe(1)
  })

  it('closes a socket left idle past its timeout', async () => {
    const server = await startRangeServer()
    const sockets = new RangeSockets({ idleTimeoutMs: 20 })
    open.push(sockets)
    await read(sockets, server.url, 0, 10)
    // The server sees the idle socket closed by the client, then a new one for the next range.
    await new Promise((resolve) => server.connections[0]!.once('close', resolve))
    expect(await readsRight(sockets, server.url, 10, 20)).toBe(true)
    expect(server.connections).toHaveLength(2)
  })

  it('reads over TLS', async () => {
    const mirror = await startMirror({
      files: { '/model.bin': data },
      tls: { key: testTlsKey, cert: testTlsCertificate },
    })
    open.push(mirror)
    const sockets = new RangeSockets({ ca: testTlsCertificate })
    open.push(sockets)
    const answer = await read(sockets, new URL(mirror.urlOf('/model.bin')), 100, 2_000_100)
    expect(answer?.body.equals(data.subarray(100, 2_000_100))).toBe(true)
  })

  it('leaves redirects and bodies without a length to undici', async () => {
    const server: Server = createServer((request, response) => {
      if (request.url === '/moved') {
        response.writeHead(302, { location: '/elsewhere', 'content-length': 0 })
        response.end()
        return
      }
      response.writeHead(206, { 'content-range': 'bytes 0-9/10' })
      response.write('0123')
      response.end('456789')
    })
    open.push({ close: () => new Promise<void>((resolve) => server.close(() => resolve())) })
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
    const sockets = new RangeSockets()
    open.push(sockets)
    expect(await read(sockets, new URL(`${origin}/moved`), 0, 10)).toBeUndefined()
    expect(await read(sockets, new URL(`${origin}/chunked`), 0, 10)).toBeUndefined()
    // That origin does not size its bodies: it is not asked on this path again.
    let asked = 0
    server.on('request', () => asked++)
    expect(await read(sockets, new URL(`${origin}/chunked`), 0, 10)).toBeUndefined()
    expect(asked).toBe(0)
  })

  it.each([
    // A server that closes the connection after each answer is read all the same.
    [
      'reads the answers of a server that closes the connection after each one',
      { closeEach: true },
    ],
    // The server drops every connection at its second request, as one that closed it would.
    [
      'asks again on a new socket when a kept-alive one fails before answering',
      { dropSecondRequest: true },
    ],
  ] as const)('%s', async (_, options) => {
    const server = await startRangeServer(options)
    const sockets = new RangeSockets()
    open.push(sockets)
    expect(await readsRight(sockets, server.url, 0, 10)).toBe(true)
    expect(await readsRight(sockets, server.url, 10, 20)).toBe(true)
    expect(server.connections).toHaveLength(2)
  })

  it('stops at once on abort', async () => {
    const mirror = await startMirror({
      files: { '/model.bin': data },
      bytesPerSecondPerConnection: 100_000,
    })
    open.push(mirror)
    const sockets = new RangeSockets()
    open.push(sockets)
    const controller = new AbortController()
    const response = await sockets.request(
      new URL(mirror.urlOf('/model.bin')),
      { range: `bytes=0-${data.byteLength - 1}` },
      controller.signal,
    )
    const reading = (async () => {
      for await (const chunk of response!.body)
        if (chunk.byteLength > 0) controller.abort(new Error('enough'))
    })()
    await expect(reading).rejects.toThrow('enough')
  })
})
