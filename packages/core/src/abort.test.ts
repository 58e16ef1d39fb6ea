import { describe, expect, it } from 'vitest'
import { anySignal, isAbortError, sleep, throwIfAborted, timeoutSignal } from './abort.js'
import { AbortedError, LlmeshError } from './errors.js'

describe('abort helpers', () => {
  it('anySignal aborts with the reason of the first signal that fires', () => {
    const first = new AbortController()
    const second = new AbortController()
    const combined = anySignal(first.signal, undefined, second.signal)
    expect(combined.aborted).toBe(false)
    second.abort(new Error('second'))
    expect(combined.aborted).toBe(true)
    expect((combined.reason as Error).message).toBe('second')
  })

  it('timeoutSignal fires a TimeoutError, and applies no timeout for Infinity', async () => {
    const signal = timeoutSignal(5)
    await expect(sleep(10_000, { signal })).rejects.toMatchObject({ name: 'TimeoutError' })
    expect(timeoutSignal(Number.POSITIVE_INFINITY).aborted).toBe(false)
  })

  it('sleep rejects at once with the caller reason when aborted', async () => {
    const controller = new AbortController()
    const waiting = sleep(60_000, { signal: controller.signal })
    controller.abort(new Error('user cancelled'))
    await expect(waiting).rejects.toThrow('user cancelled')
  })

  it('throwIfAborted wraps a non-Error reason in AbortedError', () => {
    const controller = new AbortController()
    controller.abort('plain string')
    let thrown: unknown
    try {
      throwIfAborted(controller.signal)
    } catch (error) {
      thrown = error
    }
    expect(AbortedError.isInstance(thrown)).toBe(true)
    expect(isAbortError(thrown)).toBe(true)
  })

  it('isAbortError recognises every shape of cancellation and nothing else', () => {
    expect(isAbortError(new DOMException('x', 'AbortError'))).toBe(true)
    expect(isAbortError(new DOMException('x', 'TimeoutError'))).toBe(true)
    expect(isAbortError(Object.assign(new Error('x'), { code: 'ABORT_ERR' }))).toBe(true)
    expect(
      isAbortError(
        new LlmeshError({
          code: 'WRAPPED',
          message: 'w',
          cause: new DOMException('x', 'AbortError'),
        }),
      ),
    ).toBe(true)
    expect(isAbortError(new Error('ECONNRESET'))).toBe(false)
    expect(isAbortError(undefined)).toBe(false)
  })
})
