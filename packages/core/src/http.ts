/**
 * Two small pieces the packages' `node:http` servers (registry, inference node, router) share: a
 * request body read under a size limit, and a JSON answer.
 */
import type { IncomingMessage, ServerResponse } from 'node:http'

/**
 * The request's body, or `undefined` once it is larger than `limit` bytes: then the rest is
 * drained, not kept, and the request stays usable for an answer (413, say, with
 * `connection: close` so that a client that keeps sending is cut off after it).
 */
export function readBodyWithin(
  request: IncomingMessage,
  limit: number,
): Promise<Buffer | undefined> {
  if (Number(request.headers['content-length'] ?? 0) > limit) {
    request.resume()
    return Promise.resolve(undefined)
  }
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    let size = 0
    const onData = (chunk: Buffer) => {
      size += chunk.byteLength
      if (size <= limit) {
        chunks.push(chunk)
        return
      }
      request.off('data', onData)
      request.off('end', onEnd)
      request.resume()
      resolve(undefined)
    }
    const onEnd = () => resolve(Buffer.concat(chunks))
    request.on('data', onData)
    request.once('end', onEnd)
    request.once('error', reject)
  })
}

/** Answers `body` as JSON, with its length. */
export function sendJson(
  response: ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  const text = JSON.stringify(body)
  response.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
    ...headers,
  })
  response.end(text)
}
