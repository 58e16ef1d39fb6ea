import { describe, expect, it } from 'vitest'
import { z } from 'zod'
import { InvalidArgumentError } from './errors.js'
import { formatIssuePath, parseArgument } from './validation.js'

describe('validation', () => {
  it('formats paths as code reads them', () => {
    expect(formatIssuePath(['artifacts', 2, 'sha256'])).toBe('artifacts[2].sha256')
    expect(formatIssuePath([])).toBe('(root)')
    expect(formatIssuePath(['headers', 'x-api-key'])).toBe('headers["x-api-key"]')
  })

  it('throws InvalidArgumentError naming the argument and field', () => {
    const schema = z.object({ connections: z.number().int().positive() })
    expect(parseArgument(schema, { connections: 4 }, 'options')).toEqual({ connections: 4 })
    try {
      parseArgument(schema, { connections: -1 }, 'options')
      expect.unreachable()
    } catch (error) {
      expect(InvalidArgumentError.isInstance(error)).toBe(true)
      expect((error as InvalidArgumentError).argument).toBe('options.connections')
      expect((error as Error).message).toMatch(/options\.connections/)
    }
  })
})
