/**
 * Pre-cache a catalog, then promote and roll back a model version: a signed catalog requires two
 * versions of a model; `precache` pulls both (every piece verified); each passes its smoke test
 * and is marked healthy; 1.0.0 goes to production, then 2.0.0 replaces it, then a rollback puts
 * 1.0.0, the last known good version, back.
 *
 *   pnpm --filter @llmesh/example-precache-and-promote example
 */
import { strict as assert } from 'node:assert'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { createDownloader, fetchCatalog, ModelStore, precache } from '@llmesh/downloader'
import {
  createInferenceEngine,
  createModelPool,
  runSmokeTest,
  storeModelResolver,
} from '@llmesh/inference'
import {
  addRelease,
  createManifest,
  createReleaseHistory,
  generateSigningKey,
  importTrustedKey,
  markHealth,
  production,
  promote,
  rollback,
  signCatalog,
} from '@llmesh/manifest'
import { createTempDir, startMirror, writeTinyGguf } from '@llmesh/testkit'

await using folder = await createTempDir('llmesh-example-precache-')
const versions = ['1.0.0', '2.0.0']
const files: Record<string, string> = {}
for (const version of versions)
  files[`/tiny-${version}.gguf`] = (
    await writeTinyGguf(join(folder.path, `tiny-${version}.gguf`), { seed: Number(version[0]) })
  ).path
await using mirror = await startMirror({ files })
const manifests = []
for (const version of versions) {
  const { manifest } = await createManifest({
    files: [
      {
        file: files[`/tiny-${version}.gguf`]!,
        path: 'tiny.gguf',
        mirrors: [`${mirror.url}/tiny-${version}.gguf`],
      },
    ],
    manifest: {
      id: 'example/tiny',
      version,
      license: { id: 'mit' },
      smokeTest: { prompt: 'hello', maxTokens: 4, maxSeconds: 30, expect: { minTokens: 4 } },
    },
    allowInsecureMirrors: true,
  })
  manifests.push(manifest)
}
const key = generateSigningKey()
const catalog = signCatalog(
  { schemaVersion: 1, models: manifests, required: ['example/tiny@1.0.0', 'example/tiny@2.0.0'] },
  key,
  { allowInsecureMirrors: true },
)
const catalogPath = join(folder.path, 'catalog.json')
await writeFile(catalogPath, JSON.stringify(catalog))

// Pre-cache: the catalog must be signed by the trusted key.
const fetched = await fetchCatalog([catalogPath], {
  trustedKeys: [importTrustedKey(key.publicKey)],
  allowInsecureMirrors: true,
})
const store = await ModelStore.open({ root: join(folder.path, 'store') })
const downloader = createDownloader({ store, allowInsecureMirrors: true })
const cached = await precache(downloader, fetched.catalog)
await downloader.close()
console.log(
  `pre-cached ${cached.pulled.map((model) => `${model.id}@${model.version}`).join(', ')} (signed by ${fetched.keyId})`,
)

// Smoke tests decide health; health gates production.
const engine = await createInferenceEngine({ threads: 1 })
const pool = createModelPool({ engine, resolve: storeModelResolver(store) })
let releases = createReleaseHistory('example/tiny')
for (const version of versions) {
  releases = addRelease(releases, version)
  const smoke = await runSmokeTest({ pool, store, model: `example/tiny@${version}` })
  releases = markHealth(releases, version, smoke.passed)
  console.log(
    `example/tiny@${version}: smoke test ${smoke.passed ? 'passed' : `failed (${smoke.reason})`}`,
  )
}
await pool.close()
await engine.dispose()

releases = promote(promote(releases, '1.0.0'), '1.0.0')
console.log(`production: ${production(releases)?.version}`)
releases = promote(promote(releases, '2.0.0'), '2.0.0')
console.log(`production: ${production(releases)?.version} (1.0.0 is known good)`)
releases = rollback(releases, { reason: 'errors after the upgrade' })
console.log(`rolled back; production: ${production(releases)?.version}`)
console.log(
  releases.history
    .map(
      (event) =>
        `${event.action} ${event.version}${event.to === undefined ? '' : ` → ${event.to}`}`,
    )
    .join('; '),
)

assert.equal(cached.failed.length, 0)
assert.equal(production(releases)?.version, '1.0.0')
assert.equal(store.resolve('example/tiny@2.0.0').status, 'available')
store.close()
console.log('ok')
