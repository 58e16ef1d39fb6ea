import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { afterEach, describe, expect, it } from 'vitest'
import { readBodyWithin, sendJson } from './http.js'

let server: Server | undefined
afterEach(async () => {
  await new Promise((resolve) => server?.close(resolve))
  server = undefined
})

/** A server that answers with the body's length, or 413 past `limit`. */
async function start(limit: number): Promise<string> {
  server = createServer(async (incoming, response) => {
    const body = await readBodyWithin(incoming, limit)
    if (body === undefined)
      return sendJson(response, 413, { error: 'too large' }, { connection: 'close' })
    sendJson(response, 200, { length: body.byteLength })
  })
  await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve))
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}/`
}

/** POSTs `body`; an async iterable goes chunked, with no declared length. */
function post(url: string, body: Uint8Array | string | AsyncIterable<Uint8Array>) {
  return fetch(url, {
    method: 'POST',
    body: typeof body === 'string' || body instanceof Uint8Array ? body : ReadableStream.from(body),
    duplex: 'half',
  } as RequestInit)
}

async function* chunked(chunks: number, size: number) {
  for (let index = 0; index < chunks; index++) yield new Uint8Array(size).fill(120)
}

describe('readBodyWithin and sendJson', () => {
  it('reads a body within the limit, declared or chunked', async () => {
    const url = await start(64 * 1024)
    const declared = await post(url, new Uint8Array(64 * 1024))
    expect(declared.status).toBe(200)
    expect(await declared.json()).toEqual({ length: 64 * 1024 })
    const streamed = await post(url, chunked(4, 16 * 1024))
    expect(streamed.headers.get('content-type')).toBe('application/json')
    expect(await streamed.json()).toEqual({ length: 64 * 1024 })
  })

  it('gives undefined past the limit, whether the length is declared or not, and the answer still arrives', async () => {
    const url = await start(64 * 1024)
    const declared = await post(url, new Uint8Array(64 * 1024 + 1))
    expect(declared.status).toBe(413)
    expect(await declared.json()).toEqual({ error: 'too large' })
    const streamed = await post(url, chunked(16, 16 * 1024))
    expect(streamed.status).toBe(413)
    expect(await streamed.json()).toEqual({ error: 'too large' })
    // The server still answers.
    const after = await post(url, 'small')
    expect(await after.json()).toEqual({ length: 5 })
  })
})
