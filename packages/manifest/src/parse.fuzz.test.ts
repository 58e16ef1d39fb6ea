import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { stringify } from 'yaml'
import { ManifestError } from './manifest-error.js'
import { parseCatalog, parseManifest } from './parse.js'
import { validManifest } from './test-fixtures.js'

/** Parsing must either succeed or throw ManifestError: never a TypeError, RangeError or a crash. */
function parsesOrThrowsManifestError(parse: (input: unknown) => unknown, input: unknown): boolean {
  try {
    parse(input)
    return true
  } catch (error) {
    if (ManifestError.isInstance(error)) return true
    throw error
  }
}

type Json = null | boolean | number | string | Json[] | { [key: string]: Json }

/** Replaces the value at a random path of a JSON value, or deletes or adds a key there. */
function mutate(value: Json, path: number[], replacement: Json, key: string, mode: number): Json {
  if (path.length === 0 || value === null || typeof value !== 'object') return replacement
  const [step, ...rest] = path as [number, ...number[]]
  if (Array.isArray(value)) {
    if (value.length === 0) return [replacement]
    const index = step % value.length
    const copy = [...value]
    if (rest.length === 0 && mode === 1) copy.splice(index, 1)
    else if (rest.length === 0 && mode === 2) copy.push(copy[index]!)
    else copy[index] = mutate(copy[index]!, rest, replacement, key, mode)
    return copy
  }
  const keys = Object.keys(value)
  if (keys.length === 0) return { [key]: replacement }
  const chosen = keys[step % keys.length]!
  const copy = { ...value }
  if (rest.length === 0 && mode === 1) delete copy[chosen]
  else if (rest.length === 0 && mode === 2) copy[key] = replacement
  else copy[chosen] = mutate(copy[chosen]!, rest, replacement, key, mode)
  return copy
}

const tricky = fc.oneof(
  fc.constantFrom(
    '',
    '..',
    '/abs',
    'a\\b',
    'x\0y',
    '__proto__',
    'constructor',
    'http://x',
    'hf:a/b/c',
    '1.0.0',
    'A'.repeat(64),
  ),
  fc.constantFrom(2 ** 53, -0, Number.NaN, Number.POSITIVE_INFINITY, 1e308, -1, 0.5, 65_536),
)
const jsonValue: fc.Arbitrary<Json> = fc.oneof(
  { depthSize: 'small' },
  fc.jsonValue() as fc.Arbitrary<Json>,
  tricky as fc.Arbitrary<Json>,
)

const mutation = fc.record({
  path: fc.array(fc.nat(20), { minLength: 0, maxLength: 5 }),
  replacement: jsonValue,
  key: fc.oneof(fc.string(), fc.constantFrom('__proto__', 'signatures', 'pieces', 'path')),
  mode: fc.nat(2),
})

describe('parsing never fails with anything but ManifestError', () => {
  it('on mutated valid manifests (values, deletions, additions)', () => {
    fc.assert(
      fc.property(fc.array(mutation, { minLength: 1, maxLength: 4 }), (mutations) => {
        let document = validManifest() as unknown as Json
        for (const { path, replacement, key, mode } of mutations)
          document = mutate(document, path, replacement, key, mode)
        expect(parsesOrThrowsManifestError(parseManifest, document)).toBe(true)
        expect(parsesOrThrowsManifestError(parseManifest, JSON.stringify(document))).toBe(true)
        expect(
          parsesOrThrowsManifestError((input) => parseCatalog(input), {
            schemaVersion: 1,
            models: [document],
          }),
        ).toBe(true)
      }),
      { numRuns: 3000 },
    )
  })

  it('on arbitrary values and arbitrary text', () => {
    fc.assert(
      fc.property(fc.oneof(fc.anything(), fc.string(), fc.json(), fc.uint8Array()), (input) => {
        expect(parsesOrThrowsManifestError(parseManifest, input)).toBe(true)
      }),
      { numRuns: 2000 },
    )
  })

  it('on corrupted JSON and YAML text of a valid manifest', () => {
    const json = JSON.stringify(validManifest(), null, 2)
    const yaml = stringify(validManifest())
    fc.assert(
      fc.property(
        fc.boolean(),
        fc.nat(),
        fc.nat(40),
        fc.string({ maxLength: 8 }),
        (useYaml, start, length, insert) => {
          const text = useYaml ? yaml : json
          const at = start % text.length
          const corrupted = text.slice(0, at) + insert + text.slice(at + length)
          expect(parsesOrThrowsManifestError(parseManifest, corrupted)).toBe(true)
        },
      ),
      { numRuns: 2000 },
    )
  })
})
