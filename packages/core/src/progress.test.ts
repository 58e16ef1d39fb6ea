import { describe, expect, it } from 'vitest'
import { emitProgress, type ProgressEvent } from './progress.js'

type HashEvent = ProgressEvent<'manifest:file-hashed', { path: string; bytes: number }>

describe('emitProgress', () => {
  it('delivers typed events and survives a throwing listener', () => {
    const seen: HashEvent[] = []
    emitProgress<HashEvent>({ onProgress: (event) => seen.push(event) }, 'manifest:file-hashed', {
      path: 'a',
      bytes: 3,
    })
    expect(seen).toHaveLength(1)
    expect(seen[0]?.type).toBe('manifest:file-hashed')
    expect(seen[0]?.detail).toEqual({ path: 'a', bytes: 3 })

    const listenerErrors: unknown[] = []
    emitProgress<HashEvent>(
      {
        onProgress: () => {
          throw new Error('listener bug')
        },
      },
      'manifest:file-hashed',
      { path: 'a', bytes: 3 },
      (error) => listenerErrors.push(error),
    )
    expect(listenerErrors).toHaveLength(1)
    emitProgress<HashEvent>(undefined, 'manifest:file-hashed', { path: 'a', bytes: 3 })
  })
})
