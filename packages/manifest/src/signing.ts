/**
 * Ed25519 signatures over manifests and catalogs.
 *
 * What is signed is the document without its `signatures` field, serialized with RFC 8785 JSON
 * canonicalization (sorted keys, fixed number and string forms), so a signature survives
 * re-formatting, key reordering and conversion between YAML and JSON, but not any change of a value.
 * Verification works on the document as received (before defaults are applied), so adding even a
 * field the schema would accept breaks the signature.
 */
import {
  createHash,
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  type JsonWebKey,
  KeyObject,
  sign,
  verify,
} from 'node:crypto'
import { hasMarker, LlmeshError } from '@llmesh/core'
import canonicalize from 'canonicalize'
import { parseCatalog, parseManifest, readDocument } from './parse.js'
import type { Catalog, Manifest, Signature } from './schema.js'

export interface SigningKey {
  keyId: string
  privateKey: KeyObject
  publicKey: KeyObject
}

export interface TrustedKey {
  keyId: string
  publicKey: KeyObject
  /** Who this key belongs to, reported by `verify`. */
  name?: string
}

export type VerificationResult =
  | { valid: true; keyId: string; keyName: string | undefined }
  | { valid: false; reason: VerificationFailure; message: string }

export type VerificationFailure = 'unsigned' | 'untrusted-key' | 'bad-signature' | 'malformed'

const signatureMarker = Symbol.for('llmesh.error.SignatureError')

const failureCodes: Record<VerificationFailure, string> = {
  unsigned: 'LLMESH_UNSIGNED',
  'untrusted-key': 'LLMESH_UNTRUSTED_KEY',
  'bad-signature': 'LLMESH_BAD_SIGNATURE',
  malformed: 'LLMESH_SIGNATURE_MALFORMED',
}

/** A document's signature could not be verified; `reason` says why. */
export class SignatureError extends LlmeshError {
  protected readonly [signatureMarker] = true
  readonly reason: VerificationFailure

  constructor({
    reason,
    message,
    cause,
  }: { reason: VerificationFailure; message: string; cause?: unknown }) {
    super({ code: failureCodes[reason], message, cause })
    this.name = 'SignatureError'
    this.reason = reason
  }

  static override isInstance(error: unknown): error is SignatureError {
    return hasMarker(error, signatureMarker)
  }
}

/** The key id of a public key: `ed25519:` and the first 16 hex characters of the sha256 of its raw 32 bytes. */
export function keyIdOf(publicKey: KeyObject): string {
  const raw = Buffer.from(publicKey.export({ format: 'jwk' }).x!, 'base64url')
  return `ed25519:${createHash('sha256').update(raw).digest('hex').slice(0, 16)}`
}

export function generateSigningKey(): SigningKey {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519')
  return { keyId: keyIdOf(publicKey), privateKey, publicKey }
}

/** Imports a private key from PKCS#8 PEM or a JWK (object or JSON text). */
export function importSigningKey(key: string | JsonWebKey): SigningKey {
  const privateKey = toKeyObject(key, 'private')
  const publicKey = createPublicKey(privateKey)
  return { keyId: keyIdOf(publicKey), privateKey, publicKey }
}

/** Imports a public key from SPKI PEM or a JWK; a private key is accepted and reduced to its public half. */
export function importTrustedKey(key: string | JsonWebKey | KeyObject, name?: string): TrustedKey {
  const publicKey =
    key instanceof KeyObject
      ? key.type === 'private'
        ? createPublicKey(key)
        : key
      : toKeyObject(key, 'public')
  return { keyId: keyIdOf(publicKey), publicKey, ...(name === undefined ? {} : { name }) }
}

export function exportPrivateKeyPem(key: SigningKey): string {
  return key.privateKey.export({ format: 'pem', type: 'pkcs8' }).toString()
}

export function exportPublicKeyPem(key: SigningKey | TrustedKey): string {
  return key.publicKey.export({ format: 'pem', type: 'spki' }).toString()
}

export function exportPublicKeyJwk(key: SigningKey | TrustedKey): JsonWebKey {
  return { ...key.publicKey.export({ format: 'jwk' }), kid: key.keyId }
}

export function exportPrivateKeyJwk(key: SigningKey): JsonWebKey {
  return { ...key.privateKey.export({ format: 'jwk' }), kid: key.keyId }
}

function toKeyObject(key: string | JsonWebKey, kind: 'private' | 'public'): KeyObject {
  let keyObject: KeyObject
  try {
    const text = typeof key === 'string' ? key.trim() : undefined
    const jwk =
      text === undefined
        ? (key as JsonWebKey)
        : text.startsWith('{')
          ? (JSON.parse(text) as JsonWebKey)
          : undefined
    if (jwk !== undefined) {
      const { kid: _kid, ...material } = jwk as JsonWebKey & { kid?: string }
      keyObject =
        kind === 'private'
          ? createPrivateKey({ key: material, format: 'jwk' })
          : createPublicKey({ key: material, format: 'jwk' })
    } else keyObject = kind === 'private' ? createPrivateKey(text!) : createPublicKey(text!)
  } catch (cause) {
    throw new SignatureError({
      reason: 'malformed',
      message: `Could not read the ${kind} key: expected an Ed25519 PEM or JWK`,
      cause,
    })
  }
  if (keyObject.asymmetricKeyType !== 'ed25519')
    throw new SignatureError({
      reason: 'malformed',
      message: `The ${kind} key is ${keyObject.asymmetricKeyType}, not Ed25519`,
    })
  return keyObject
}

