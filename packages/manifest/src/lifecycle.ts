/**
 * Staged promotion and rollback, as pure functions over a model's release history.
 *
 * The rules:
 * 1. A new version enters as `experimental` (`addRelease`). Versions are unique per model.
 * 2. `promote` moves a version one stage up: experimental → staging → production. Stages are never
 *    skipped, so every production version has been through staging.
 * 3. Only a version whose verification and smoke test passed (`healthy`) may enter production.
 * 4. One version is in production at a time. Promoting another one moves the current one back to
 *    staging and records it as the last known good version.
 * 5. `rollback` marks the production version as rolled back (it returns to experimental and can
 *    never be promoted again: publish a new version instead) and puts back the most recent
 *    known good version that is still healthy and not rolled back. With none, it refuses.
 * 6. Every change appends an entry to `history`, newest last; inputs are never mutated.
 */
import { hasMarker, LlmeshError } from '@llmesh/core'
import type { Stage } from './schema.js'

export interface Release {
  version: string
  stage: Stage
  /** Verified and passed its smoke test. */
  healthy: boolean
  rolledBack: boolean
}

export interface LifecycleEvent {
  action: 'add' | 'promote' | 'demote' | 'rollback' | 'mark-health'
  version: string
  from?: Stage
  to?: Stage
  at: string
  reason?: string
}

export interface ReleaseHistory {
  modelId: string
  releases: Release[]
  /** Versions that were in production and were replaced while good, oldest first. */
  knownGood: string[]
  history: LifecycleEvent[]
}

const lifecycleMarker = Symbol.for('llmesh.error.LifecycleError')

export class LifecycleError extends LlmeshError {
  protected readonly [lifecycleMarker] = true
  readonly modelId: string
  readonly version: string | undefined

  constructor({
    code,
    message,
    modelId,
    version,
  }: { code: string; message: string; modelId: string; version?: string }) {
    super({ code, message })
    this.name = 'LifecycleError'
    this.modelId = modelId
    this.version = version
  }

  static override isInstance(error: unknown): error is LifecycleError {
    return hasMarker(error, lifecycleMarker)
  }
}

const nextStage: Record<Stage, Stage | undefined> = {
  experimental: 'staging',
  staging: 'production',
  production: undefined,
}

export function createReleaseHistory(modelId: string): ReleaseHistory {
  return { modelId, releases: [], knownGood: [], history: [] }
}

export function addRelease(
  state: ReleaseHistory,
  version: string,
  { at = new Date().toISOString(), healthy = false } = {},
): ReleaseHistory {
  if (state.releases.some((release) => release.version === version))
    throw new LifecycleError({
      code: 'LLMESH_RELEASE_EXISTS',
      message: `${state.modelId}@${version} already exists`,
      modelId: state.modelId,
      version,
    })
  return {
    ...state,
    releases: [...state.releases, { version, stage: 'experimental', healthy, rolledBack: false }],
    history: [...state.history, { action: 'add', version, to: 'experimental', at }],
  }
}

/** Records the outcome of verification and the smoke test for a version. */
export function markHealth(
  state: ReleaseHistory,
  version: string,
  healthy: boolean,
  { at = new Date().toISOString(), reason }: { at?: string; reason?: string } = {},
): ReleaseHistory {
  findRelease(state, version)
  return {
    ...state,
    releases: state.releases.map((release) =>
      release.version === version ? { ...release, healthy } : release,
    ),
    history: [
      ...state.history,
      {
        action: 'mark-health',
        version,
        at,
        ...(reason === undefined
          ? {}
          : { reason: `${healthy ? 'healthy' : 'unhealthy'}: ${reason}` }),
      },
    ],
  }
}

export function production(state: ReleaseHistory): Release | undefined {
  return state.releases.find((release) => release.stage === 'production')
}

/** Moves `version` one stage up, following the rules at the top of this file. */
export function promote(
  state: ReleaseHistory,
  version: string,
  { at = new Date().toISOString() } = {},
): ReleaseHistory {
  const release = findRelease(state, version)
  const fail = (code: string, message: string) =>
    new LifecycleError({
      code,
      message: `Cannot promote ${state.modelId}@${version}: ${message}`,
      modelId: state.modelId,
      version,
    })
  if (release.rolledBack)
    throw fail('LLMESH_RELEASE_ROLLED_BACK', 'it was rolled back; publish a new version instead')
  const to = nextStage[release.stage]
  if (to === undefined) throw fail('LLMESH_ALREADY_PRODUCTION', 'it is already in production')
  if (to === 'production' && !release.healthy)
    throw fail('LLMESH_RELEASE_UNHEALTHY', 'it has not passed verification and its smoke test')

  const current = to === 'production' ? production(state) : undefined
  const history: LifecycleEvent[] = [...state.history]
  if (current !== undefined)
    history.push({
      action: 'demote',
      version: current.version,
      from: 'production',
      to: 'staging',
      at,
      reason: `replaced by ${version}`,
    })
  history.push({ action: 'promote', version, from: release.stage, to, at })
  return {
    ...state,
    releases: state.releases.map((entry) => {
      if (entry.version === version) return { ...entry, stage: to }
      if (entry.version === current?.version) return { ...entry, stage: 'staging' }
      return entry
    }),
    knownGood:
      current === undefined
        ? state.knownGood
        : [...state.knownGood.filter((known) => known !== current.version), current.version],
    history,
  }
}

/** Takes the production version out and puts back the last known good one. */
export function rollback(
  state: ReleaseHistory,
  { at = new Date().toISOString(), reason }: { at?: string; reason?: string } = {},
): ReleaseHistory {
  const current = production(state)
  if (current === undefined)
    throw new LifecycleError({
      code: 'LLMESH_NOTHING_IN_PRODUCTION',
      message: `Cannot roll back ${state.modelId}: no version is in production`,
      modelId: state.modelId,
    })
  const candidates = state.knownGood.filter((version) => {
    const release = state.releases.find((entry) => entry.version === version)
    return release?.healthy === true && !release.rolledBack
  })
  const target = candidates.at(-1)
  if (target === undefined)
    throw new LifecycleError({
      code: 'LLMESH_NO_KNOWN_GOOD',
      message: `Cannot roll back ${state.modelId}@${current.version}: no earlier production version is known good`,
      modelId: state.modelId,
      version: current.version,
    })
  return {
    ...state,
    releases: state.releases.map((release) => {
      if (release.version === current.version)
        return { ...release, stage: 'experimental', rolledBack: true }
      if (release.version === target) return { ...release, stage: 'production' }
      return release
    }),
    knownGood: state.knownGood.filter((version) => version !== target),
    history: [
      ...state.history,
      {
        action: 'rollback',
        version: current.version,
        from: 'production',
        to: 'experimental',
        at,
        ...(reason === undefined ? {} : { reason }),
      },
      {
        action: 'promote',
        version: target,
        from: findRelease(state, target).stage,
        to: 'production',
        at,
        reason: `rollback from ${current.version}`,
      },
    ],
  }
}

function findRelease(state: ReleaseHistory, version: string): Release {
  const release = state.releases.find((entry) => entry.version === version)
  if (release === undefined)
    throw new LifecycleError({
      code: 'LLMESH_RELEASE_NOT_FOUND',
      message: `${state.modelId}@${version} is not a known release`,
      modelId: state.modelId,
      version,
    })
  return release
}
