import { describe, expect, it } from 'vitest'
import { Bitfield } from './bitfield.js'
import { PieceOrder } from './piece-order.js'

/** A piece list of `size` pieces holding `indexes`. */
function holding(size: number, indexes: number[]): Bitfield {
  const field = new Bitfield(size)
  for (const index of indexes) field.set(index)
  return field
}

/** Every piece the order yields, in order, marking each held as it goes. */
function drain(order: PieceOrder, have: Bitfield): number[] {
  const taken: number[] = []
  for (let index = order.find(() => true); index !== undefined; index = order.find(() => true)) {
    taken.push(index)
    have.set(index)
  }
  return taken
}

describe('PieceOrder', () => {
  it('yields the pieces held by the fewest peers first, and those no peer holds last', () => {
    const have = new Bitfield(8)
    const peers = [holding(8, [0, 1, 2, 3]), holding(8, [0, 1, 4]), holding(8, [0, 5])]
    const taken = drain(new PieceOrder(have, () => peers, 0), have)
    // Held by 1 peer: 2, 3, 4, 5; by 2: 1; by 3: 0; by none: 6, 7.
    expect(new Set(taken.slice(0, 4))).toEqual(new Set([2, 3, 4, 5]))
    expect(taken.slice(4, 6)).toEqual([1, 0])
    expect(new Set(taken.slice(6))).toEqual(new Set([6, 7]))
  })

  it('orders pieces held equally at random, so that leechers ask for different ones', () => {
    const seed = Bitfield.full(16)
    const firsts = new Set<number>()
    for (let node = 0; node < 200; node++)
      firsts.add(new PieceOrder(new Bitfield(16), () => [seed], 0).find(() => true)!)
    // Each of the 16 pieces came first for some node (all but certain in 200 draws).
    expect(firsts.size).toBe(16)
  })

  it('passes pieces the node has and pieces the caller refuses, and says when none is left', () => {
    const have = holding(6, [0, 2])
    const order = new PieceOrder(have, () => [Bitfield.full(6)], 0)
    const offered: number[] = []
    expect(
      order.find((index) => {
        offered.push(index)
        return false
      }),
    ).toBeUndefined()
    expect(offered.sort()).toEqual([1, 3, 4, 5])
    expect(order.find((index) => index === 4)).toBe(4)
    have.set(1)
    have.set(3)
    have.set(4)
    have.set(5)
    expect(order.find(() => true)).toBeUndefined()
  })

  it('follows changes of the peers’ piece lists once told of them, rebuilt at most once per period', () => {
    const have = new Bitfield(4)
    const seed = Bitfield.full(4)
    let peers = [seed]
    const slow = new PieceOrder(have, () => peers, 60_000)
    const quick = new PieceOrder(have, () => peers, 0)
    const slowBefore = peek(slow)
    const quickBefore = peek(quick)
    // Piece 3 becomes the rarest.
    peers = [seed, holding(4, [0, 1, 2])]
    expect(peek(quick)).toEqual(quickBefore)
    slow.invalidate()
    quick.invalidate()
    expect(peek(slow)).toEqual(slowBefore)
    expect(peek(quick)[0]).toBe(3)
  })
})

/** The order's pieces as it stands, taking none. */
function peek(order: PieceOrder): number[] {
  const seen: number[] = []
  order.find((index) => {
    seen.push(index)
    return false
  })
  return seen
}
