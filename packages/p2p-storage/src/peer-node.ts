/**
 * A libp2p node that serves blobs to peers and asks peers for theirs.
 *
 * TCP, TLS (first: it measured about 35 % faster than Noise here) and Noise, yamux, identify;
 * bootstrap peers and mDNS for discovery on a LAN; an optional private network key (libp2p's
 * pre-shared key protector) so that a community keeps its swarm closed; a persistent identity.
 * Uploads are bounded: concurrent piece requests (past the cap a peer is told "busy"), and token
 * buckets for the bytes sent, over all peers and per peer.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { bootstrap } from '@libp2p/bootstrap'
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys'
import { identify } from '@libp2p/identify'
import type { Connection, PeerId, PrivateKey, Stream } from '@libp2p/interface'
import { type KadDHT, kadDHT, passthroughMapper } from '@libp2p/kad-dht'
import { mdns } from '@libp2p/mdns'
import { ping } from '@libp2p/ping'
import { generateKey, preSharedKey } from '@libp2p/pnet'
import { tcp } from '@libp2p/tcp'
import { tls } from '@libp2p/tls'
import type { LengthPrefixedStream } from '@libp2p/utils'
import {
  createLogger,
  InvalidArgumentError,
  type Logger,
  type PartialBlob,
  type PartialBlobSink,
  parseArgument,
  sleep,
} from '@llmesh/core'
import { type ModelStore, TokenBucket } from '@llmesh/downloader'
import { pieceCount } from '@llmesh/manifest'
import { isMultiaddr, type Multiaddr, multiaddr } from '@multiformats/multiaddr'
import { createLibp2p, type Libp2p } from 'libp2p'
import { CID } from 'multiformats/cid'
import * as Digest from 'multiformats/hashes/digest'
import { z } from 'zod'
import { Bitfield } from './bitfield.js'
import { type ServedBlob, StoreBlobProvider } from './blob-provider.js'
import { PeerError } from './errors.js'
import { positiveOrUnlimited, timerMs } from './option-schemas.js'
import {
  encodeJson,
  errorAnswer,
  HAVE_PROTOCOL,
  HAVE_UPDATE_DELAY_MS,
  haveAnswerSchema,
  haveRequestSchema,
  haveUpdateSchema,
  MAX_MESSAGE_BYTES,
  MAX_REQUEST_BYTES,
  messageStream,
  PIECE_PART_BYTES,
  PIECE_PROTOCOL,
  pieceAnswerSchema,
  pieceRequestSchema,
  writePiece,
} from './protocol.js'
import { SuperSeeding } from './super-seeding.js'

/** After a dial the peer reset, the wait before the one redial: libp2p's rate window is a second. */
const REDIAL_AFTER_RESET_MS = 1_000
/** Spreads the redials of peers that were refused together. */
const REDIAL_JITTER_MS = 250

/** A stream and its length-prefixed reader and writer. */
interface Channel {
  stream: Stream
  messages: LengthPrefixedStream<Stream>
}

/** Piece streams kept per peer for later requests, at most (a download keeps 16 in flight). */
const MAX_KEPT_PIECE_STREAMS = 32

export interface PeerNodeOptions {
  /** The store whose complete blobs this node seeds; its identity lives there too. */
  store?: ModelStore
  /** What to serve; default the store's blobs plus the downloads this node runs. */
  provider?: StoreBlobProvider
  /** Where the node's private key is kept; default `<store>/peer-identity.key`, else a fresh key. */
  identityPath?: string
  /** Default `['/ip4/127.0.0.1/tcp/0']`. */
  listen?: string[]
  /** Order of preference; default `['tls', 'noise']`. */
  encryption?: Array<'tls' | 'noise'>
  /** A swarm key (`createPrivateNetworkKey()`): only peers with the same key can connect. */
  privateNetworkKey?: Uint8Array
  /** Peers to connect to at start (multiaddrs with `/p2p/<id>`). */
  bootstrap?: string[]
  /** Find peers on the LAN by mDNS; default false. */
  mdns?: boolean
  /**
   * Join the Kademlia DHT (under llmesh's own protocol id), to announce the digests this node
   * serves and find who serves one; default true. Announcing is one record per blob, never per
   * piece.
   */
  dht?: boolean
  /**
   * Super-seeding (see `SuperSeeding`): of a blob this node held whole when first asked for it,
   * send every piece once before any piece to a second peer, redirecting the askers that take a
   * redirect (swarm downloads) to pieces sent to no one yet. Default true.
   */
  superSeeding?: boolean
  limits?: {
    /** Piece requests served at once; past it, `busy`. Default 32. */
    concurrentUploads?: number
    /**
     * How long a piece may take to be sent (the asker reading it) before its stream ends and its
     * upload slot frees; default 60 s, twice the time a download waits for a piece. Without it, a
     * peer that asks and stops reading would hold slots until the node had none for anyone.
     */
    uploadTimeoutMs?: number
    /** Bytes per second sent, over all peers and per peer; unlimited by default. */
    uploadBytesPerSecond?: number
    uploadBytesPerSecondPerPeer?: number
    /** Bytes per second of pieces received, over all peers and per peer; unlimited by default. */
    downloadBytesPerSecond?: number
    downloadBytesPerSecondPerPeer?: number
    /** Connections open at once (libp2p's `maxConnections`); libp2p's default otherwise. */
    maxPeers?: number
    /**
     * New connections accepted per second from one IP address (libp2p's
     * `inboundConnectionThreshold`); past it a connection is refused. Default 5, libp2p's. Raise it
     * where many peers share one address (behind one NAT, or all on one machine).
     */
    connectionsPerHostPerSecond?: number
  }
  logger?: Logger
}

