import semver from 'semver'
import { z } from 'zod'

/** The one schema version this package reads and writes. */
export const SCHEMA_VERSION = 1

export const stages = ['experimental', 'staging', 'production'] as const
export const profiles = ['gguf', 'hf-transformers', 'hf-diffusers', 'custom'] as const

/** A sha256 digest: exactly 64 lowercase hex characters, the one spelling used everywhere. */
export const sha256Schema = z
  .string()
  .regex(/^[0-9a-f]{64}$/, { message: 'must be a sha256 digest: 64 lowercase hex characters' })

/** A byte count or offset: a non-negative safe integer (JavaScript numbers lose bytes past 2^53). */
export const byteCountSchema = z
  .number({ message: 'must be a number of bytes' })
  .refine(Number.isSafeInteger, { message: 'must be a safe integer (at most 2^53 - 1)' })
  .refine((value) => value >= 0, { message: 'must not be negative' })

/**
 * Explains why `path` is not a safe artifact path, or returns undefined when it is. A safe path is
 * relative, uses `/` only, has no empty, `.` or `..` segment and no control character, so joining it
 * to a model's folder can never leave that folder on any operating system.
 */
export function unsafePathReason(path: string): string | undefined {
  if (path.length === 0) return 'must not be empty'
  if (path.length > 1024) return 'must be at most 1024 characters'
  if (path.includes('\0')) return 'must not contain a NUL character'
  // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what we reject
  if (/[\u0001-\u001f\u007f]/.test(path)) return 'must not contain control characters'
  if (path.includes('\\')) return 'must use / as separator, not a backslash'
  if (path.startsWith('/')) return 'must be relative, not absolute'
  if (/^[A-Za-z]:/.test(path)) return 'must be relative, not a drive path'
  if (path.endsWith('/')) return 'must name a file, not end with /'
  for (const segment of path.split('/')) {
    if (segment === '') return 'must not contain an empty segment (//)'
    if (segment === '.' || segment === '..') return `must not contain a "${segment}" segment`
  }
  return undefined
}

export const artifactPathSchema = z.string().superRefine((path, context) => {
  const reason = unsafePathReason(path)
  if (reason !== undefined) context.addIssue({ code: 'custom', message: reason })
})

/** Model ids look like `owner/name` or `name`: letters, digits, `.`, `_`, `-`. */
export const modelIdSchema = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}(\/[A-Za-z0-9][A-Za-z0-9._-]{0,127})?$/, {
    message: 'must look like "owner/name" or "name" (letters, digits, ".", "_", "-")',
  })

export const versionSchema = z.string().refine((value) => semver.valid(value) === value, {
  message: 'must be a semantic version such as 1.0.0 or 2.1.0-rc.1',
})

const isoDateSchema = z.iso.datetime({ offset: true, message: 'must be an ISO 8601 date-time' })

export interface SchemaOptions {
  /** Accept `http:` mirror URLs (a local test mirror). Off by default: mirrors must be https or hf. */
  allowInsecureMirrors?: boolean
}

