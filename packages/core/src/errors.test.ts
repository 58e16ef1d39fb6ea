import { describe, expect, it } from 'vitest'
import { ByteSourceError } from './byte-source.js'
import { AbortedError, InvalidArgumentError, LlmeshError } from './errors.js'

describe('LlmeshError', () => {
  it('carries a stable code, cause and retryability', () => {
    const cause = new Error('socket hang up')
    const error = new LlmeshError({
      code: 'LLMESH_TEST',
      message: 'failed',
      cause,
      isRetryable: true,
    })
    expect(error).toBeInstanceOf(Error)
    expect(error.code).toBe('LLMESH_TEST')
    expect(error.cause).toBe(cause)
    expect(error.isRetryable).toBe(true)
    expect(new LlmeshError({ code: 'X', message: 'm' }).isRetryable).toBe(false)
  })

  it('is recognised by its marker across copies of the package', () => {
    // A second installed copy has its own class but the same global symbol.
    const foreign = Object.assign(new Error('from another copy'), {
      [Symbol.for('llmesh.error')]: true,
      [Symbol.for('llmesh.error.InvalidArgumentError')]: true,
    })
    expect(LlmeshError.isInstance(foreign)).toBe(true)
    expect(InvalidArgumentError.isInstance(foreign)).toBe(true)
    expect(AbortedError.isInstance(foreign)).toBe(false)
    expect(LlmeshError.isInstance(new Error('plain'))).toBe(false)
    expect(LlmeshError.isInstance(null)).toBe(false)
    expect(LlmeshError.isInstance('LLMESH_TEST')).toBe(false)
  })

  it('serialises its structured fields and cause for --json output', () => {
    const error = new ByteSourceError({
      failure: 'unavailable',
      source: 'https://mirror.test/a',
      message: 'HTTP 503',
      statusCode: 503,
      retryAfterMs: 2000,
      cause: new Error('busy'),
    })
    expect(JSON.parse(JSON.stringify(error))).toMatchObject({
      name: 'ByteSourceError',
      code: 'LLMESH_SOURCE_UNAVAILABLE',
      message: 'HTTP 503',
      isRetryable: true,
      statusCode: 503,
      source: 'https://mirror.test/a',
      retryAfterMs: 2000,
      tryElsewhere: true,
      cause: { name: 'Error', message: 'busy' },
    })
  })
})

describe('ByteSourceError', () => {
  it('tells whether to retry here and whether to try elsewhere', () => {
    const make = (failure: ByteSourceError['failure']) =>
      new ByteSourceError({ failure, source: 's', message: failure })
    expect(make('unavailable')).toMatchObject({ isRetryable: true, tryElsewhere: true })
    expect(make('busy')).toMatchObject({
      isRetryable: true,
      tryElsewhere: true,
      code: 'LLMESH_SOURCE_BUSY',
    })
    expect(make('not-found')).toMatchObject({
      isRetryable: false,
      tryElsewhere: true,
      code: 'LLMESH_SOURCE_NOT_FOUND',
    })
    expect(make('misbehaved')).toMatchObject({ isRetryable: false, tryElsewhere: true })
    expect(make('forbidden')).toMatchObject({ isRetryable: false, tryElsewhere: true })
    expect(make('range-not-satisfiable')).toMatchObject({ isRetryable: false, tryElsewhere: false })
  })
})