/** Whether `text` reads as a multiaddr, such as `/ip4/192.0.2.7/tcp/4001/p2p/<peer id>`. */
export function isMultiaddrText(text: string): boolean {
  try {
    multiaddr(text)
    return true
  } catch {
    return false
  }
}

/** A multiaddr as text, such as `/ip4/0.0.0.0/tcp/4001`. */
const multiaddrText = z
  .string()
  .refine(isMultiaddrText, { message: 'not a multiaddr such as /ip4/0.0.0.0/tcp/4001' })

/**
 * The addresses and the limits, checked before the node starts: a NaN or a negative limit would not
 * fail, only misbehave, and libp2p would name no option for an address that is no multiaddr.
 */
const peerNodeOptionsSchema = z.object({
  listen: z.array(multiaddrText).optional(),
  bootstrap: z.array(multiaddrText).optional(),
  superSeeding: z.boolean().optional(),
  limits: z
    .object({
      concurrentUploads: z.number().int().positive().optional(),
      uploadTimeoutMs: timerMs.optional(),
      uploadBytesPerSecond: positiveOrUnlimited.optional(),
      uploadBytesPerSecondPerPeer: positiveOrUnlimited.optional(),
      downloadBytesPerSecond: positiveOrUnlimited.optional(),
      downloadBytesPerSecondPerPeer: positiveOrUnlimited.optional(),
      maxPeers: z.number().int().positive().optional(),
      connectionsPerHostPerSecond: positiveOrUnlimited.optional(),
    })
    .optional(),
})

/** A peer: its id (when libp2p knows its addresses), its multiaddrs, or one multiaddr as text. */
export type PeerAddress = PeerId | Multiaddr | Multiaddr[] | string

export interface PeerHave {
  size: number
  pieceSize: number
  have: Bitfield
}

export class PeerNode {
  /** Bytes sent to each peer (by peer id). */
  readonly uploaded = new Map<string, number>()
  private uploadsRunning = 0
  private readonly uploads: Bandwidth
  private readonly downloads: Bandwidth
  /** Piece streams that delivered their piece, kept for the next request (by peer id). */
  private readonly pieceStreams = new Map<string, Channel[]>()
  /** Per served blob: its super-seeding, or null for a blob that was partial when first asked for. */
  private readonly superSeeding = new WeakMap<ServedBlob, SuperSeeding | null>()

  private constructor(
    readonly libp2p: Libp2p,
    readonly provider: StoreBlobProvider,
    private readonly options: PeerNodeOptions,
    private readonly log: Logger,
  ) {
    const limits = options.limits ?? {}
    this.uploads = new Bandwidth(limits.uploadBytesPerSecond, limits.uploadBytesPerSecondPerPeer)
    this.downloads = new Bandwidth(
      limits.downloadBytesPerSecond,
      limits.downloadBytesPerSecondPerPeer,
    )
    libp2p.addEventListener('peer:disconnect', (event) => {
      this.uploads.forget(event.detail.toString())
      this.downloads.forget(event.detail.toString())
      this.pieceStreams.delete(event.detail.toString())
    })
  }

