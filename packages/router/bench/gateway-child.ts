/** The gateway in a process of its own, over the nodes given as JSON; sends its URL over IPC. */
import { createGateway, staticNodeSource } from '@llmesh/router'

const nodes = JSON.parse(process.argv[2]!)
const gateway = createGateway({
  nodes: staticNodeSource(nodes),
  firstTokenTimeoutMs: 5_000,
  idleTimeoutMs: 5_000,
})
const { url } = await gateway.listen()
process.send!({ url })
process.on('disconnect', () => process.exit(0))
