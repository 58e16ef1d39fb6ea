import { type AbortOptions, sleep } from '@llmesh/core'

/**
 * A token bucket for bandwidth: `take(bytes)` resolves once the bytes fit the rate. Callers may
 * run into debt, which later callers wait out, so many connections share one rate fairly
 * without a queue. A rate of `Infinity` never waits.
 *
 * Small enough to keep here: the npm limiters count requests, not bytes with debt, and would add
 * a dependency for twenty lines.
 */
export class TokenBucket {
  readonly bytesPerSecond: number
  readonly burstBytes: number
  private tokens: number
  private updatedAt = performance.now()

  constructor(bytesPerSecond: number, { burstBytes }: { burstBytes?: number } = {}) {
    if (!(bytesPerSecond > 0)) throw new RangeError('bytesPerSecond must be positive')
    this.bytesPerSecond = bytesPerSecond
    this.burstBytes = burstBytes ?? Math.min(bytesPerSecond, 4 * 1024 * 1024)
    this.tokens = this.burstBytes
  }

  async take(bytes: number, options: AbortOptions = {}): Promise<void> {
    if (this.bytesPerSecond === Number.POSITIVE_INFINITY) return
    const now = performance.now()
    this.tokens = Math.min(
      this.burstBytes,
      this.tokens + ((now - this.updatedAt) / 1000) * this.bytesPerSecond,
    )
    this.updatedAt = now
    this.tokens -= bytes
    if (this.tokens < 0) await sleep((-this.tokens / this.bytesPerSecond) * 1000, options)
  }
}
