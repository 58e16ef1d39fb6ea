/**
 * One `pull` in its own process, so a benchmark times it like curl or aria2c (process start
 * included) and reads its peak memory. Arguments: the store folder, the manifest, and a JSON
 * object of downloader options.
 */
import { createDownloader, ModelStore, tuneHeapForTransfers } from '@llmesh/downloader'

// As the llmesh CLI does at startup.
tuneHeapForTransfers()

const [root, manifest, optionsJson = '{}'] = process.argv.slice(2)
if (root === undefined || manifest === undefined)
  throw new Error('usage: pull-child.ts <store> <manifest> [options-json]')
const store = await ModelStore.open({ root })
const downloader = createDownloader({
  store,
  allowInsecureMirrors: true,
  ...JSON.parse(optionsJson),
})
const result = await downloader.pull(manifest)
await downloader.close()
store.close()
const file = result.files[0]!
console.log(
  JSON.stringify({
    sha256: file.sha256,
    verification: file.verification,
    bySource: file.bySource,
    maxRssBytes: process.resourceUsage().maxRSS * 1024,
  }),
)