  /** @internal use `createPeerNode`. */
  static async start(options: PeerNodeOptions = {}): Promise<PeerNode> {
    parseArgument(peerNodeOptionsSchema, options, 'options')
    const log = options.logger ?? createLogger('p2p')
    const privateKey = await loadIdentity(
      options.identityPath ??
        (options.store === undefined ? undefined : join(options.store.root, 'peer-identity.key')),
    )
    const encrypters = (options.encryption ?? ['tls', 'noise']).map((name) =>
      name === 'tls' ? tls() : noise(),
    )
    const libp2p = await createLibp2p({
      privateKey,
      addresses: { listen: options.listen ?? ['/ip4/127.0.0.1/tcp/0'] },
      transports: [tcp()],
      connectionEncrypters: encrypters,
      connectionManager: {
        ...(options.limits?.maxPeers === undefined
          ? {}
          : { maxConnections: options.limits.maxPeers }),
        ...(options.limits?.connectionsPerHostPerSecond === undefined
          ? {}
          : { inboundConnectionThreshold: options.limits.connectionsPerHostPerSecond }),
      },
      // A piece (1 MiB or more) fits one stream window, so a request needs no window-update round trips.
      streamMuxers: [
        yamux({
          streamOptions: {
            initialStreamWindowSize: 4 * 1024 * 1024,
            maxStreamWindowSize: 16 * 1024 * 1024,
          },
        }),
      ],
      ...(options.privateNetworkKey === undefined
        ? {}
        : { connectionProtector: preSharedKey({ psk: options.privateNetworkKey }) }),
      peerDiscovery: [
        ...(options.bootstrap === undefined || options.bootstrap.length === 0
          ? []
          : [bootstrap({ list: options.bootstrap })]),
        ...(options.mdns ? [mdns()] : []),
      ],
      services: {
        identify: identify(),
        ping: ping(),
        ...(options.dht === false
          ? {}
          : {
              dht: kadDHT({
                protocol: DHT_PROTOCOL,
                clientMode: false,
                // Keep private addresses: a community network often lives on one LAN.
                peerInfoMapper: passthroughMapper,
              }),
            }),
      },
    })
    const node = new PeerNode(
      libp2p,
      options.provider ?? new StoreBlobProvider(options.store),
      options,
      log,
    )
    await libp2p.handle(HAVE_PROTOCOL, (stream) => node.answerHave(stream))
    await libp2p.handle(
      PIECE_PROTOCOL,
      (stream, connection) => node.answerPiece(stream, connection),
      {
        maxInboundStreams: 256,
      },
    )
    log('peer %s listening on %s', libp2p.peerId.toString(), libp2p.getMultiaddrs().join(', '))
    // Every blob of the store is announced in the background: the DHT may still be filling.
    if (options.dht !== false && options.store !== undefined)
      void node.provider
        .digests()
        .then((digests) =>
          Promise.all(
            digests.map((digest) =>
              node
                .announce(digest)
                .catch((error: unknown) => log('announcing %s failed: %s', digest, String(error))),
            ),
          ),
        )
    return node
  }

  get peerId(): PeerId {
    return this.libp2p.peerId
  }

  get addresses(): Multiaddr[] {
    return this.libp2p.getMultiaddrs()
  }

  /**
   * Serves the verified pieces of a download of this node's store while it runs, and tells the
   * DHT: pass it to the downloader, `createDownloader({ store, sharePartial: (blob) =>
   * node.sharePartial(blob) })`, so that nodes pulling the same model at once feed each other.
   * Peers watching the blob's piece list hear of each piece as it is verified.
   */
  sharePartial(blob: PartialBlob): PartialBlobSink {
    const have = new Bitfield(pieceCount(blob.size, blob.pieceSize))
    const stop = this.provider.serve(blob.sha256, {
      size: blob.size,
      pieceSize: blob.pieceSize,
      have,
      path: blob.path,
    })
    void this.announce(blob.sha256).catch(() => {})
    return { pieceVerified: (index) => have.set(index), end: stop }
  }

  /** Tells the DHT that this node serves `digest` (one provider record per blob). */
  async announce(digest: string, options: { signal?: AbortSignal } = {}): Promise<void> {
    if (this.dht() === undefined) return
    // An announcement into an empty routing table would wait for peers; it gives up after a minute.
    const signal = AbortSignal.any([
      AbortSignal.timeout(60_000),
      ...(options.signal === undefined ? [] : [options.signal]),
    ])
    await this.libp2p.contentRouting.provide(digestCid(digest), { signal })
  }

  /** Peers the DHT knows to serve `digest`, as addresses to download from. */
  async findPeers(
    digest: string,
    options: { signal?: AbortSignal; limit?: number } = {},
  ): Promise<Multiaddr[][]> {
    const found: Multiaddr[][] = []
    for await (const provider of this.libp2p.contentRouting.findProviders(
      digestCid(digest),
      options,
    )) {
      if (provider.id.equals(this.peerId)) continue
      const unique = new Map<string, Multiaddr>()
      for (const address of provider.multiaddrs) {
        const full = address.getComponents().some((component) => component.name === 'p2p')
          ? address
          : address.encapsulate(`/p2p/${provider.id.toString()}`)
        unique.set(full.toString(), full)
      }
      const addresses = [...unique.values()]
      if (addresses.length > 0) found.push(addresses)
      if (found.length >= (options.limit ?? 20)) break
    }
    return found
  }

