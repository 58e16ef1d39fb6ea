/**
 * Super-seeding, as BitTorrent seeds do it: a seed sends every piece of a blob once before it
 * sends any piece to a second peer, so that its upload (a swarm's scarcest bandwidth: every
 * piece must leave the seed at least once) carries no piece twice while the swarm still lacks
 * some. Leechers trade the pieces among themselves.
 *
 * Leechers choose pieces without knowing what the others asked the seed for: two of them ask for
 * the same piece before either has it and says so, and more often as fewer pieces remain that
 * only the seed holds. A swarm of 8 at 32 MiB/s each made its seed send 1,300 MiB of a 1,024 MiB
 * blob. With super-seeding, a request for a piece that went to another peer moments ago is
 * redirected: the seed names a piece it gave to no one yet, which the asker takes instead, and
 * the asker gets the first piece from the peer that has it.
 *
 * Only askers that take a redirect get one (a swarm download does; a pull through the downloader,
 * which asks for byte ranges, does not). A peer asking again for a piece it was given is served:
 * it lost that piece.
 */

/** How long a piece given to one peer is kept from the others, while pieces given to none remain. */
export const GIVEN_PIECE_KEPT_MS = 30_000

export class SuperSeeding {
  /** Per piece, the peer it was given to in this round: sent to, or suggested to. */
  private readonly givenTo: Array<string | undefined>
  private readonly givenAt: Float64Array
  private notGiven: number
  /** Every piece before it was given in this round: the next suggestion is at or after it. */
  private cursor = 0
  private lastAskedAt = Number.NEGATIVE_INFINITY

  constructor(
    readonly pieces: number,
    private readonly keptMs = GIVEN_PIECE_KEPT_MS,
  ) {
    this.givenTo = new Array(pieces).fill(undefined)
    this.givenAt = new Float64Array(pieces)
    this.notGiven = pieces
  }

  /**
   * `peer` asks for piece `index`. Returns undefined when the piece should be sent (it then counts
   * as given to `peer`, if it was given to none), or the piece to suggest instead: the asked one
   * went to another peer less than `keptMs` ago, and the suggested one went to none (it now counts
   * as given to `peer`). Once every piece was given, every request is served; a new round starts
   * when no one asked for `keptMs` (the next wave of leechers).
   */
  redirect(index: number, peer: string, now = performance.now()): number | undefined {
    if (this.notGiven === 0 && now - this.lastAskedAt > this.keptMs) this.startRound()
    this.lastAskedAt = now
    const owner = this.givenTo[index]
    if (owner === undefined) {
      this.give(index, peer, now)
      return undefined
    }
    if (owner === peer || this.notGiven === 0 || now - this.givenAt[index]! > this.keptMs)
      return undefined
    while (this.givenTo[this.cursor] !== undefined) this.cursor++
    const suggestion = this.cursor
    this.give(suggestion, peer, now)
    return suggestion
  }

  private give(index: number, peer: string, now: number): void {
    this.givenTo[index] = peer
    this.givenAt[index] = now
    this.notGiven--
  }

  private startRound(): void {
    this.givenTo.fill(undefined)
    this.notGiven = this.pieces
    this.cursor = 0
  }
}
