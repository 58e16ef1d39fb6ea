/** Helpers shared by this package's tests: a store holding a testkit model pulled the real way. */
import { join } from 'node:path'
import { createDownloader, FileSource, type ModelStore } from '@llmesh/downloader'
import { createManifest } from '@llmesh/manifest'
import { type TinyModelOptions, writeTinyGguf } from '@llmesh/testkit'

/** Writes a tiny model, makes its manifest and pulls it into `store` from the local file. */
export async function pullTinyModel(
  store: ModelStore,
  directory: string,
  {
    id,
    version = '1.0.0',
    model = {},
    manifest = {},
  }: {
    id: string
    version?: string
    model?: TinyModelOptions
    manifest?: Partial<Parameters<typeof createManifest>[0]['manifest']>
  },
) {
  const file = join(directory, `${id.replace('/', '_')}-${version}.gguf`)
  await writeTinyGguf(file, model)
  const created = await createManifest({
    files: [{ file, path: 'model.gguf' }],
    manifest: { id, version, license: { id: 'mit' }, ...manifest },
  })
  const downloader = createDownloader({ store })
  try {
    await downloader.pull(created.manifest, {
      pieceIndexes: created.pieceIndexes,
      sources: [new FileSource(file)],
    })
  } finally {
    await downloader.close()
  }
  return created.manifest
}