  private dht(): KadDHT | undefined {
    return (this.libp2p.services as { dht?: KadDHT }).dht
  }

  /** The pieces of `digest` a peer holds (verified ones, by its account). */
  async have(
    peer: PeerAddress,
    digest: string,
    options: { signal?: AbortSignal } = {},
  ): Promise<PeerHave> {
    const { answer, stream } = await this.askHave(peer, { digest }, options)
    await stream.close().catch(() => stream.abort(new Error('closed')))
    return {
      size: answer.size,
      pieceSize: answer.pieceSize,
      have: Bitfield.fromBase64(Math.ceil(answer.size / answer.pieceSize), answer.bitfield),
    }
  }

  /**
   * The pieces of `digest` a peer holds, kept current: yields the peer's list when it answers, then
   * again (the same `have`, updated) each time the peer pushes the pieces it verified since. Ends
   * when the peer holds every piece or ends the stream; `signal` stops it.
   */
  async *watchHave(
    peer: PeerAddress,
    digest: string,
    options: { signal?: AbortSignal } = {},
  ): AsyncGenerator<PeerHave> {
    const { answer, stream, messages } = await this.askHave(peer, { digest, watch: true }, options)
    try {
      const pieces = Math.ceil(answer.size / answer.pieceSize)
      const current = {
        size: answer.size,
        pieceSize: answer.pieceSize,
        have: Bitfield.fromBase64(pieces, answer.bitfield),
      }
      yield current
      while (!current.have.complete) {
        let message: Awaited<ReturnType<typeof messages.read>>
        try {
          message = await messages.read(options)
        } catch (error) {
          if (options.signal?.aborted) throw error
          return // the peer ended the stream
        }
        const update = haveUpdateSchema.safeParse(parseJson(message.subarray()))
        if (!update.success || update.data.pieces.some((index) => index >= pieces))
          throw new PeerError({
            code: 'LLMESH_PEER_PROTOCOL',
            message: `a piece update is { pieces: [index, ...] } with indexes below ${pieces}`,
            peer: peerIdOf(peer),
            digest,
          })
        for (const index of update.data.pieces) current.have.set(index)
        yield current
      }
    } finally {
      stream.abort(new Error('no longer watched'))
    }
  }

  /**
   * Piece `index` of `digest` from a peer, unverified: the caller checks it against its piece
   * index. The bytes come in the chunks they arrived in, not joined into one buffer: a piece is
   * hashed and written from them as they are, which spares a copy and a large allocation per piece.
   *
   * A piece stream that delivered its piece is kept for the next request to the same peer, which
   * spares a stream's opening, protocol negotiation (a round trip) and closing per piece.
   */
  async piece(
    peer: PeerAddress,
    digest: string,
    index: number,
    options: {
      signal?: AbortSignal
      /**
       * Take a seed's redirect (super-seeding): it may answer `LLMESH_PEER_SENT_ELSEWHERE` with
       * the error's `suggestedPiece`, a piece it sent to no one yet. Default false.
       */
      redirect?: boolean
    } = {},
  ): Promise<Uint8Array[]> {
    const peerId = peerIdOf(peer)
    let kept = this.takePieceStream(peerId)
    while (true) {
      const channel = kept ?? (await this.openStream(peer, PIECE_PROTOCOL, digest, options))
      let answered = false
      let redirected = false
      try {
        await channel.messages.write(
          encodeJson(options.redirect ? { digest, index, redirect: true } : { digest, index }),
          options,
        )
        const answer = parseAnswer(pieceAnswerSchema, await channel.messages.read(options), peerId)
        answered = true
        if (answer.status === 'error') {
          const refusal = new PeerError({
            code: answer.code,
            message: answer.message,
            peer: peerId,
            digest,
            ...(answer.suggest === undefined ? {} : { suggestedPiece: answer.suggest }),
          })
          // A redirect leaves the stream open for the next request.
          if (answer.code === 'LLMESH_PEER_SENT_ELSEWHERE') {
            redirected = true
            this.keepPieceStream(peerId, channel)
          }
          throw refusal
        }
        // Past the download rate, the piece waits here unread, and so does the next request on
        // this stream: a peer sends only pieces asked for, so the rate holds over time.
        await this.downloads.take(peerId, answer.length, options)
        const bytes = await channel.messages.read(options)
        if (bytes.byteLength !== answer.length)
          throw new PeerError({
            code: 'LLMESH_PEER_PROTOCOL',
            message: `announced ${answer.length} bytes and sent ${bytes.byteLength}`,
            peer: peerId,
            digest,
          })
        this.keepPieceStream(peerId, channel)
        return [...bytes]
      } catch (error) {
        if (!redirected)
          channel.stream.abort(error instanceof Error ? error : new Error(String(error)))
        // A kept stream may have ended meanwhile (the peer restarted, or closed it when idle):
        // the request goes again on a new one.
        if (kept !== undefined && !answered && !options.signal?.aborted) {
          kept = undefined
          continue
        }
        throw error
      }
    }
  }

