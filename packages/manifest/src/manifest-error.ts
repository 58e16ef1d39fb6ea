import { hasMarker, LlmeshError } from '@llmesh/core'

export interface ManifestIssue {
  /** Where the problem is, as code reads it: `artifacts[2].sha256`, or `(root)`. */
  path: string
  message: string
}

const manifestMarker = Symbol.for('llmesh.error.ManifestError')

/**
 * A manifest, catalog or piece index is malformed. `issues` lists every problem found with its
 * exact path; the message names the first ones so that a log line alone is useful.
 */
export class ManifestError extends LlmeshError {
  protected readonly [manifestMarker] = true
  readonly issues: ManifestIssue[]
  /** The file or URL the document came from, when known. */
  readonly source: string | undefined

  constructor({
    issues,
    source,
    cause,
    code = 'LLMESH_MANIFEST_INVALID',
  }: {
    issues: ManifestIssue[]
    source?: string | undefined
    cause?: unknown
    code?: string
  }) {
    const shown = issues.slice(0, 3).map((issue) => `${issue.path}: ${issue.message}`)
    const more = issues.length > 3 ? ` (and ${issues.length - 3} more)` : ''
    super({
      code,
      message: `${source === undefined ? 'Invalid manifest' : `Invalid manifest ${source}`}: ${shown.join('; ')}${more}`,
      cause,
    })
    this.name = 'ManifestError'
    this.issues = issues
    this.source = source
  }

  static override isInstance(error: unknown): error is ManifestError {
    return hasMarker(error, manifestMarker)
  }
}
