import { describe, expect, it } from 'vitest'
import { ByteSourceError } from './byte-source.js'
import { LlmeshError } from './errors.js'
import { backoffDelay, retry } from './retry.js'

const transient = () => new LlmeshError({ code: 'T', message: 'transient', isRetryable: true })

describe('retry', () => {
  it('retries retryable errors until the operation succeeds', async () => {
    const attempts: number[] = []
    const result = await retry(
      async (attempt) => {
        attempts.push(attempt)
        if (attempt < 2) throw transient()
        return 'done'
      },
      { minDelay: 1, maxDelay: 2 },
    )
    expect(result).toBe('done')
    expect(attempts).toEqual([0, 1, 2])
  })

  it('does not retry an error that is not retryable', async () => {
    let calls = 0
    const fatal = new LlmeshError({ code: 'F', message: 'fatal' })
    await expect(
      retry(
        async () => {
          calls++
          throw fatal
        },
        { minDelay: 1 },
      ),
    ).rejects.toBe(fatal)
    expect(calls).toBe(1)
  })

  it('gives up after the configured number of retries with the last error', async () => {
    let calls = 0
    await expect(
      retry(
        async () => {
          calls++
          throw transient()
        },
        { retries: 3, minDelay: 1, maxDelay: 1 },
      ),
    ).rejects.toThrow('transient')
    expect(calls).toBe(4)
  })

  it('stops waiting as soon as the signal aborts', async () => {
    const controller = new AbortController()
    const pending = retry(
      async () => {
        throw transient()
      },
      {
        minDelay: 60_000,
        signal: controller.signal,
        onRetry: () => queueMicrotask(() => controller.abort(new Error('stop'))),
      },
    )
    await expect(pending).rejects.toThrow('stop')
  })

  it('reports each retry with its delay', async () => {
    const delays: number[] = []
    await retry(
      async (attempt) => {
        if (attempt < 3) throw transient()
      },
      { minDelay: 1, maxDelay: 8, random: () => 0.999, onRetry: ({ delay }) => delays.push(delay) },
    )
    expect(delays).toEqual([1, 2, 4])
  })
})

describe('backoffDelay', () => {
  it('grows exponentially within the jitter bounds and is capped', () => {
    for (let attempt = 0; attempt < 12; attempt++) {
      const low = backoffDelay({ attempt, minDelay: 100, maxDelay: 5000, random: () => 0 })
      const high = backoffDelay({ attempt, minDelay: 100, maxDelay: 5000, random: () => 0.999999 })
      expect(low).toBe(100)
      expect(high).toBeLessThanOrEqual(Math.min(5000, 100 * 2 ** attempt))
      expect(high).toBeGreaterThanOrEqual(Math.min(5000, 100 * 2 ** attempt) - 1)
    }
  })

  it("waits at least as long as the server's Retry-After", () => {
    const error = new ByteSourceError({
      failure: 'unavailable',
      source: 's',
      message: '429',
      retryAfterMs: 3000,
    })
    expect(
      backoffDelay({ attempt: 0, minDelay: 10, maxDelay: 60_000, random: () => 0, error }),
    ).toBe(3000)
  })
})