  private takePieceStream(peerId: string): Channel | undefined {
    const kept = this.pieceStreams.get(peerId)
    while (kept !== undefined && kept.length > 0) {
      const channel = kept.pop()!
      if (channel.stream.status === 'open' && channel.stream.remoteWriteStatus === 'writable')
        return channel
      channel.stream.abort(new Error('ended while kept'))
    }
    return undefined
  }

  private keepPieceStream(peerId: string, channel: Channel): void {
    const kept = this.pieceStreams.get(peerId) ?? []
    this.pieceStreams.set(peerId, kept)
    if (kept.length < MAX_KEPT_PIECE_STREAMS) kept.push(channel)
    else void channel.stream.close().catch(() => {})
  }

  /**
   * Opens a stream of `protocol` to a peer; a failure becomes `LLMESH_PEER_UNREACHABLE`, an
   * address that is no multiaddr `InvalidArgumentError`.
   */
  private async openStream(
    peer: PeerAddress,
    protocol: string,
    digest: string,
    options: { signal?: AbortSignal },
  ): Promise<Channel> {
    const address = dialable(peer)
    let stream: Stream
    try {
      stream = await this.libp2p
        .dialProtocol(address, protocol, options)
        .catch(async (error: unknown) => {
          // A peer refuses a connection by resetting it, before the handshake ends: past its cap on
          // connections, or past its cap on new connections per second from one address (5 by
          // default, which peers behind one NAT or on one machine share). The second clears
          // within a second, so the dial goes again once, after that.
          if (options.signal?.aborted || !resetBeforeConnected(error)) throw error
          this.log('%s reset a dial; dialling again in a second', peerIdOf(peer))
          await sleep(REDIAL_AFTER_RESET_MS + Math.random() * REDIAL_JITTER_MS, options)
          return this.libp2p.dialProtocol(address, protocol, options)
        })
    } catch (error) {
      if (options.signal?.aborted) throw error
      throw new PeerError({
        code: 'LLMESH_PEER_UNREACHABLE',
        message: `could not open ${protocol} to peer ${peerIdOf(peer)}: ${describeDialFailure(error, this.options.privateNetworkKey !== undefined)}`,
        peer: peerIdOf(peer),
        digest,
        cause: error,
      })
    }
    // The read buffer holds a whole message and its length prefix: libp2p's default (4 MiB) would
    // refuse pieces of 4 MiB and more, the default piece size of files over 8 GiB.
    const messages = messageStream(stream, {
      maxDataLength: MAX_MESSAGE_BYTES,
      maxBufferSize: MAX_MESSAGE_BYTES + 16,
    })
    return { stream, messages }
  }

  /** Opens a have stream, sends the request, and reads the answer; a refusal becomes a `PeerError`. */
  private async askHave(
    peer: PeerAddress,
    request: { digest: string; watch?: boolean },
    options: { signal?: AbortSignal },
  ) {
    const { stream, messages } = await this.openStream(peer, HAVE_PROTOCOL, request.digest, options)
    try {
      await messages.write(encodeJson(request), options)
      const answer = parseAnswer(haveAnswerSchema, await messages.read(options), peerIdOf(peer))
      if (answer.status === 'error')
        throw new PeerError({
          code: answer.code,
          message: answer.message,
          peer: peerIdOf(peer),
          digest: request.digest,
        })
      return { answer, stream, messages }
    } catch (error) {
      stream.abort(error instanceof Error ? error : new Error(String(error)))
      throw error
    }
  }

  /** Stops the node; the files it served close with the provider it made (not one it was given). */
  async stop(): Promise<void> {
    await this.libp2p.stop()
    if (this.options.provider === undefined) this.provider.close()
  }

