/**
 * Run a node operator's node from a config file: a registry, then `llmesh node --config`, which
 * pulls the model from a signed catalog, smoke-tests it, serves it, seeds it over libp2p and
 * registers; the example checks the registry sees it ready and that it answers.
 *
 *   pnpm --filter @llmesh/example-node-from-config example
 */
import { strict as assert } from 'node:assert'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { type CommandIo, run } from '@llmesh/cli'
import {
  createManifest,
  exportPublicKeyPem,
  generateSigningKey,
  signCatalog,
} from '@llmesh/manifest'
import { createRegistryClient } from '@llmesh/registry-client'
import { createRegistry } from '@llmesh/registry-server'
import { createTempDir, startMirror, writeTinyGguf } from '@llmesh/testkit'

await using folder = await createTempDir('llmesh-example-node-')
const at = (name: string) => join(folder.path, name)

// What a publisher provides: a model on a mirror, a signed catalog, the public key.
const model = await writeTinyGguf(at('tiny.gguf'), { seed: 77 })
await using mirror = await startMirror({ files: { '/tiny.gguf': model.path } })
const key = generateSigningKey()
await writeFile(at('release.public.pem'), exportPublicKeyPem(key))
const { manifest } = await createManifest({
  files: [{ file: model.path, path: 'tiny.gguf', mirrors: [`${mirror.url}/tiny.gguf`] }],
  manifest: { id: 'acme/tiny', version: '1.0.0', license: { id: 'mit' } },
  allowInsecureMirrors: true,
})
await writeFile(
  at('catalog.json'),
  JSON.stringify(
    signCatalog({ schemaVersion: 1, models: [manifest] }, key, { allowInsecureMirrors: true }),
  ),
)

// What the network runs: a registry, and a credential for this node.
const registry = createRegistry({
  database: ':memory:',
  adminToken: 'admin',
  heartbeatIntervalMs: 250,
})
const registryServer = await registry.listen()
const admin = createRegistryClient({ urls: [registryServer.url], token: 'admin' })
const { token } = await admin.createCredential({ name: 'node-1', role: 'node', nodeId: 'node-1' })

// The operator's file.
await writeFile(
  at('node.yaml'),
  `store: ./store
models: [acme/tiny]
catalogs: [./catalog.json]
trustedKeys: [release.public.pem]
allowInsecureMirrors: true
server: { port: 0, slots: 2 }
inference: { threads: 1 }
registry: { urls: ["${registryServer.url}"], token: "${token}", nodeId: node-1, heartbeatIntervalMs: 250 }
p2p: { listen: ["/ip4/127.0.0.1/tcp/0"] }
`,
)

const stop = new AbortController()
let announce: (url: string) => void = () => {}
const ready = new Promise<string>((resolve) => {
  announce = resolve
})
let output = ''
const io: CommandIo = {
  stdout: (text) => {
    output += text
    for (const line of text.trim().split('\n'))
      if (line.startsWith('{"event":"ready"')) announce(JSON.parse(line).url)
  },
  stderr: (text) => process.stderr.write(text),
  interactive: false,
}
const node = run(['node', '--config', at('node.yaml'), '--json'], { io, signal: stop.signal })
const url = await Promise.race([
  ready,
  node.then((code) => Promise.reject(new Error(`node exited ${code}: ${output}`))),
])
console.log(`node serving on ${url}`)

let state: string | undefined
for (let attempt = 0; attempt < 100 && state !== 'ready'; attempt++) {
  state = (await admin.listNodes({}))[0]?.state
  if (state !== 'ready') await new Promise((resolve) => setTimeout(resolve, 50))
}
console.log(`registry sees node-1 as ${state}`)
const answer = await fetch(`${url}/v1/chat/completions`, {
  method: 'POST',
  headers: { 'content-type': 'application/json' },
  body: JSON.stringify({
    model: 'acme/tiny',
    messages: [{ role: 'user', content: 'hello' }],
    max_tokens: 4,
  }),
})
console.log(`chat: ${answer.status}`)

assert.equal(state, 'ready')
assert.equal(answer.status, 200)
stop.abort()
assert.equal(await node, 0)
await registryServer.close()
await registry.close()
console.log('ok')
