/**
 * A retry budget, as Envoy and linkerd have: retries may add at most `ratio` of the requests of
 * the last `windowMs` (plus a small floor for quiet times), so that an outage cannot multiply the
 * load on the nodes that are left.
 */
export interface RetryBudgetOptions {
  /** Retries allowed per request, over the window; default 0.2. */
  ratio?: number
  /** Retries always allowed per window, for low traffic; default 10. */
  minimumPerWindow?: number
  /** Default 10 s, counted in 10 buckets. */
  windowMs?: number
  now?: () => number
}

export class RetryBudget {
  private readonly ratio: number
  private readonly minimum: number
  private readonly bucketMs: number
  private readonly now: () => number
  private readonly requests = new Array<number>(10).fill(0)
  private readonly retries = new Array<number>(10).fill(0)
  private bucketStart = 0
  private bucket = 0

  constructor(options: RetryBudgetOptions = {}) {
    this.ratio = options.ratio ?? 0.2
    this.minimum = options.minimumPerWindow ?? 10
    this.bucketMs = (options.windowMs ?? 10_000) / 10
    this.now = options.now ?? Date.now
  }

  /** Counts a first attempt. */
  recordRequest(): void {
    this.advance()
    this.requests[this.bucket]!++
  }

  /** Takes one retry from the budget; false when it is spent. */
  tryRetry(): boolean {
    this.advance()
    const requests = sum(this.requests)
    const retries = sum(this.retries)
    if (retries >= Math.max(this.minimum, requests * this.ratio)) return false
    this.retries[this.bucket]!++
    return true
  }

  view(): { requests: number; retries: number; allowed: number } {
    this.advance()
    const requests = sum(this.requests)
    return {
      requests,
      retries: sum(this.retries),
      allowed: Math.floor(Math.max(this.minimum, requests * this.ratio)),
    }
  }

  private advance(): void {
    const now = this.now()
    if (this.bucketStart === 0) this.bucketStart = now
    while (now - this.bucketStart >= this.bucketMs) {
      this.bucketStart += this.bucketMs
      this.bucket = (this.bucket + 1) % this.requests.length
      this.requests[this.bucket] = 0
      this.retries[this.bucket] = 0
      // After a long silence, skip ahead instead of clearing bucket by bucket.
      if (now - this.bucketStart > this.bucketMs * this.requests.length) {
        this.requests.fill(0)
        this.retries.fill(0)
        this.bucketStart = now
      }
    }
  }
}

function sum(values: number[]): number {
  let total = 0
  for (const value of values) total += value
  return total
}
