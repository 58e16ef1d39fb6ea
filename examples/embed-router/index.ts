/**
 * Embed the router in an existing Node HTTP server: the app keeps its own routes, and hands
 * `/v1/*` to the gateway's listener, which picks one of two (mock) inference nodes per request
 * and fails over when one dies.
 *
 *   pnpm --filter @llmesh/example-embed-router example
 */
import { strict as assert } from 'node:assert'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { createGateway, staticNodeSource } from '@llmesh/router'
import { startMockNode } from '@llmesh/testkit'

await using nodeA = await startMockNode({ name: 'a', models: ['acme/tiny'] })
await using nodeB = await startMockNode({ name: 'b', models: ['acme/tiny'] })
const gateway = createGateway({
  nodes: staticNodeSource([
    { id: 'a', url: nodeA.url, models: [{ id: 'acme/tiny' }] },
    { id: 'b', url: nodeB.url, models: [{ id: 'acme/tiny' }] },
  ]),
})

// The existing app: its own route, and the gateway for the OpenAI API.
const app = createServer((request, response) => {
  if (request.url?.startsWith('/v1/')) return gateway.listener(request, response)
  response.writeHead(200, { 'content-type': 'text/plain' })
  response.end('my app\n')
})
await new Promise<void>((resolve) => app.listen(0, '127.0.0.1', resolve))
const url = `http://127.0.0.1:${(app.address() as AddressInfo).port}`

const ask = async () => {
  const response = await fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      model: 'acme/tiny',
      messages: [{ role: 'user', content: 'hello' }],
      max_tokens: 4,
    }),
  })
  return { status: response.status, node: response.headers.get('x-llmesh-node') }
}

assert.equal(await (await fetch(url)).text(), 'my app\n')
const before = new Set<string>()
for (let index = 0; index < 10; index++) before.add((await ask()).node!)
console.log(`served by ${[...before].sort().join(' and ')}`)
await nodeA.stop()
const after = await Promise.all(Array.from({ length: 10 }, ask))
console.log(
  `node a stopped: ${after.filter((answer) => answer.status === 200).length} of 10 answered, all by ${[...new Set(after.map((answer) => answer.node))].join(', ')}`,
)

assert.deepEqual([...before].sort(), ['a', 'b'])
assert.ok(after.every((answer) => answer.status === 200 && answer.node === 'b'))
app.closeAllConnections()
await new Promise<void>((resolve) => app.close(() => resolve()))
await gateway.close()
console.log('ok')
