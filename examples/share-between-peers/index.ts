/**
 * Share a model between two peers: peer A seeds a blob, peer B downloads it over libp2p,
 * checking every piece against the piece index from the manifest, then seeds it in turn.
 *
 *   pnpm --filter @llmesh/example-share-between-peers example
 */
import { strict as assert } from 'node:assert'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { createManifest } from '@llmesh/manifest'
import { Bitfield, createPeerNode, downloadFromPeers } from '@llmesh/p2p-storage'
import { createTempDir, writeTinyGguf } from '@llmesh/testkit'

await using folder = await createTempDir('llmesh-example-share-')
const model = await writeTinyGguf(join(folder.path, 'model.gguf'), {
  type: 'f16',
  vocabularySize: 4096,
  embeddingLength: 256,
})
const { pieceIndexes } = await createManifest({
  files: [{ file: model.path, path: 'model.gguf' }],
  manifest: { id: 'example/shared', version: '1.0.0', license: { id: 'mit' } },
  pieceSize: 64 * 1024,
})
const pieceIndex = pieceIndexes[0]!

const peerA = await createPeerNode()
const pieces = Math.ceil(pieceIndex.size / pieceIndex.pieceSize)
peerA.provider.serve(pieceIndex.sha256, {
  size: pieceIndex.size,
  pieceSize: pieceIndex.pieceSize,
  have: Bitfield.full(pieces),
  path: model.path,
})
console.log(`peer A ${peerA.peerId} seeds ${pieceIndex.sha256.slice(0, 12)}… (${pieces} pieces)`)

const peerB = await createPeerNode()
const target = join(folder.path, 'downloaded.gguf')
const result = await downloadFromPeers({
  node: peerB,
  peers: [peerA.addresses],
  pieceIndex,
  path: target,
})
console.log(
  `peer B got ${Object.values(result.piecesByPeer).reduce((sum, count) => sum + count, 0)} pieces, every one verified; banned: ${result.banned.length}`,
)

// Peer B now serves the file to others.
const peerC = await createPeerNode()
const fromB = await peerC.have(peerB.addresses, pieceIndex.sha256)
console.log(`peer C sees peer B holding ${fromB.have.count} of ${pieces} pieces`)

assert.deepEqual(await readFile(target), await readFile(model.path))
assert.equal(fromB.have.count, pieces)
for (const peer of [peerA, peerB, peerC]) await peer.stop()
console.log('ok')
