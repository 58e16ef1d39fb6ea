/**
 * The benchmark's anchor: a bare node:http server that reads each request body and answers a
 * small JSON acknowledgement to POSTs (heartbeats) and a fixed body of the given size to GETs
 * (lookups). What node:http itself costs for the same load on this machine.
 */
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'

const lookupBytes = Number(process.argv[2] ?? 1000)
const lookupBody = Buffer.alloc(lookupBytes, 'x')
const acknowledgement = JSON.stringify({
  nodeId: 'node-0',
  state: 'ready',
  lastHeartbeatAt: new Date().toISOString(),
})
const server = createServer((request, response) => {
  request.resume()
  request.on('end', () => {
    if (request.method === 'GET')
      response
        .writeHead(200, { 'content-type': 'application/json', 'content-length': lookupBytes })
        .end(lookupBody)
    else response.writeHead(200, { 'content-type': 'application/json' }).end(acknowledgement)
  })
})
server.listen(0, '127.0.0.1', () =>
  console.log(
    JSON.stringify({ url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` }),
  ),
)
process.on('SIGTERM', () => server.close(() => process.exit(0)))
