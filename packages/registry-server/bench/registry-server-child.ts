/** The registry under load, in its own process so the load generator does not share its event loop. */
import { createRegistry } from '@llmesh/registry-server'

const [database = ':memory:'] = process.argv.slice(2)
const registry = createRegistry({ database, adminToken: 'bench-admin' })
const { url } = await registry.listen()
console.log(JSON.stringify({ url }))
process.on('SIGTERM', async () => {
  await registry.close()
  process.exit(0)
})