  private async answerHave(stream: Stream): Promise<void> {
    const messages = messageStream(stream, { maxDataLength: MAX_REQUEST_BYTES })
    try {
      const request = haveRequestSchema.safeParse(parseJson((await messages.read()).subarray()))
      const blob = request.success ? await this.provider.lookup(request.data.digest) : undefined
      if (!request.success)
        await messages.write(
          encodeJson(errorAnswer('LLMESH_PEER_PROTOCOL', 'a have request is { digest, watch? }')),
        )
      else if (blob === undefined)
        await messages.write(
          encodeJson(
            errorAnswer(
              'LLMESH_PEER_UNKNOWN_DIGEST',
              `this peer has no blob ${request.data.digest}`,
            ),
          ),
        )
      else if (request.data.watch) await sendHaveAndUpdates(messages, blob)
      else await messages.write(encodeJson(haveAnswer(blob)))
      if (stream.status === 'open') await stream.close()
    } catch (error) {
      stream.abort(error instanceof Error ? error : new Error(String(error)))
    }
  }

  /** Answers the piece requests of one stream, one after another, until the asker closes it. */
  private async answerPiece(stream: Stream, connection: Connection): Promise<void> {
    const messages = messageStream(stream, { maxDataLength: MAX_REQUEST_BYTES })
    const peer = connection.remotePeer.toString()
    const refuse = async (...answer: Parameters<typeof errorAnswer>) => {
      await messages.write(encodeJson(errorAnswer(...answer)))
      await stream.close()
    }
    try {
      while (true) {
        let message: Awaited<ReturnType<typeof messages.read>>
        try {
          message = await messages.read()
        } catch (error) {
          // The asker closed the stream between requests: it is done with it.
          if (stream.remoteWriteStatus !== 'writable') return await stream.close()
          throw error
        }
        const request = pieceRequestSchema.safeParse(parseJson(message.subarray()))
        if (!request.success)
          return await refuse('LLMESH_PEER_PROTOCOL', 'a piece request is { digest, index }')
        const { digest, index, redirect } = request.data
        const blob = await this.provider.lookup(digest)
        if (blob === undefined)
          return await refuse('LLMESH_PEER_UNKNOWN_DIGEST', `this peer has no blob ${digest}`)
        if (index >= blob.have.size)
          return await refuse(
            'LLMESH_PEER_OUT_OF_RANGE',
            `piece ${index} of ${blob.have.size} does not exist`,
          )
        if (!blob.have.has(index))
          return await refuse(
            'LLMESH_PEER_PIECE_NOT_HELD',
            `piece ${index} is not verified here yet`,
          )
        const limit = this.options.limits?.concurrentUploads ?? 32
        if (this.uploadsRunning >= limit)
          return await refuse('LLMESH_PEER_BUSY', `${limit} uploads run already`)
        const seeding = redirect ? this.superSeedingOf(blob) : undefined
        const redirection = seeding?.redirect(index, peer)
        if (redirection !== undefined) {
          // Not a failure: the stream stays open for the asker's next request.
          const { suggestion } = redirection
          await messages.write(
            encodeJson({
              ...errorAnswer(
                'LLMESH_PEER_SENT_ELSEWHERE',
                `piece ${index} went to another peer moments ago; ${suggestion === undefined ? 'the pieces sent to no one yet are on their way' : `piece ${suggestion} went to no one yet`}`,
              ),
              ...(suggestion === undefined ? {} : { suggest: suggestion }),
            }),
          )
          continue
        }
        this.uploadsRunning++
        let sent = false
        try {
          const start = index * blob.pieceSize
          const end = Math.min(blob.size, start + blob.pieceSize)
          // The piece must be taken within the upload timeout, not counting the upload rate's
          // waits: a rate limit is this node's doing, not the asker's.
          const timeoutMs = this.options.limits?.uploadTimeoutMs ?? 60_000
          const timeout = new PausableTimeout(
            timeoutMs,
            () => new Error(`piece ${index} was not taken within ${timeoutMs} ms`),
          )
          const uploads = this.uploads
          const parts = async function* () {
            for (let position = start; position < end; position += PIECE_PART_BYTES) {
              const partEnd = Math.min(end, position + PIECE_PART_BYTES)
              await uploads.take(peer, partEnd - position)
              timeout.resume()
              yield await blob.read(position, partEnd)
              timeout.pause()
            }
          }
          try {
            await writePiece(stream, end - start, parts(), { signal: timeout.signal })
          } finally {
            timeout.pause()
          }
          this.uploaded.set(peer, (this.uploaded.get(peer) ?? 0) + end - start)
          sent = true
        } finally {
          this.uploadsRunning--
          if (sent) seeding?.sent(index, peer)
          else seeding?.abandoned(index, peer)
        }
      }
    } catch (error) {
      this.log('piece request from %s failed: %s', peer, String(error))
      stream.abort(error instanceof Error ? error : new Error(String(error)))
    }
  }

