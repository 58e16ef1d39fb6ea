import { describe, expect, it } from 'vitest'
import { stringify } from 'yaml'
import {
  exportPrivateKeyJwk,
  exportPrivateKeyPem,
  exportPublicKeyJwk,
  exportPublicKeyPem,
  generateSigningKey,
  importSigningKey,
  importTrustedKey,
  SignatureError,
  signCatalog,
  signManifest,
  verifyCatalog,
  verifyDocument,
  verifyManifest,
} from './signing.js'
import { validManifest } from './test-fixtures.js'

const publisher = generateSigningKey()
const trusted = [importTrustedKey(exportPublicKeyPem(publisher), 'acme releases')]

function failure(input: unknown, keys = trusted): SignatureError {
  try {
    verifyManifest(input, keys)
  } catch (error) {
    if (SignatureError.isInstance(error)) return error
    throw error
  }
  throw new Error('expected verification to fail')
}

describe('manifest signatures', () => {
  const signed = signManifest(validManifest(), publisher)

  it('verifies and names the key that signed', () => {
    const result = verifyManifest(JSON.stringify(signed), trusted)
    expect(result.keyId).toBe(publisher.keyId)
    expect(result.keyName).toBe('acme releases')
    expect(result.manifest.id).toBe('acme/tiny-llama')
    expect(publisher.keyId).toMatch(/^ed25519:[0-9a-f]{16}$/)
  })

  it('survives re-formatting: indentation, key order and conversion to YAML', () => {
    const reordered = Object.fromEntries(Object.entries(signed).reverse())
    expect(verifyManifest(JSON.stringify(reordered, null, 4), trusted).keyId).toBe(publisher.keyId)
    expect(verifyManifest(stringify(signed), trusted).keyId).toBe(publisher.keyId)
  })

  it('fails when one character of a digest changed', () => {
    const text = JSON.stringify(signed)
    const digest = signed.artifacts[0]!.sha256
    const tampered = text.replace(
      digest,
      `${digest.slice(0, -1)}${digest.endsWith('a') ? 'b' : 'a'}`,
    )
    const error = failure(tampered)
    expect(error.code).toBe('LLMESH_BAD_SIGNATURE')
    expect(error.message).toContain('changed after signing')
  })

  it('fails when a field was added, even one the schema accepts', () => {
    expect(failure({ ...signed, description: 'now with malware' }).reason).toBe('bad-signature')
    expect(failure({ ...signed, sneaky: true }).reason).toBe('bad-signature')
  })

  it('rejects a signature by a key that is not trusted', () => {
    const stranger = generateSigningKey()
    const error = failure(signManifest(validManifest(), stranger))
    expect(error.code).toBe('LLMESH_UNTRUSTED_KEY')
    expect(error.message).toContain(stranger.keyId)
  })

  it('rejects an unsigned manifest and a malformed signature', () => {
    expect(failure(validManifest()).reason).toBe('unsigned')
    expect(failure({ ...signed, signatures: [{ keyId: publisher.keyId }] }).reason).toBe(
      'malformed',
    )
  })

  it('accepts any trusted signer among several and keeps other signatures when re-signing', () => {
    const second = generateSigningKey()
    const both = signManifest(signed, second)
    expect(both.signatures).toHaveLength(2)
    expect(verifyDocument(both, [importTrustedKey(second.publicKey)])).toMatchObject({
      valid: true,
      keyId: second.keyId,
    })
    const again = signManifest(both, second)
    expect(again.signatures).toHaveLength(2)
  })

  it('imports and exports keys as PEM and JWK', () => {
    const fromPem = importSigningKey(exportPrivateKeyPem(publisher))
    const fromJwk = importSigningKey(JSON.stringify(exportPrivateKeyJwk(publisher)))
    expect(fromPem.keyId).toBe(publisher.keyId)
    expect(fromJwk.keyId).toBe(publisher.keyId)
    const publicJwk = exportPublicKeyJwk(publisher)
    expect(publicJwk.kid).toBe(publisher.keyId)
    expect(importTrustedKey(publicJwk).keyId).toBe(publisher.keyId)
    expect(
      verifyManifest(signManifest(validManifest(), fromJwk), [importTrustedKey(publicJwk)]).keyId,
    ).toBe(publisher.keyId)
  })

  it('refuses keys that are not Ed25519 or not keys', () => {
    expect(() => importTrustedKey('not a key')).toThrow(SignatureError)
    expect(() => importSigningKey('{"kty":"oct","k":"AAAA"}')).toThrow(/Ed25519|key/)
  })
})

describe('catalog signatures', () => {
  it('signs and verifies a catalog the same way', () => {
    const catalog = signCatalog(
      {
        schemaVersion: 1,
        endpoints: ['https://catalog.example/c.json'],
        models: [validManifest()],
      },
      publisher,
    )
    expect(verifyCatalog(JSON.stringify(catalog), trusted).catalog.models).toHaveLength(1)
    const rewritten = { ...catalog, endpoints: ['https://evil.example/c.json'] }
    expect(() => verifyCatalog(rewritten, trusted)).toThrow(/changed after signing/)
  })
})
