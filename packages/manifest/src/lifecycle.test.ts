import { describe, expect, it } from 'vitest'
import {
  addRelease,
  createReleaseHistory,
  LifecycleError,
  markHealth,
  production,
  promote,
  type ReleaseHistory,
  rollback,
} from './lifecycle.js'

const at = '2026-11-22T00:00:00.000Z'

function codeOf(action: () => unknown): string {
  try {
    action()
  } catch (error) {
    if (LifecycleError.isInstance(error)) return error.code
    throw error
  }
  throw new Error('expected a LifecycleError')
}

function toProduction(state: ReleaseHistory, version: string): ReleaseHistory {
  let next = addRelease(state, version, { at })
  next = markHealth(next, version, true, { at })
  next = promote(next, version, { at })
  return promote(next, version, { at })
}

describe('lifecycle', () => {
  it('promotes one stage at a time and never mutates its input', () => {
    const empty = createReleaseHistory('acme/tiny')
    const added = addRelease(empty, '1.0.0', { at })
    expect(empty.releases).toEqual([])
    expect(added.releases[0]).toMatchObject({ stage: 'experimental' })
    const staging = promote(added, '1.0.0', { at })
    expect(staging.releases[0]!.stage).toBe('staging')
    expect(added.releases[0]!.stage).toBe('experimental')
  })

  it('lets only a healthy version into production', () => {
    const staging = promote(
      addRelease(createReleaseHistory('acme/tiny'), '1.0.0', { at }),
      '1.0.0',
      { at },
    )
    expect(codeOf(() => promote(staging, '1.0.0', { at }))).toBe('LLMESH_RELEASE_UNHEALTHY')
    expect(production(promote(markHealth(staging, '1.0.0', true), '1.0.0', { at }))?.version).toBe(
      '1.0.0',
    )
  })

  it('keeps one production version and remembers the one it replaced as known good', () => {
    const two = toProduction(toProduction(createReleaseHistory('acme/tiny'), '1.0.0'), '1.1.0')
    expect(production(two)?.version).toBe('1.1.0')
    expect(two.releases.find((release) => release.version === '1.0.0')?.stage).toBe('staging')
    expect(two.knownGood).toEqual(['1.0.0'])
    expect(two.history.map((event) => event.action)).toContain('demote')
  })

  it('rolls back to the last known good version and bars the bad one', () => {
    const three = toProduction(
      toProduction(toProduction(createReleaseHistory('acme/tiny'), '1.0.0'), '1.1.0'),
      '1.2.0',
    )
    const back = rollback(three, { at, reason: 'smoke test regressions' })
    expect(production(back)?.version).toBe('1.1.0')
    expect(back.releases.find((release) => release.version === '1.2.0')).toMatchObject({
      stage: 'experimental',
      rolledBack: true,
    })
    expect(codeOf(() => promote(back, '1.2.0'))).toBe('LLMESH_RELEASE_ROLLED_BACK')
    const again = rollback(back, { at })
    expect(production(again)?.version).toBe('1.0.0')
    expect(codeOf(() => rollback(again))).toBe('LLMESH_NO_KNOWN_GOOD')
  })

  it('skips known good versions that have since turned unhealthy', () => {
    const three = toProduction(
      toProduction(toProduction(createReleaseHistory('acme/tiny'), '1.0.0'), '1.1.0'),
      '1.2.0',
    )
    const sick = markHealth(three, '1.1.0', false, { reason: 'file corrupted on disk' })
    expect(production(rollback(sick))?.version).toBe('1.0.0')
  })

  it('refuses unknown versions, duplicates, and promoting past production', () => {
    const one = toProduction(createReleaseHistory('acme/tiny'), '1.0.0')
    expect(codeOf(() => promote(one, '9.9.9'))).toBe('LLMESH_RELEASE_NOT_FOUND')
    expect(codeOf(() => addRelease(one, '1.0.0'))).toBe('LLMESH_RELEASE_EXISTS')
    expect(codeOf(() => promote(one, '1.0.0'))).toBe('LLMESH_ALREADY_PRODUCTION')
    expect(codeOf(() => rollback(createReleaseHistory('acme/tiny')))).toBe(
      'LLMESH_NOTHING_IN_PRODUCTION',
    )
  })
})
