/**
 * The order of the tokens in each decode batch of one context.
 *
 * node-llama-cpp 3.22 gives every sequence of a context its own KV stream, and llama.cpp then cuts
 * a batch into micro-batches whose sequence ids are consecutive and increasing
 * (`llama_batch_allocr::split_equal`): one token from each of sequences 2, 0, 3, 1 is decoded as
 * two micro-batches, and from 0, 1, 3 as two as well. Each micro-batch costs about as much as a
 * whole decode step, so in the order node-llama-cpp queues them (the order in which the
 * generations got their last token) four concurrent requests ran hardly faster than one. On an
 * H100 one decode of four tokens of the testkit's `large` model took 6.5–7.8 ms in that order and
 * 2.7–3.8 ms in sequence order.
 *
 * A batch item does not say which sequence it belongs to, so the engine tells this order which
 * token each generation was last given (`tokenGiven`): that is the token its next item carries.
 * Items are sorted by the sequence that token maps to; prompts and items that map to none keep
 * their order after them. A wrong guess (two generations given the same token) only costs speed.
 *
 * It also keeps generations in step. node-llama-cpp decodes whatever is queued when a batch
 * ends; a generation whose token is still making its way through JavaScript queues it a moment
 * later, so four generations drift into batches of about two tokens. Until every generation has
 * queued its token, the order returns no items, and node-llama-cpp goes round its loop again (a
 * turn of the microtask queue, in which the others queue theirs); after `maxWaitMs` it takes what
 * is there, so a generation that waits on something else (or has ended) stalls the rest for at
 * most that long.
 */
import type {
  CustomBatchingPrioritizationStrategy,
  PrioritizedBatchItem,
  Token,
} from 'node-llama-cpp'

export class BatchOrder {
  /** Sequence id → the token its generation was last given. */
  private readonly lastTokens = new Map<number, Token>()
  private readonly maxWaitMs: number
  private waitingSince: number | undefined

  constructor(options: { maxWaitMs?: number } = {}) {
    this.maxWaitMs = options.maxWaitMs ?? 2
  }

  tokenGiven(sequenceId: number, token: Token): void {
    this.lastTokens.set(sequenceId, token)
  }

  /** The generation on this sequence ended: its next item, if any, is a new prompt. */
  forget(sequenceId: number): void {
    this.lastTokens.delete(sequenceId)
  }

  /** For `createContext({ batching: { itemPrioritizationStrategy } })`. */
  readonly strategy: CustomBatchingPrioritizationStrategy = ({ items, size }) => {
    const generationSteps = items.filter((item) => item.tokens.length === 1).length
    if (generationSteps < this.lastTokens.size) {
      const now = performance.now()
      this.waitingSince ??= now
      if (now - this.waitingSince < this.maxWaitMs) return []
    }
    this.waitingSince = undefined
    const unclaimed = new Map(this.lastTokens)
    const keyed = items.map((item, index) => {
      let sequenceId = Number.POSITIVE_INFINITY
      if (item.tokens.length === 1)
        for (const [candidate, token] of unclaimed)
          if (token === item.tokens[0] && candidate < sequenceId) sequenceId = candidate
      unclaimed.delete(sequenceId)
      return { item, sequenceId, index }
    })
    keyed.sort(
      (first, second) => first.sequenceId - second.sequenceId || first.index - second.index,
    )
    return shareTokens(
      keyed.map((entry) => entry.item),
      size,
    )
  }
}

/**
 * Shares `size` token slots among the items in their order, as node-llama-cpp's
 * `maximumParallelism` does: an equal share each (at least one token), then what is left to the
 * items with more tokens (prompts), first come first served.
 */
function shareTokens(
  items: readonly PrioritizedBatchItem['item'][],
  size: number,
): PrioritizedBatchItem[] {
  const share = Math.max(1, Math.floor(size / Math.max(1, items.length)))
  let left = size
  const shared: PrioritizedBatchItem[] = []
  for (const item of items) {
    if (left === 0) break
    const processAmount = Math.min(item.tokens.length, share, left)
    shared.push({ item, processAmount })
    left -= processAmount
  }
  for (const entry of shared) {
    if (left === 0) break
    const more = Math.min(entry.item.tokens.length - entry.processAmount, left)
    entry.processAmount += more
    left -= more
  }
  return shared
}
