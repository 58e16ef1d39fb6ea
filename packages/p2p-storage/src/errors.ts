import { hasMarker, LlmeshError } from '@llmesh/core'

const peerMarker = Symbol.for('llmesh.error.PeerError')

export type PeerErrorCode =
  /** The peer does not hold that digest at all. */
  | 'LLMESH_PEER_UNKNOWN_DIGEST'
  /** The piece index lies outside the blob. */
  | 'LLMESH_PEER_OUT_OF_RANGE'
  /** The peer holds the blob, but not that piece yet. */
  | 'LLMESH_PEER_PIECE_NOT_HELD'
  /** The peer serves too many requests now; ask later or elsewhere. */
  | 'LLMESH_PEER_BUSY'
  /**
   * A seed sent that piece to another peer moments ago (or is sending or suggested it), and some
   * piece to no one yet: get it from that peer once it has it, and ask the seed for
   * `suggestedPiece` (super-seeding; none when every such piece is on its way to another).
   */
  | 'LLMESH_PEER_SENT_ELSEWHERE'
  /** The peer refused with a code this version does not know (a newer peer's); the message names it. */
  | 'LLMESH_PEER_REFUSED'
  /** The peer broke the protocol (a malformed or oversized message). */
  | 'LLMESH_PEER_PROTOCOL'
  /** No connection to the peer: the dial failed, or the peer refused it (at its `maxPeers`). */
  | 'LLMESH_PEER_UNREACHABLE'
  /** No peer left to fetch some pieces from: all gone, banned, or without them. */
  | 'LLMESH_SWARM_EXHAUSTED'

/** A peer refused a request, broke the protocol, or a swarm download could not finish. */
export class PeerError extends LlmeshError {
  protected readonly [peerMarker] = true
  override readonly code: PeerErrorCode
  readonly peer: string | undefined
  readonly digest: string | undefined
  /** With `LLMESH_PEER_SENT_ELSEWHERE`: the piece the seed offers instead. */
  readonly suggestedPiece: number | undefined

  constructor(options: {
    code: PeerErrorCode
    message: string
    peer?: string
    digest?: string
    suggestedPiece?: number
    cause?: unknown
  }) {
    super({
      code: options.code,
      message: options.message,
      cause: options.cause,
      isRetryable:
        options.code === 'LLMESH_PEER_BUSY' ||
        options.code === 'LLMESH_PEER_SENT_ELSEWHERE' ||
        options.code === 'LLMESH_PEER_REFUSED' ||
        options.code === 'LLMESH_PEER_PIECE_NOT_HELD' ||
        options.code === 'LLMESH_PEER_UNREACHABLE',
    })
    this.name = 'PeerError'
    this.code = options.code
    this.peer = options.peer
    this.digest = options.digest
    this.suggestedPiece = options.suggestedPiece
  }

  static override isInstance(error: unknown): error is PeerError {
    return hasMarker(error, peerMarker)
  }
}
