import { readFile } from 'node:fs/promises'
import { formatIssuePath } from '@llmesh/core'
import { parseDocument as parseYamlDocument } from 'yaml'
import type { z } from 'zod'
import { ManifestError, type ManifestIssue } from './manifest-error.js'
import { type Catalog, createSchemas, type Manifest, type SchemaOptions } from './schema.js'

export interface ParseOptions extends SchemaOptions {
  /** `auto` (default) reads JSON when the text starts with `{`, YAML otherwise. */
  format?: 'json' | 'yaml' | 'auto'
  /** A file name or URL, quoted in error messages. */
  source?: string
  /** Largest document accepted, in bytes. Default 16 MiB. */
  maxBytes?: number
}

const strictSchemas = createSchemas()
const lenientSchemas = createSchemas({ allowInsecureMirrors: true })
const schemasFor = (options: SchemaOptions) =>
  options.allowInsecureMirrors ? lenientSchemas : strictSchemas

/**
 * Parses a model manifest from JSON or YAML text, bytes, or an already parsed value.
 * Returns the manifest with defaults applied, or throws `ManifestError` listing every problem
 * with its exact path (`artifacts[2].sha256`).
 */
export function parseManifest(input: unknown, options: ParseOptions = {}): Manifest {
  return validate(schemasFor(options).manifestSchema, readDocument(input, options), options.source)
}

/** Parses a catalog (a list of manifests and the endpoints it is served from). */
export function parseCatalog(input: unknown, options: ParseOptions = {}): Catalog {
  return validate(schemasFor(options).catalogSchema, readDocument(input, options), options.source)
}

/** Reads and parses a manifest file; `.json` is read as JSON, anything else by content. */
export async function readManifestFile(
  path: string,
  options: Omit<ParseOptions, 'source'> = {},
): Promise<Manifest> {
  return parseManifest(await readFile(path), { format: formatOf(path), ...options, source: path })
}

export async function readCatalogFile(
  path: string,
  options: Omit<ParseOptions, 'source'> = {},
): Promise<Catalog> {
  return parseCatalog(await readFile(path), { format: formatOf(path), ...options, source: path })
}

function formatOf(path: string): ParseOptions['format'] {
  if (path.endsWith('.json')) return 'json'
  if (path.endsWith('.yaml') || path.endsWith('.yml')) return 'yaml'
  return 'auto'
}

/**
 * Turns text or bytes into a plain value (JSON or YAML), or passes a non-text value through.
 * Syntax errors become `ManifestError` with a line and column.
 */
export function readDocument(input: unknown, options: ParseOptions = {}): unknown {
  const { maxBytes = 16 * 1024 * 1024, source } = options
  let text: string
  if (typeof input === 'string') text = input
  else if (input instanceof Uint8Array) {
    if (input.byteLength > maxBytes) throw tooLarge(input.byteLength, maxBytes, source)
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(input)
    } catch (cause) {
      throw new ManifestError({
        source,
        cause,
        issues: [{ path: '(root)', message: 'is not valid UTF-8' }],
      })
    }
  } else return input
  if (text.length > maxBytes) throw tooLarge(text.length, maxBytes, source)
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1)

  const format = options.format ?? 'auto'
  if (format === 'json' || (format === 'auto' && text.trimStart().startsWith('{'))) {
    try {
      return JSON.parse(text)
    } catch (cause) {
      const message = cause instanceof Error ? cause.message : String(cause)
      throw new ManifestError({
        source,
        cause,
        issues: [{ path: '(root)', message: `is not valid JSON: ${message}` }],
      })
    }
  }
  // uniqueKeys: a repeated key is an error, not a silent overwrite. maxAliasCount stops alias bombs.
  const document = parseYamlDocument(text, { uniqueKeys: true, prettyErrors: true })
  const [first] = document.errors
  if (first !== undefined) {
    const where =
      first.linePos?.[0] === undefined
        ? ''
        : ` at line ${first.linePos[0].line}, column ${first.linePos[0].col}`
    throw new ManifestError({
      source,
      cause: first,
      issues: [
        {
          path: '(root)',
          message: `is not valid YAML${where}: ${first.message.split('\n')[0]?.replace(/ at line \d+, column \d+:?$/, '')}`,
        },
      ],
    })
  }
  try {
    return document.toJS({ maxAliasCount: 100 })
  } catch (cause) {
    const message = cause instanceof Error ? cause.message : String(cause)
    throw new ManifestError({
      source,
      cause,
      issues: [{ path: '(root)', message: `is not valid YAML: ${message}` }],
    })
  }
}

function tooLarge(size: number, maxBytes: number, source: string | undefined): ManifestError {
  return new ManifestError({
    source,
    code: 'LLMESH_MANIFEST_TOO_LARGE',
    issues: [{ path: '(root)', message: `is ${size} bytes, more than the limit of ${maxBytes}` }],
  })
}

function validate<Schema extends z.ZodType>(
  schema: Schema,
  value: unknown,
  source: string | undefined,
): z.output<Schema> {
  const result = schema.safeParse(value)
  if (result.success) return result.data
  throw new ManifestError({ source, issues: issuesFromZod(result.error), cause: result.error })
}

/** Zod issues as manifest issues; an unknown key is reported at its own path. */
export function issuesFromZod(error: z.ZodError): ManifestIssue[] {
  return error.issues.flatMap((issue): ManifestIssue[] => {
    if (issue.code === 'unrecognized_keys')
      return issue.keys.map((key) => ({
        path: formatIssuePath([...issue.path, key]),
        message: 'is not a known field',
      }))
    return [{ path: formatIssuePath(issue.path), message: issue.message }]
  })
}