/** The exact bytes a signature covers: RFC 8785 canonical JSON of the document without `signatures`. */
export function signedBytes(document: object): Buffer {
  const { signatures: _signatures, ...content } = document as { signatures?: unknown }
  const text = canonicalize(content)
  if (text === undefined)
    throw new SignatureError({
      reason: 'malformed',
      message: 'The document cannot be serialized as JSON',
    })
  return Buffer.from(text, 'utf8')
}

/**
 * Adds this key's signature to a document (replacing an older one by the same key, keeping others).
 * Sign the document exactly as it will be published: a signed manifest must be written out as is.
 */
export function signDocument<Document extends object>(
  document: Document,
  key: SigningKey,
): Document & { signatures: Signature[] } {
  const value = sign(null, signedBytes(document), key.privateKey).toString('base64url')
  const existing = ((document as { signatures?: Signature[] }).signatures ?? []).filter(
    (signature) => signature.keyId !== key.keyId,
  )
  return {
    ...document,
    signatures: [...existing, { algorithm: 'ed25519', keyId: key.keyId, value }],
  }
}

/**
 * Checks a document's signatures against trusted keys. Valid when at least one signature by a
 * trusted key verifies; the result names that key, or says exactly why nothing did.
 */
export function verifyDocument(
  document: unknown,
  trusted: ReadonlyArray<TrustedKey>,
): VerificationResult {
  if (typeof document !== 'object' || document === null || Array.isArray(document))
    return { valid: false, reason: 'malformed', message: 'The document is not an object' }
  const signatures = (document as { signatures?: unknown }).signatures
  if (signatures === undefined || (Array.isArray(signatures) && signatures.length === 0))
    return { valid: false, reason: 'unsigned', message: 'The document has no signatures' }
  if (!Array.isArray(signatures))
    return { valid: false, reason: 'malformed', message: 'signatures is not a list' }

  let bytes: Buffer
  try {
    bytes = signedBytes(document)
  } catch (error) {
    return { valid: false, reason: 'malformed', message: (error as Error).message }
  }
  const byId = new Map(trusted.map((key) => [key.keyId, key]))
  const failed: string[] = []
  const untrusted: string[] = []
  for (const [index, signature] of signatures.entries()) {
    const { algorithm, keyId, value } = (signature ?? {}) as Partial<Record<string, unknown>>
    if (algorithm !== 'ed25519' || typeof keyId !== 'string' || typeof value !== 'string')
      return {
        valid: false,
        reason: 'malformed',
        message: `signatures[${index}] is not an ed25519 signature with keyId and value`,
      }
    const key = byId.get(keyId)
    if (key === undefined) {
      untrusted.push(keyId)
      continue
    }
    if (verify(null, bytes, key.publicKey, Buffer.from(value, 'base64url')))
      return { valid: true, keyId, keyName: key.name }
    failed.push(keyId)
  }
  if (failed.length > 0)
    return {
      valid: false,
      reason: 'bad-signature',
      message: `The signature by trusted key ${failed.join(', ')} does not match: the document was changed after signing`,
    }
  return {
    valid: false,
    reason: 'untrusted-key',
    message: `Signed only by keys that are not trusted: ${untrusted.join(', ')}`,
  }
}

/** Throws `SignatureError` unless `verifyDocument` finds a valid trusted signature. */
export function assertVerified(
  document: unknown,
  trusted: ReadonlyArray<TrustedKey>,
  source?: string,
): { keyId: string; keyName: string | undefined } {
  const result = verifyDocument(document, trusted)
  if (!result.valid)
    throw new SignatureError({
      reason: result.reason,
      message: source === undefined ? result.message : `${source}: ${result.message}`,
    })
  return { keyId: result.keyId, keyName: result.keyName }
}

/** Validates and signs a manifest; the result has defaults applied and must be published as is. */
export function signManifest(
  manifest: unknown,
  key: SigningKey,
  options: { allowInsecureMirrors?: boolean } = {},
): Manifest {
  return signDocument(parseManifest(manifest, options), key)
}

export function signCatalog(
  catalog: unknown,
  key: SigningKey,
  options: { allowInsecureMirrors?: boolean } = {},
): Catalog {
  return signDocument(parseCatalog(catalog, options), key)
}

export interface VerifiedManifest {
  manifest: Manifest
  keyId: string
  keyName: string | undefined
}

/**
 * Reads a signed manifest (text, bytes or value), checks its signature against trusted keys, then
 * validates it. Throws `SignatureError` or `ManifestError`.
 */
export function verifyManifest(
  input: unknown,
  trusted: ReadonlyArray<TrustedKey>,
  options: { source?: string; allowInsecureMirrors?: boolean } = {},
): VerifiedManifest {
  const { value, ...signer } = verifyThenParse(input, trusted, options, parseManifest)
  return { manifest: value, ...signer }
}

export function verifyCatalog(
  input: unknown,
  trusted: ReadonlyArray<TrustedKey>,
  options: { source?: string; allowInsecureMirrors?: boolean } = {},
): { catalog: Catalog; keyId: string; keyName: string | undefined } {
  const { value, ...signer } = verifyThenParse(input, trusted, options, parseCatalog)
  return { catalog: value, ...signer }
}

/** The signature is checked on the document as received, before validation applies defaults. */
function verifyThenParse<Value>(
  input: unknown,
  trusted: ReadonlyArray<TrustedKey>,
  options: { source?: string; allowInsecureMirrors?: boolean },
  parse: (document: unknown, options: { source?: string; allowInsecureMirrors?: boolean }) => Value,
): { value: Value; keyId: string; keyName: string | undefined } {
  const document = readDocument(input, options)
  const signer = assertVerified(document, trusted, options.source)
  return { value: parse(document, options), ...signer }
}
