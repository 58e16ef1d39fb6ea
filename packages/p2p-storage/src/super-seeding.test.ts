import { describe, expect, it } from 'vitest'
import { SuperSeeding } from './super-seeding.js'

describe('SuperSeeding', () => {
  it('sends every piece once before it sends any to a second peer, suggesting pieces sent to no one', () => {
    const seeding = new SuperSeeding(4, 30_000)
    expect(seeding.redirect(2, 'a', 0)).toBeUndefined()
    // Piece 2 went to a: b is offered the first piece that went to no one.
    expect(seeding.redirect(2, 'b', 10)).toBe(0)
    // That piece now counts as b's: b is served, c is sent on.
    expect(seeding.redirect(0, 'b', 20)).toBeUndefined()
    expect(seeding.redirect(0, 'c', 30)).toBe(1)
    // A peer asking again for a piece it was given lost it: served.
    expect(seeding.redirect(2, 'a', 40)).toBeUndefined()
    expect(seeding.redirect(3, 'd', 50)).toBeUndefined()
    // Every piece was given: anyone gets any piece.
    expect(seeding.redirect(2, 'b', 60)).toBeUndefined()
    expect(seeding.redirect(1, 'a', 70)).toBeUndefined()
  })

  it('serves a piece given to another peer longer ago than it keeps pieces apart', () => {
    const seeding = new SuperSeeding(3, 1_000)
    expect(seeding.redirect(0, 'a', 0)).toBeUndefined()
    expect(seeding.redirect(0, 'b', 999)).toBe(1)
    expect(seeding.redirect(0, 'c', 1_001)).toBeUndefined()
  })

  it('starts a new round for the next wave of peers, once every piece was given and no one asked for a while', () => {
    const seeding = new SuperSeeding(2, 1_000)
    expect(seeding.redirect(0, 'a', 0)).toBeUndefined()
    expect(seeding.redirect(1, 'b', 0)).toBeUndefined()
    expect(seeding.redirect(0, 'b', 500)).toBeUndefined()
    // Asked again within the time: still the same round, every piece given.
    expect(seeding.redirect(0, 'c', 1_400)).toBeUndefined()
    // Quiet for longer than that: a new round, in which piece 0 goes to d first.
    expect(seeding.redirect(0, 'd', 2_500)).toBeUndefined()
    expect(seeding.redirect(0, 'e', 2_600)).toBe(1)
  })
})
