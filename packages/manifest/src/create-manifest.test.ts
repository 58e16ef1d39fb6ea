import { createHash, randomBytes } from 'node:crypto'
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type CreateManifestProgressEvent, createManifest } from './create-manifest.js'
import { ManifestError } from './manifest-error.js'
import { parseManifest } from './parse.js'

let folder: string
const model = randomBytes(3 * 1024 * 1024 + 123)
const config = Buffer.from('{"hello":"world"}')

beforeAll(async () => {
  folder = await mkdtemp(join(tmpdir(), 'llmesh-create-manifest-'))
  await mkdir(join(folder, 'model', 'sub'), { recursive: true })
  await writeFile(join(folder, 'model', 'tiny.gguf'), model)
  await writeFile(join(folder, 'model', 'sub', 'config.json'), config)
  await writeFile(join(folder, 'model', '.DS_Store'), 'junk')
  await writeFile(join(folder, 'empty.bin'), '')
  await symlink(join(folder, 'model', 'tiny.gguf'), join(folder, 'model', 'linked.gguf'))
})
afterAll(() => rm(folder, { recursive: true, force: true }))

const sha256 = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex')
const basics = { id: 'acme/tiny', version: '1.0.0', license: { id: 'apache-2.0' } }

describe('createManifest', () => {
  it('hashes each file once into its sha256 and piece hashes, producing a valid manifest', async () => {
    const events: CreateManifestProgressEvent[] = []
    const { manifest, pieceIndexes } = await createManifest({
      files: [join(folder, 'model', 'tiny.gguf')],
      manifest: basics,
      pieceSize: 64 * 1024,
      onProgress: (event) => events.push(event),
    })
    expect(parseManifest(manifest)).toEqual(manifest)
    expect(manifest.profile).toBe('gguf')
    expect(manifest.entrypoint).toEqual({ artifact: 'tiny.gguf' })
    const [artifact] = manifest.artifacts
    expect(artifact).toMatchObject({
      path: 'tiny.gguf',
      size: model.byteLength,
      sha256: sha256(model),
      mediaType: 'application/vnd.gguf',
    })
    const [index] = pieceIndexes
    expect(index!.count).toBe(Math.ceil(model.byteLength / (64 * 1024)))
    expect(() => index!.assertMatches(artifact!)).not.toThrow()
    for (let piece = 0; piece < index!.count; piece++) {
      const { start, end } = index!.range(piece)
      expect(index!.verifyPiece(piece, model.subarray(start, end))).toBe(true)
    }
    const progress = events.filter((event) => event.type === 'manifest:hash-progress')
    expect(progress.length).toBeGreaterThan(0)
    const last = progress.at(-1)!.detail as { bytesHashed: number; totalBytes: number }
    expect(last.bytesHashed).toBe(model.byteLength)
    expect(events.at(-1)).toMatchObject({
      type: 'manifest:file-hashed',
      detail: { sha256: sha256(model) },
    })
  })

  it('walks a folder recursively, follows links and skips dot-files', async () => {
    const { manifest } = await createManifest({ folder: join(folder, 'model'), manifest: basics })
    expect(manifest.artifacts.map((artifact) => artifact.path)).toEqual([
      'linked.gguf',
      'sub/config.json',
      'tiny.gguf',
    ])
    expect(manifest.artifacts[1]).toMatchObject({
      sha256: sha256(config),
      mediaType: 'application/json',
    })
    expect(manifest.artifacts[0]!.sha256).toBe(manifest.artifacts[2]!.sha256)
  })

  it('handles an empty file', async () => {
    const { manifest, pieceIndexes } = await createManifest({
      files: [join(folder, 'empty.bin')],
      manifest: basics,
    })
    expect(manifest.profile).toBe('custom')
    expect(manifest.artifacts[0]).toMatchObject({ size: 0, sha256: sha256(new Uint8Array()) })
    expect(pieceIndexes[0]!.count).toBe(0)
  })

  it('rejects an unsafe artifact path before reading anything', async () => {
    await expect(
      createManifest({
        files: [{ file: join(folder, 'empty.bin'), path: '../outside.bin' }],
        manifest: basics,
      }),
    ).rejects.toSatisfy(
      (error) =>
        ManifestError.isInstance(error) &&
        (error as ManifestError).issues[0]!.path === 'files[0].path',
    )
  })

  it('stops when the signal aborts', async () => {
    const controller = new AbortController()
    controller.abort(new Error('cancelled by user'))
    await expect(
      createManifest({
        files: [join(folder, 'model', 'tiny.gguf')],
        manifest: basics,
        signal: controller.signal,
        pieceSize: 1024,
      }),
    ).rejects.toThrow('cancelled by user')
  })

  it('validates the other fields like any manifest', async () => {
    await expect(
      createManifest({
        files: [join(folder, 'empty.bin')],
        manifest: { ...basics, version: 'latest' },
      }),
    ).rejects.toSatisfy(
      (error) =>
        ManifestError.isInstance(error) && (error as ManifestError).issues[0]!.path === 'version',
    )
  })
})
