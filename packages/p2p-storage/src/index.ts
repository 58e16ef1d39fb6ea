/**
 * @packageDocumentation
 * Peers share model blobs over libp2p: a node serves the complete blobs of its store and the
 * verified pieces of what it is downloading; a download takes pieces from several peers at once,
 * checks every one against the manifest's piece index, and bans a peer on its first lie.
 *
 * @example
 * ```ts
 * import { createPeerNode, downloadFromPeers } from '@llmesh/p2p-storage'
 *
 * const node = await createPeerNode({ store }) // seeds every blob of the store
 * const result = await downloadFromPeers({
 *   node,
 *   peers: [seedAddress, otherSeedAddress],
 *   pieceIndex, // from the manifest's piece index: the root of trust
 *   path: './model.gguf',
 * })
 * console.log(result.piecesByPeer, result.banned)
 * ```
 */
export { Bitfield } from './bitfield.js'
export { type BlobProvider, type ServedBlob, StoreBlobProvider } from './blob-provider.js'
export { PeerError, type PeerErrorCode } from './errors.js'
export {
  createPeerNode,
  createPrivateNetworkKey,
  DHT_PROTOCOL,
  digestCid,
  isMultiaddrText,
  type PeerAddress,
  type PeerHave,
  PeerNode,
  type PeerNodeOptions,
  parsePeerAddress,
  peerIdOf,
} from './peer-node.js'
export { PeerByteSource, type PeerByteSourceOptions } from './peer-source.js'
export { HAVE_PROTOCOL, PIECE_PROTOCOL } from './protocol.js'
export {
  downloadFromPeers,
  type SwarmDownloadOptions,
  type SwarmDownloadResult,
  type SwarmProgressEvent,
} from './swarm-download.js'