  /** The super-seeding of a blob this node held whole when first asked for it; none if turned off. */
  private superSeedingOf(blob: ServedBlob): SuperSeeding | undefined {
    if (this.options.superSeeding === false) return undefined
    let seeding = this.superSeeding.get(blob)
    if (seeding === undefined) {
      seeding = blob.have.complete ? new SuperSeeding(blob.have.size) : null
      this.superSeeding.set(blob, seeding)
    }
    return seeding ?? undefined
  }
}

/** An abort signal that fires once `leftMs` have passed while running (after `resume()`): time paused does not count. */
class PausableTimeout {
  private readonly controller = new AbortController()
  private timer: NodeJS.Timeout | undefined
  private startedAt = 0

  constructor(
    private leftMs: number,
    private readonly reason: () => Error,
  ) {}

  get signal(): AbortSignal {
    return this.controller.signal
  }

  resume(): void {
    if (this.timer !== undefined) return
    this.startedAt = performance.now()
    this.timer = setTimeout(() => this.controller.abort(this.reason()), this.leftMs)
  }

  pause(): void {
    if (this.timer === undefined) return
    clearTimeout(this.timer)
    this.timer = undefined
    this.leftMs -= performance.now() - this.startedAt
  }
}

/** Token buckets for one direction: one over all peers, and one per peer. */
class Bandwidth {
  private readonly all: TokenBucket | undefined
  private readonly byPeer = new Map<string, TokenBucket>()

  constructor(
    bytesPerSecond: number | undefined,
    private readonly bytesPerSecondPerPeer: number | undefined,
  ) {
    this.all =
      bytesPerSecond === undefined
        ? undefined
        : new TokenBucket(bytesPerSecond, { burstBytes: 1024 * 1024 })
  }

  /** Resolves once `bytes` for `peer` fit both rates. */
  async take(peer: string, bytes: number, options: { signal?: AbortSignal } = {}): Promise<void> {
    await this.all?.take(bytes, options)
    if (this.bytesPerSecondPerPeer === undefined) return
    let bucket = this.byPeer.get(peer)
    if (bucket === undefined) {
      bucket = new TokenBucket(this.bytesPerSecondPerPeer, { burstBytes: 1024 * 1024 })
      this.byPeer.set(peer, bucket)
    }
    await bucket.take(bytes, options)
  }

  forget(peer: string): void {
    this.byPeer.delete(peer)
  }
}

export function createPeerNode(options?: PeerNodeOptions): Promise<PeerNode> {
  return PeerNode.start(options)
}

/** A new swarm key for a private network: give the same one to every node of the community. */
export function createPrivateNetworkKey(): Uint8Array {
  const key = new Uint8Array(95)
  generateKey(key)
  return key
}

async function loadIdentity(path: string | undefined): Promise<PrivateKey> {
  if (path !== undefined) {
    try {
      return privateKeyFromProtobuf(await readFile(path))
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error
    }
  }
  const key = await generateKeyPair('Ed25519')
  if (path !== undefined) {
    await mkdir(dirname(path), { recursive: true })
    await writeFile(path, privateKeyToProtobuf(key), { mode: 0o600 })
  }
  return key
}

function haveAnswer(blob: ServedBlob) {
  return {
    status: 'ok' as const,
    size: blob.size,
    pieceSize: blob.pieceSize,
    bitfield: blob.have.toBase64(),
  }
}

/**
 * Sends a blob's piece list, then the pieces verified from then on (those of a short while in one
 * message), until the blob is complete or the asker stops watching (its side of the stream ends:
 * it sends nothing after its request).
 */
async function sendHaveAndUpdates(messages: LengthPrefixedStream, blob: ServedBlob): Promise<void> {
  const pending: number[] = []
  let wake = () => {}
  // Watched before the list is sent, so that no piece verified in between is missed.
  const unwatch = blob.have.watch((index) => {
    pending.push(index)
    wake()
  })
  try {
    await messages.write(encodeJson(haveAnswer(blob)))
    let stopped = false
    messages
      .read()
      .catch(() => {})
      .finally(() => {
        stopped = true
        wake()
      })
    while (!stopped && !(pending.length === 0 && blob.have.complete)) {
      if (pending.length === 0)
        await new Promise<void>((resolve) => {
          wake = resolve
        })
      else {
        await sleep(HAVE_UPDATE_DELAY_MS)
        if (!stopped) await messages.write(encodeJson({ pieces: pending.splice(0) }))
      }
    }
  } finally {
    unwatch()
  }
}

function parseJson(bytes: Uint8Array): unknown {
  try {
    return JSON.parse(new TextDecoder().decode(bytes))
  } catch {
    return undefined
  }
}

