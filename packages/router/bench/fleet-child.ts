/**
 * Mock nodes in a process of their own, driven over IPC by the benchmark: `stop` (the node's
 * connections are destroyed and new ones refused, as after a kill), `start`, `faults`.
 *
 *   fork('fleet-child.ts', [JSON.stringify({ count, options })])
 */
import {
  type MockNode,
  type MockNodeFaults,
  type MockNodeOptions,
  startMockNode,
} from '@llmesh/testkit'

const { count, options } = JSON.parse(process.argv[2]!) as {
  count: number
  options: MockNodeOptions
}
const nodes: MockNode[] = []
for (let index = 0; index < count; index++)
  nodes.push(await startMockNode({ ...options, name: `node-${index}` }))
process.send!({ urls: nodes.map((node) => node.url) })
process.on(
  'message',
  async (message: {
    id: number
    command: 'stop' | 'start' | 'faults'
    index: number
    faults?: MockNodeFaults
  }) => {
    const node = nodes[message.index]!
    if (message.command === 'stop') await node.stop()
    else if (message.command === 'start') await node.start()
    else node.setFaults(message.faults ?? {})
    process.send!({ id: message.id })
  },
)
process.on('disconnect', () => process.exit(0))
