/**
 * Super-seeding, as BitTorrent seeds do it: a seed sends every piece of a blob once before it
 * sends any piece to a second peer, so that its upload (a swarm's scarcest bandwidth: every
 * piece must leave the seed at least once) carries no piece twice while the swarm still lacks
 * some. Leechers trade the pieces among themselves.
 *
 * Leechers choose pieces without knowing what the others asked the seed for: two of them ask for
 * the same piece before either has it and says so, and more often as fewer pieces remain that
 * only the seed holds. In the benchmark's swarm of 8 (every upload at 32 MiB/s) the seed sent
 * 1,113 MiB of a 1,024 MiB blob without super-seeding and 1,031 MiB with it. A request for a
 * piece that went to another peer moments ago is redirected: the seed names a piece it gave to no
 * one yet, which the asker takes instead, and the asker gets the first piece from the peer that
 * has it.
 *
 * A piece counts as sent once a peer took it whole: one whose sending failed or was cancelled may
 * go to another. While the pieces not sent yet are all on their way or suggested to others, a
 * request for a piece another peer has is redirected with no suggestion (ask again later, or the
 * peer that has it). Only askers that take a redirect get one (a swarm download does; a pull
 * through the downloader, which asks for byte ranges, does not).
 */

/** How long a piece sent to one peer is kept from the others, while some piece was sent to none. */
export const SENT_PIECE_KEPT_MS = 30_000

/** How long a suggested piece is kept for the peer it was suggested to, which asks for it at once. */
export const SUGGESTION_KEPT_MS = 3_000

export interface Redirect {
  /** A piece sent to no one yet, kept for the asker a while; none when every such piece is on its way. */
  suggestion: number | undefined
}

export class SuperSeeding {
  /** Per piece, the peer that took the last whole copy in this round, and when. */
  private readonly sentTo: Array<string | undefined>
  private readonly sentAt: Float64Array
  /** Per piece, the peer it is being sent to now. */
  private readonly sendingTo: Array<string | undefined>
  /** Per piece, the peer it was suggested to, until `reservedUntil`. */
  private readonly reservedFor: Array<string | undefined>
  private readonly reservedUntil: Float64Array
  /** Pieces no peer took a whole copy of in this round. */
  private unsent: number
  /** Every piece before it was sent in this round: suggestions are looked for from here. */
  private cursor = 0
  private lastAskedAt = Number.NEGATIVE_INFINITY

  constructor(
    readonly pieces: number,
    private readonly keptMs = SENT_PIECE_KEPT_MS,
    private readonly suggestionKeptMs = SUGGESTION_KEPT_MS,
  ) {
    this.sentTo = new Array(pieces).fill(undefined)
    this.sentAt = new Float64Array(pieces)
    this.sendingTo = new Array(pieces).fill(undefined)
    this.reservedFor = new Array(pieces).fill(undefined)
    this.reservedUntil = new Float64Array(pieces)
    this.unsent = pieces
  }

  /**
   * `peer` asks for piece `index`. Returns undefined when the piece is to be sent: call `sent()`
   * once the peer took it whole, or `abandoned()` if not. Returns a redirect when another peer
   * took, is taking or was suggested the piece (less than `keptMs` ago) while some piece has not
   * been sent to anyone, with such a piece to ask for instead when one is not on its way already.
   * A peer asking again for a piece it took lost it, and gets it. A new round starts when no one
   * asked for `keptMs` (the next wave of leechers).
   */
  redirect(index: number, peer: string, now = performance.now()): Redirect | undefined {
    if (now - this.lastAskedAt > this.keptMs) this.startRound()
    this.lastAskedAt = now
    if (this.unsent > 0 && this.takenByAnother(index, peer, now)) {
      const suggestion = this.unsentPiece(now)
      if (suggestion !== undefined) {
        this.reservedFor[suggestion] = peer
        this.reservedUntil[suggestion] = now + this.suggestionKeptMs
      }
      return { suggestion }
    }
    this.sendingTo[index] = peer
    return undefined
  }

  /** `peer` took piece `index` whole. */
  sent(index: number, peer: string, now = performance.now()): void {
    if (this.sentTo[index] === undefined) this.unsent--
    this.sentTo[index] = peer
    this.sentAt[index] = now
    if (this.sendingTo[index] === peer) this.sendingTo[index] = undefined
    if (this.reservedFor[index] === peer) this.reservedFor[index] = undefined
  }

  /** Sending piece `index` to `peer` failed or was cancelled: it may go to another. */
  abandoned(index: number, peer: string): void {
    if (this.sendingTo[index] === peer) this.sendingTo[index] = undefined
  }

  private takenByAnother(index: number, peer: string, now: number): boolean {
    const sending = this.sendingTo[index]
    if (sending !== undefined && sending !== peer) return true
    const reserved = this.reservedFor[index]
    if (reserved !== undefined && reserved !== peer && now < this.reservedUntil[index]!) return true
    const sent = this.sentTo[index]
    return sent !== undefined && sent !== peer && now - this.sentAt[index]! <= this.keptMs
  }

  /** A piece sent to no one, being sent to no one, and suggested to no one lately. */
  private unsentPiece(now: number): number | undefined {
    while (this.cursor < this.pieces && this.sentTo[this.cursor] !== undefined) this.cursor++
    for (let index = this.cursor; index < this.pieces; index++)
      if (
        this.sentTo[index] === undefined &&
        this.sendingTo[index] === undefined &&
        (this.reservedFor[index] === undefined || now >= this.reservedUntil[index]!)
      )
        return index
    return undefined
  }

  private startRound(): void {
    this.sentTo.fill(undefined)
    this.sendingTo.fill(undefined)
    this.reservedFor.fill(undefined)
    this.unsent = this.pieces
    this.cursor = 0
  }
}
