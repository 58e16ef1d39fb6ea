import { describe, expect, it } from 'vitest'
import { SuperSeeding } from './super-seeding.js'

describe('SuperSeeding', () => {
  it('sends every piece once before it sends any to a second peer, suggesting pieces sent to no one', () => {
    const seeding = new SuperSeeding(4, 30_000, 3_000)
    expect(seeding.redirect(2, 'a', 0)).toBeUndefined()
    // Piece 2 is on its way to a: b is offered the first piece sent to no one, kept for b.
    expect(seeding.redirect(2, 'b', 10)).toEqual({ suggestion: 0 })
    expect(seeding.redirect(0, 'c', 15)).toEqual({ suggestion: 1 })
    expect(seeding.redirect(0, 'b', 20)).toBeUndefined()
    seeding.sent(2, 'a', 30)
    seeding.sent(0, 'b', 30)
    // Piece 2 went to a whole: c is sent on (piece 1 is kept for it).
    expect(seeding.redirect(2, 'c', 40)).toEqual({ suggestion: 3 })
    // A peer asking again for a piece it took lost it: it gets it.
    expect(seeding.redirect(2, 'a', 50)).toBeUndefined()
    seeding.sent(2, 'a', 50)
    expect(seeding.redirect(1, 'c', 60)).toBeUndefined()
    seeding.sent(1, 'c', 60)
    // Piece 3 is kept for c: d is sent on without a suggestion, none being left.
    expect(seeding.redirect(1, 'd', 70)).toEqual({ suggestion: undefined })
    expect(seeding.redirect(3, 'c', 80)).toBeUndefined()
    seeding.sent(3, 'c', 90)
    // Every piece went out once: anyone gets any piece.
    expect(seeding.redirect(2, 'b', 100)).toBeUndefined()
    expect(seeding.redirect(1, 'd', 110)).toBeUndefined()
  })

  it('offers a piece again whose sending was abandoned, or whose suggestion was not taken in time', () => {
    const seeding = new SuperSeeding(3, 30_000, 1_000)
    expect(seeding.redirect(0, 'a', 0)).toBeUndefined()
    expect(seeding.redirect(0, 'b', 0)).toEqual({ suggestion: 1 })
    // a cancelled; b did not ask for piece 1 within a second.
    seeding.abandoned(0, 'a')
    expect(seeding.redirect(2, 'c', 500)).toBeUndefined()
    seeding.sent(2, 'c', 600)
    expect(seeding.redirect(2, 'd', 1_000)).toEqual({ suggestion: 0 })
    expect(seeding.redirect(2, 'e', 1_100)).toEqual({ suggestion: 1 })
  })

  it('sends a piece taken by another peer longer ago than it keeps pieces apart', () => {
    const seeding = new SuperSeeding(3, 1_000, 100)
    expect(seeding.redirect(0, 'a', 0)).toBeUndefined()
    seeding.sent(0, 'a', 0)
    expect(seeding.redirect(0, 'b', 999)).toEqual({ suggestion: 1 })
    expect(seeding.redirect(0, 'c', 1_500)).toBeUndefined()
  })

  it('starts a new round for the next wave of peers when no one asked for a while', () => {
    const seeding = new SuperSeeding(2, 1_000, 100)
    for (const [index, peer] of [
      [0, 'a'],
      [1, 'b'],
    ] as const) {
      expect(seeding.redirect(index, peer, 0)).toBeUndefined()
      seeding.sent(index, peer, 0)
    }
    // Asked again within the time: the same round, every piece sent.
    expect(seeding.redirect(0, 'c', 900)).toBeUndefined()
    // Quiet for longer than that: a new round, in which piece 0 goes to d first.
    expect(seeding.redirect(0, 'd', 2_000)).toBeUndefined()
    expect(seeding.redirect(0, 'e', 2_100)).toEqual({ suggestion: 1 })
  })
})
