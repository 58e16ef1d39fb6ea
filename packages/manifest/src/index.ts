/**
 * @packageDocumentation
 * Model manifests and catalogs: the root of trust for every byte llmesh moves.
 *
 * @example
 * ```ts
 * import { createManifest, generateSigningKey, importTrustedKey, signManifest, verifyManifest } from '@llmesh/manifest'
 *
 * const { manifest, pieceIndexes } = await createManifest({
 *   files: ['./tiny.gguf'],
 *   manifest: { id: 'acme/tiny', version: '1.0.0', license: { id: 'apache-2.0' } },
 * })
 * const key = generateSigningKey()
 * const signed = signManifest(manifest, key)
 * const { keyId } = verifyManifest(JSON.stringify(signed), [importTrustedKey(key.publicKey, 'acme')])
 * console.log(keyId, pieceIndexes[0]?.count)
 * ```
 */
export {
  type ArtifactFile,
  type CreatedManifest,
  type CreateManifestOptions,
  type CreateManifestProgressEvent,
  createManifest,
} from './create-manifest.js'
export { type FileHashes, type HashFileOptions, hashFile } from './hash-file.js'
export {
  addRelease,
  createReleaseHistory,
  LifecycleError,
  type LifecycleEvent,
  markHealth,
  production,
  promote,
  type Release,
  type ReleaseHistory,
  rollback,
} from './lifecycle.js'
export { ManifestError, type ManifestIssue } from './manifest-error.js'
export {
  issuesFromZod,
  type ParseOptions,
  parseCatalog,
  parseManifest,
  readCatalogFile,
  readDocument,
  readManifestFile,
} from './parse.js'
export {
  defaultPieceSize,
  hashPiece,
  MAX_PIECE_SIZE,
  MIN_PIECE_SIZE,
  PIECE_HASH_BYTES,
  PieceIndex,
  type PieceIndexDocument,
  pieceCount,
  pieceLayerDigest,
  pieceRange,
} from './pieces.js'
export {
  type Artifact,
  artifactPathSchema,
  artifactSchema,
  byteCountSchema,
  type Catalog,
  type CatalogInput,
  catalogSchema,
  createSchemas,
  type Manifest,
  type ManifestInput,
  manifestSchema,
  modelIdSchema,
  type PieceIntegrity,
  type Profile,
  pieceIntegritySchema,
  profiles,
  SCHEMA_VERSION,
  type SchemaOptions,
  type Signature,
  type Stage,
  sha256Schema,
  signatureSchema,
  stages,
  unsafePathReason,
  versionSchema,
} from './schema.js'
export {
  assertVerified,
  exportPrivateKeyJwk,
  exportPrivateKeyPem,
  exportPublicKeyJwk,
  exportPublicKeyPem,
  generateSigningKey,
  importSigningKey,
  importTrustedKey,
  keyIdOf,
  SignatureError,
  type SigningKey,
  signCatalog,
  signDocument,
  signedBytes,
  signManifest,
  type TrustedKey,
  type VerificationFailure,
  type VerificationResult,
  type VerifiedManifest,
  verifyCatalog,
  verifyDocument,
  verifyManifest,
} from './signing.js'