function parseAnswer<Schema extends typeof haveAnswerSchema | typeof pieceAnswerSchema>(
  schema: Schema,
  message: { subarray(): Uint8Array },
  peer: string,
) {
  const parsed = schema.safeParse(parseJson(message.subarray()))
  if (!parsed.success)
    throw new PeerError({
      code: 'LLMESH_PEER_PROTOCOL',
      message: 'the peer answered something else than the protocol allows',
      peer,
    })
  return parsed.data as ReturnType<Schema['parse']>
}

/** llmesh's own DHT, apart from the public IPFS one. */
export const DHT_PROTOCOL = '/llmesh/kad/1.0.0'

/** The content id of a blob: raw bytes whose sha2-256 multihash is the blob's digest. */
export function digestCid(digest: string): CID {
  return CID.createV1(0x55, Digest.create(0x12, Buffer.from(digest, 'hex')))
}

/**
 * A peer's address as text (`/ip4/192.0.2.7/tcp/4001/p2p/12D3Koo...`) read as a multiaddr;
 * `InvalidArgumentError` naming the text when it is not one. `argument` names where it came from.
 */
export function parsePeerAddress(text: string, argument = 'peer'): Multiaddr {
  try {
    return multiaddr(text)
  } catch (error) {
    throw new InvalidArgumentError({
      argument,
      message: `"${text}" is not a multiaddr such as /ip4/192.0.2.7/tcp/4001/p2p/<peer id> (${error instanceof Error ? error.message : String(error)})`,
      cause: error,
    })
  }
}

/** Refuses, before any work starts, a peer given as text that is no multiaddr, naming it. */
export function checkPeerAddresses(peers: readonly PeerAddress[], argument: string): void {
  peers.forEach((peer, index) => {
    if (typeof peer === 'string') parsePeerAddress(peer, `${argument}[${index}]`)
  })
}

function dialable(address: PeerAddress): PeerId | Multiaddr | Multiaddr[] {
  return typeof address === 'string' ? parsePeerAddress(address) : address
}

/** The peer id in an address (a multiaddr's `/p2p/` part), for reports and blame. */
export function peerIdOf(address: PeerAddress): string {
  let first: ReturnType<typeof dialable> | undefined
  try {
    first = Array.isArray(address) ? address[0] : dialable(address)
  } catch {
    // An address that is no multiaddr is reported as written.
    return String(address)
  }
  if (first === undefined) return 'unknown'
  if (!isMultiaddr(first)) return first.toString()
  const peer = first.getComponents().findLast((component) => component.name === 'p2p')
  return peer?.value ?? first.toString()
}

/**
 * Whether a dial failed because the peer reset the connection before it was up: by TCP (`connect
 * ECONNRESET`) or during the encryption handshake (`read ECONNRESET`). libp2p wraps such errors
 * in its own, so the causes and the errors of an aggregate are searched too.
 */
function resetBeforeConnected(error: unknown, depth = 0): boolean {
  if (!(error instanceof Error) || depth > 4) return false
  if ((error as { code?: unknown }).code === 'ECONNRESET' || /\bECONNRESET\b/.test(error.message))
    return true
  const inner = error instanceof AggregateError ? [...error.errors, error.cause] : [error.cause]
  return inner.some((cause) => resetBeforeConnected(cause, depth + 1))
}

/** A failed dial in words, with libp2p's own message where it says enough. */
function describeDialFailure(error: unknown, privateNetwork: boolean): string {
  if (!(error instanceof Error)) return String(error)
  // The address answered with a peer id other than its /p2p/ part: libp2p's UnexpectedPeerError,
  // which its TLS encrypter rethrows as an EncryptionFailedError with the same message.
  if (error.name === 'UnexpectedPeerError' || error.message === 'Unexpected Peer')
    return 'the node at that address has another peer id (a stale or mistyped address?)'
  // A differing private network key (or one on a single side) turns the handshake into garbage of
  // any length: the peer resets the connection, or libp2p fails on a length too long, or it waits
  // until its dial timeout.
  const otherKey = `another private network key than this node (which has ${privateNetwork ? 'one' : 'none'})`
  if (resetBeforeConnected(error))
    return `the peer reset the connection before the handshake ended (${error.message}): it turns away connections past its caps (on connections, or on new ones per second from one address), or it uses ${otherKey}`
  if (error.name === 'EncryptionFailedError')
    return `the encryption handshake failed (${error.message}): does the peer use ${otherKey}?`
  if (error.name === 'TimeoutError')
    return `no connection within libp2p's dial timeout (${error.message}): the peer is down or filtered, or it uses ${otherKey}`
  return error.message
}