/** Builds the schemas for one set of options; `manifestSchema` and `catalogSchema` are the strict defaults. */
export function createSchemas({ allowInsecureMirrors = false }: SchemaOptions = {}) {
  const allowed = allowInsecureMirrors ? ['https:', 'hf:', 'http:'] : ['https:', 'hf:']
  const mirrorUrlSchema = z.string().superRefine((value, context) => {
    let url: URL
    try {
      url = new URL(value)
    } catch {
      context.addIssue({ code: 'custom', message: 'must be an absolute URL' })
      return
    }
    if (!allowed.includes(url.protocol)) {
      context.addIssue({
        code: 'custom',
        message:
          url.protocol === 'http:'
            ? 'must use https (http mirrors need allowInsecureMirrors)'
            : `must use ${allowed.join(' or ')}, not ${url.protocol}`,
      })
    }
    if (url.username !== '' || url.password !== '')
      context.addIssue({ code: 'custom', message: 'must not embed credentials' })
  })

  const pieceIntegritySchema = z.strictObject({
    /** The scheme: SHA-256 of each fixed-size piece; see pieces.ts and the README. */
    algorithm: z.literal('sha256-pieces'),
    /** Bytes per piece, a power of two from 1 KiB to 64 MiB; the last piece may be shorter. */
    pieceSize: z
      .number()
      .int()
      .refine((size) => size >= 1024 && size <= 64 * 1024 * 1024 && (size & (size - 1)) === 0, {
        message: 'must be a power of two from 1024 to 67108864',
      }),
    /** sha256 of the concatenated 32-byte piece hashes: the root that every piece checks against. */
    layer: sha256Schema,
  })

  const artifactSchema = z.strictObject({
    path: artifactPathSchema,
    size: byteCountSchema,
    sha256: sha256Schema,
    mediaType: z.string().min(1).max(255).optional(),
    mirrors: z.array(mirrorUrlSchema).default([]),
    pieces: pieceIntegritySchema.optional(),
  })

  const licenseSchema = z.strictObject({
    /** SPDX identifier or a name such as `llama3.1`. */
    id: z.string().min(1).max(200),
    url: z.url({ protocol: /^https?$/ }).optional(),
    approval: z
      .strictObject({
        status: z.enum(['approved', 'pending', 'rejected']),
        by: z.string().min(1).optional(),
        at: isoDateSchema.optional(),
      })
      .optional(),
  })

  const sourceSchema = z.strictObject({
    provider: z.string().min(1).max(100),
    repo: z.string().min(1).max(500).optional(),
    revision: z.string().min(1).max(200).optional(),
  })

  const entrypointSchema = z.strictObject({
    /** The artifact to load: for GGUF, the model file (the first shard when split). */
    artifact: artifactPathSchema,
    contextSize: z.number().int().positive().optional(),
    /** Layers to offload: a count, or "auto" / "max". */
    gpuLayers: z.union([z.number().int().nonnegative(), z.enum(['auto', 'max'])]).optional(),
  })

  const hardwareSchema = z.strictObject({
    minRamBytes: byteCountSchema.optional(),
    minVramBytes: byteCountSchema.optional(),
    accelerators: z.array(z.enum(['cpu', 'cuda', 'metal', 'vulkan'])).optional(),
  })

  const smokeTestSchema = z.strictObject({
    prompt: z.string().min(1),
    maxTokens: z.number().int().min(1).max(4096),
    maxSeconds: z.number().positive().max(3600),
    expect: z
      .strictObject({
        contains: z.string().min(1).optional(),
        regex: z
          .string()
          .refine(isValidRegex, { message: 'must be a valid regular expression' })
          .optional(),
        minTokens: z.number().int().min(1).optional(),
      })
      .optional(),
  })

  const signatureSchema = z.strictObject({
    algorithm: z.literal('ed25519'),
    keyId: z.string().min(1).max(100),
    /** base64url of the 64-byte Ed25519 signature over the canonical document. */
    value: z
      .string()
      .regex(/^[A-Za-z0-9_-]{86}$/, { message: 'must be a base64url Ed25519 signature' }),
  })

  const manifestSchema = z
    .strictObject({
      schemaVersion: z.literal(SCHEMA_VERSION, { message: `must be ${SCHEMA_VERSION}` }),
      id: modelIdSchema,
      version: versionSchema,
      profile: z.enum(profiles),
      name: z.string().min(1).max(200).optional(),
      description: z.string().max(5000).optional(),
      license: licenseSchema,
      source: sourceSchema.optional(),
      stage: z.enum(stages).default('experimental'),
      artifacts: z.array(artifactSchema).min(1, { message: 'must list at least one artifact' }),
      entrypoint: entrypointSchema.optional(),
      hardware: hardwareSchema.optional(),
      tags: z.array(z.string().min(1).max(64)).default([]),
      tokenCostPer1k: z.number().nonnegative().optional(),
      smokeTest: smokeTestSchema.optional(),
      createdAt: isoDateSchema.optional(),
      signatures: z.array(signatureSchema).optional(),
    })
    .superRefine((manifest, context) => {
      // Paths compare case-insensitively: two artifacts must not collide on macOS or Windows.
      const seen = new Map<string, number>()
      manifest.artifacts.forEach((artifact, index) => {
        const key = artifact.path.toLowerCase()
        const first = seen.get(key)
        if (first === undefined) seen.set(key, index)
        else
          context.addIssue({
            code: 'custom',
            path: ['artifacts', index, 'path'],
            message: `duplicates artifacts[${first}].path "${manifest.artifacts[first]!.path}"`,
          })
      })
      if (
        manifest.entrypoint !== undefined &&
        !seen.has(manifest.entrypoint.artifact.toLowerCase())
      )
        context.addIssue({
          code: 'custom',
          path: ['entrypoint', 'artifact'],
          message: `names "${manifest.entrypoint.artifact}", which is not among the artifacts`,
        })
    })

  const catalogSchema = z
    .strictObject({
      schemaVersion: z.literal(SCHEMA_VERSION, { message: `must be ${SCHEMA_VERSION}` }),
      name: z.string().min(1).max(200).optional(),
      /** Where this catalog is served from; a client may fetch it from any of them. */
      endpoints: z.array(mirrorUrlSchema).default([]),
      updatedAt: isoDateSchema.optional(),
      models: z.array(manifestSchema),
      /**
       * Models a client must hold before it counts as ready (`llmesh precache`): `id` (the highest
       * version of that id in this catalog) or `id@version`.
       */
      required: z.array(z.string().min(1).max(300)).default([]),
      signatures: z.array(signatureSchema).optional(),
    })
    .superRefine((catalog, context) => {
      catalog.required.forEach((reference, index) => {
        const at = reference.lastIndexOf('@')
        const id = at > 0 ? reference.slice(0, at) : reference
        const version = at > 0 ? reference.slice(at + 1) : undefined
        if (
          !catalog.models.some(
            (model) => model.id === id && (version === undefined || model.version === version),
          )
        )
          context.addIssue({
            code: 'custom',
            path: ['required', index],
            message: `names "${reference}", which is not among the catalog's models`,
          })
      })
      const seen = new Map<string, number>()
      catalog.models.forEach((model, index) => {
        const key = `${model.id}@${model.version}`
        const first = seen.get(key)
        if (first === undefined) seen.set(key, index)
        else
          context.addIssue({
            code: 'custom',
            path: ['models', index],
            message: `duplicates models[${first}] (${key})`,
          })
      })
    })

  return { manifestSchema, catalogSchema, artifactSchema, pieceIntegritySchema, signatureSchema }
}

function isValidRegex(pattern: string): boolean {
  try {
    new RegExp(pattern)
    return true
  } catch {
    return false
  }
}

const strict = createSchemas()

export const manifestSchema = strict.manifestSchema
export const catalogSchema = strict.catalogSchema
export const artifactSchema = strict.artifactSchema
export const pieceIntegritySchema = strict.pieceIntegritySchema
export const signatureSchema = strict.signatureSchema

/** A validated model manifest (defaults applied). */
export type Manifest = z.output<typeof manifestSchema>
/** What a manifest author writes: defaults may be left out. */
export type ManifestInput = z.input<typeof manifestSchema>
export type Artifact = z.output<typeof artifactSchema>
export type PieceIntegrity = z.output<typeof pieceIntegritySchema>
export type Signature = z.output<typeof signatureSchema>
export type Catalog = z.output<typeof catalogSchema>
export type CatalogInput = z.input<typeof catalogSchema>
export type Stage = (typeof stages)[number]
export type Profile = (typeof profiles)[number]
