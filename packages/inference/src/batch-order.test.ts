import type { BatchItem, Token } from 'node-llama-cpp'
import { describe, expect, it } from 'vitest'
import { BatchOrder } from './batch-order.js'

const token = (value: number) => value as Token
const item = (...tokens: number[]): BatchItem => ({
  tokens: tokens.map(token),
  logits: tokens.map(() => true as const),
  evaluationPriority: 5,
})

describe('BatchOrder', () => {
  it('puts generation steps in the order of their sequences, prompts after them', () => {
    const order = new BatchOrder()
    order.tokenGiven(2, token(30))
    order.tokenGiven(0, token(10))
    order.tokenGiven(1, token(20))
    const prompt = item(1, 2, 3)
    const steps = [item(20), item(30), prompt, item(10)]
    const batch = order.strategy({ items: steps, size: 512 })
    expect(batch.map((entry) => entry.item.tokens)).toEqual([[10], [20], [30], [1, 2, 3]])
    expect(batch.every((entry) => entry.processAmount === entry.item.tokens.length)).toBe(true)
  })

  it('gives generations that were given the same token a sequence each, in queue order', () => {
    const order = new BatchOrder()
    for (const sequenceId of [3, 1, 2]) order.tokenGiven(sequenceId, token(7))
    order.tokenGiven(0, token(9))
    const first = item(7)
    const second = item(7)
    const third = item(7)
    const lowest = item(9)
    const batch = order.strategy({ items: [first, second, third, lowest], size: 512 })
    const ordered = batch.map((entry) => entry.item)
    expect(ordered).toHaveLength(4)
    for (const [index, expected] of [lowest, first, second, third].entries())
      expect(ordered[index]).toBe(expected)
  })

  it('holds the batch until every generation has queued its token', () => {
    const order = new BatchOrder({ maxWaitMs: 60_000 })
    order.tokenGiven(0, token(10))
    order.tokenGiven(1, token(20))
    expect(order.strategy({ items: [item(20)], size: 512 })).toEqual([])
    expect(order.strategy({ items: [item(20), item(10)], size: 512 })).toHaveLength(2)
    // A generation that ended is not waited for.
    order.forget(0)
    expect(order.strategy({ items: [item(20)], size: 512 })).toHaveLength(1)
  })

  it('takes what is queued once it has waited maxWaitMs', () => {
    const order = new BatchOrder({ maxWaitMs: 0 })
    order.tokenGiven(0, token(10))
    order.tokenGiven(1, token(20))
    expect(order.strategy({ items: [item(20)], size: 512 })).toHaveLength(1)
  })

  it('shares the batch size: a token for each step, the rest to prompts', () => {
    const order = new BatchOrder()
    order.tokenGiven(0, token(10))
    order.tokenGiven(1, token(20))
    const longPrompt = item(...Array.from({ length: 20 }, (_, index) => 100 + index))
    const batch = order.strategy({ items: [longPrompt, item(20), item(10)], size: 8 })
    expect(batch.map((entry) => entry.processAmount)).toEqual([1, 1, 6])
    expect(batch.reduce((sum, entry) => sum + entry.processAmount, 0)).toBe(8)
  })
})
