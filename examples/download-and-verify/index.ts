/**
 * Download a model with a progress bar and verify it: a manifest with per-piece hashes, a mirror,
 * a pull into a store (every piece and the whole file checked), then `verify` on the store.
 *
 *   pnpm --filter @llmesh/example-download-and-verify example
 */
import { strict as assert } from 'node:assert'
import { join } from 'node:path'
import { createDownloader, type DownloadProgressEvent, ModelStore } from '@llmesh/downloader'
import { createManifest } from '@llmesh/manifest'
import { createTempDir, startMirror, writeTinyGguf } from '@llmesh/testkit'

await using folder = await createTempDir('llmesh-example-download-')
const model = await writeTinyGguf(join(folder.path, 'model.gguf'), {
  type: 'f16',
  vocabularySize: 4096,
  embeddingLength: 256,
})
await using mirror = await startMirror({
  files: { '/model.gguf': model.path },
  bytesPerSecondPerConnection: 2_000_000,
})
const { manifest, pieceIndexes } = await createManifest({
  files: [{ file: model.path, path: 'model.gguf', mirrors: [`${mirror.url}/model.gguf`] }],
  manifest: { id: 'example/tiny', version: '1.0.0', license: { id: 'mit' } },
  pieceSize: 64 * 1024,
  allowInsecureMirrors: true,
})

const store = await ModelStore.open({ root: join(folder.path, 'store') })
const downloader = createDownloader({ store, allowInsecureMirrors: true })
const bar = (done: number, total: number) => {
  const width = 30
  const filled = Math.round((done / total) * width)
  return `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${((done / total) * 100).toFixed(0).padStart(3)} %`
}
const result = await downloader.pull(manifest, {
  pieceIndexes,
  onProgress: (event: DownloadProgressEvent) => {
    if (event.type === 'download:progress')
      process.stderr.write(`\r${bar(event.detail.verifiedBytes, event.detail.totalBytes)}`)
  },
})
process.stderr.write('\n')
const file = result.files[0]!
console.log(
  `pulled ${result.id}@${result.version}: ${file.size} bytes, verified by ${file.verification}`,
)

const report = await store.verify()
console.log(`store verify: ${report.damaged.length} damaged blob(s)`)

assert.equal(file.sha256, model.sha256)
assert.equal(file.verification, 'pieces+sha256')
assert.equal(report.damaged.length, 0)
await downloader.close()
store.close()
console.log('ok')
