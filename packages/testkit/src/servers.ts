import { createServer, type RequestListener, type Server } from 'node:http'
import { Server as HttpsServer } from 'node:https'
import type { AddressInfo } from 'node:net'

export interface RunningServer {
  /** `http://127.0.0.1:<port>` (`https://` for an https server) */
  url: string
  host: string
  port: number
  server: Server
  /** Stops accepting, ends open connections (keep-alive ones too) and resolves once closed. */
  close(): Promise<void>
  [Symbol.asyncDispose](): Promise<void>
}

/**
 * Starts an HTTP server on 127.0.0.1, port 0 (the system picks a free port), so tests run in
 * parallel without clashing. Accepts a request handler or a server that is not listening yet.
 */
export async function startServer(
  handlerOrServer: RequestListener | Server,
  { host = '127.0.0.1' } = {},
): Promise<RunningServer> {
  const server =
    typeof handlerOrServer === 'function' ? createServer(handlerOrServer) : handlerOrServer
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, host, () => {
      server.off('error', reject)
      resolve()
    })
  })
  const { port } = server.address() as AddressInfo
  let closing: Promise<void> | undefined
  const close = () => {
    closing ??= new Promise<void>((resolve, reject) => {
      server.close((error) => (error === undefined ? resolve() : reject(error)))
      server.closeAllConnections()
    })
    return closing
  }
  const scheme = server instanceof HttpsServer ? 'https' : 'http'
  return {
    url: `${scheme}://${host}:${port}`,
    host,
    port,
    server,
    close,
    [Symbol.asyncDispose]: close,
  }
}
