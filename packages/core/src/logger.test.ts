import { format } from 'node:util'
import createDebug from 'debug'
import { afterEach, describe, expect, it } from 'vitest'
import { createLogger, enableLogging } from './logger.js'

describe('createLogger', () => {
  afterEach(() => createDebug.disable())

  it('is namespaced under llmesh: and off by default', () => {
    const log = createLogger('downloader')
    expect(log.namespace).toBe('llmesh:downloader')
    expect(log.enabled).toBe(false)
  })

  it('writes to stderr, never stdout, once enabled', () => {
    const written: string[] = []
    const originalLog = createDebug.log
    createDebug.log = (...args: unknown[]) => written.push(format(...args))
    try {
      enableLogging('llmesh:*')
      const log = createLogger('registry')
      expect(log.enabled).toBe(true)
      log('node %s joined', 'n1')
      log.error('heartbeat failed')
      expect(
        written.some((line) => line.includes('llmesh:registry') && line.includes('node n1 joined')),
      ).toBe(true)
      expect(written.some((line) => line.includes('llmesh:registry:error'))).toBe(true)
    } finally {
      createDebug.log = originalLog
    }
  })
})
