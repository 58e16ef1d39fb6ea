import { describe, expect, it } from 'vitest'
import { stringify } from 'yaml'
import { ManifestError } from './manifest-error.js'
import { parseCatalog, parseManifest } from './parse.js'
import { digestA, validManifest } from './test-fixtures.js'

/** Parses and returns the ManifestError, failing the test if parsing succeeds or throws something else. */
function rejection(input: unknown, options?: Parameters<typeof parseManifest>[1]): ManifestError {
  try {
    parseManifest(input, options)
  } catch (error) {
    if (ManifestError.isInstance(error)) return error
    throw error
  }
  throw new Error('expected the manifest to be rejected')
}

function withArtifact(change: (artifact: Record<string, unknown>) => void, index = 0) {
  const manifest = validManifest()
  change(manifest.artifacts[index] as Record<string, unknown>)
  return manifest
}

describe('parseManifest', () => {
  it('accepts a complete manifest as a value, JSON text, YAML text and bytes', () => {
    const manifest = validManifest()
    const fromValue = parseManifest(manifest)
    expect(fromValue.artifacts[0]?.pieces?.pieceSize).toBe(65_536)
    expect(parseManifest(JSON.stringify(manifest, null, 2))).toEqual(fromValue)
    expect(parseManifest(stringify(manifest))).toEqual(fromValue)
    expect(parseManifest(new TextEncoder().encode(JSON.stringify(manifest)))).toEqual(fromValue)
  })

  it('applies defaults: stage experimental, no mirrors, no tags', () => {
    const { stage: _stage, tags: _tags, ...manifest } = validManifest()
    const parsed = parseManifest(manifest)
    expect(parsed.stage).toBe('experimental')
    expect(parsed.tags).toEqual([])
    expect(parsed.artifacts[1]?.mirrors).toEqual([])
  })

  it.each([
    [
      'an unknown top-level key',
      () => ({ ...validManifest(), extra: 1 }),
      'extra',
      'is not a known field',
    ],
    [
      'an unknown nested key',
      () =>
        withArtifact((a) => {
          a.checksum = 'x'
        }),
      'artifacts[0].checksum',
      'is not a known field',
    ],
    [
      'an absolute path',
      () =>
        withArtifact((a) => {
          a.path = '/etc/passwd'
        }),
      'artifacts[0].path',
      'relative',
    ],
    [
      'a Windows drive path',
      () =>
        withArtifact((a) => {
          a.path = 'C:/models/x.gguf'
        }),
      'artifacts[0].path',
      'drive',
    ],
    [
      'a .. segment',
      () =>
        withArtifact((a) => {
          a.path = 'models/../../escape.gguf'
        }),
      'artifacts[0].path',
      '".."',
    ],
    [
      'a . segment',
      () =>
        withArtifact((a) => {
          a.path = './x.gguf'
        }),
      'artifacts[0].path',
      '"."',
    ],
    [
      'a backslash',
      () =>
        withArtifact((a) => {
          a.path = 'models\\x.gguf'
        }),
      'artifacts[0].path',
      'backslash',
    ],
    [
      'a NUL character',
      () =>
        withArtifact((a) => {
          a.path = 'x.gguf\0.txt'
        }),
      'artifacts[0].path',
      'NUL',
    ],
    [
      'an empty path',
      () =>
        withArtifact((a) => {
          a.path = ''
        }),
      'artifacts[0].path',
      'empty',
    ],
    [
      'an empty segment',
      () =>
        withArtifact((a) => {
          a.path = 'a//b.gguf'
        }),
      'artifacts[0].path',
      'empty segment',
    ],
    [
      'a duplicate path',
      () =>
        withArtifact((a) => {
          a.path = 'tiny-llama.Q8_0.gguf'
        }, 1),
      'artifacts[1].path',
      'duplicates artifacts[0].path',
    ],
    [
      'a duplicate path differing in case',
      () =>
        withArtifact((a) => {
          a.path = 'TINY-LLAMA.Q8_0.GGUF'
        }, 1),
      'artifacts[1].path',
      'duplicates',
    ],
    [
      'a size above 2^53',
      () =>
        withArtifact((a) => {
          a.size = 2 ** 53
        }),
      'artifacts[0].size',
      'safe integer',
    ],
    [
      'a fractional size',
      () =>
        withArtifact((a) => {
          a.size = 1.5
        }),
      'artifacts[0].size',
      'safe integer',
    ],
    [
      'a negative size',
      () =>
        withArtifact((a) => {
          a.size = -1
        }),
      'artifacts[0].size',
      'negative',
    ],
    [
      'a size given as a string',
      () =>
        withArtifact((a) => {
          a.size = '100'
        }),
      'artifacts[0].size',
      'number',
    ],
    [
      'an upper-case digest',
      () =>
        withArtifact((a) => {
          a.sha256 = digestA.toUpperCase()
        }),
      'artifacts[0].sha256',
      '64 lowercase hex',
    ],
    [
      'a short digest',
      () =>
        withArtifact((a) => {
          a.sha256 = 'abc'
        }),
      'artifacts[0].sha256',
      '64 lowercase hex',
    ],
    [
      'a non-hex digest',
      () =>
        withArtifact((a) => {
          a.sha256 = 'g'.repeat(64)
        }),
      'artifacts[0].sha256',
      '64 lowercase hex',
    ],
    [
      'an http mirror',
      () =>
        withArtifact((a) => {
          a.mirrors = ['http://mirror.example/x.gguf']
        }),
      'artifacts[0].mirrors[0]',
      'https',
    ],
    [
      'an ftp mirror',
      () =>
        withArtifact((a) => {
          a.mirrors = ['ftp://mirror.example/x.gguf']
        }),
      'artifacts[0].mirrors[0]',
      'ftp:',
    ],
    [
      'a relative mirror',
      () =>
        withArtifact((a) => {
          a.mirrors = ['/x.gguf']
        }),
      'artifacts[0].mirrors[0]',
      'absolute URL',
    ],
    [
      'a mirror with credentials',
      () =>
        withArtifact((a) => {
          a.mirrors = ['https://user:secret@mirror.example/x']
        }),
      'artifacts[0].mirrors[0]',
      'credentials',
    ],
    [
      'a version that does not parse',
      () => ({ ...validManifest(), version: 'v1' }),
      'version',
      'semantic version',
    ],
    [
      'a version with build noise',
      () => ({ ...validManifest(), version: '1.0' }),
      'version',
      'semantic version',
    ],
    [
      'a wrong schema version',
      () => ({ ...validManifest(), schemaVersion: 2 }),
      'schemaVersion',
      'must be 1',
    ],
    ['an unknown stage', () => ({ ...validManifest(), stage: 'beta' }), 'stage', ''],
    [
      'a piece size that is not a power of two',
      () =>
        withArtifact((a) => {
          a.pieces = { algorithm: 'sha256-pieces', pieceSize: 3000, layer: digestA }
        }),
      'artifacts[0].pieces.pieceSize',
      'power of two',
    ],
    [
      'an entrypoint that is not an artifact',
      () => ({ ...validManifest(), entrypoint: { artifact: 'missing.gguf' } }),
      'entrypoint.artifact',
      'not among the artifacts',
    ],
    ['no artifacts', () => ({ ...validManifest(), artifacts: [] }), 'artifacts', 'at least one'],
  ])('rejects %s at its path', (_name, make, path, message) => {
    const error = rejection(make())
    expect(error.code).toBe('LLMESH_MANIFEST_INVALID')
    const issue = error.issues.find((candidate) => candidate.path === path)
    expect(issue, `issues were ${JSON.stringify(error.issues)}`).toBeDefined()
    expect(issue!.message).toContain(message)
    expect(error.message).toContain(path)
  })

  it('accepts http mirrors only when allowed', () => {
    const manifest = withArtifact((a) => {
      a.mirrors = ['http://127.0.0.1:8080/x.gguf']
    })
    expect(rejection(manifest).issues[0]?.message).toContain('allowInsecureMirrors')
    expect(parseManifest(manifest, { allowInsecureMirrors: true }).artifacts[0]?.mirrors).toEqual([
      'http://127.0.0.1:8080/x.gguf',
    ])
  })

  it('reports every problem, not only the first', () => {
    const manifest = withArtifact((a) => {
      a.sha256 = 'x'
      a.size = -5
    })
    const paths = rejection(manifest).issues.map((issue) => issue.path)
    expect(paths).toEqual(expect.arrayContaining(['artifacts[0].sha256', 'artifacts[0].size']))
  })

  it('names the source and the line of a syntax error', () => {
    const json = rejection('{"schemaVersion": 1,', { source: 'models/tiny.json' })
    expect(json.message).toContain('models/tiny.json')
    expect(json.issues[0]?.message).toContain('not valid JSON')
    const yaml = rejection('schemaVersion: 1\nid: [unclosed\n')
    expect(yaml.issues[0]?.message).toMatch(/not valid YAML at line \d+/)
  })

  it('rejects a YAML document that repeats a key instead of keeping the last value', () => {
    const error = rejection(`${stringify(validManifest())}\nversion: 9.9.9\n`)
    expect(error.issues[0]?.message).toContain('not valid YAML')
  })

  it('rejects invalid UTF-8 and oversized input', () => {
    expect(rejection(new Uint8Array([0x7b, 0xff, 0xfe])).issues[0]?.message).toContain('UTF-8')
    expect(rejection('{}'.padEnd(2000), { maxBytes: 1000 }).code).toBe('LLMESH_MANIFEST_TOO_LARGE')
  })

  it('rejects values that are not objects', () => {
    for (const value of [null, 42, 'plain text', [], true])
      expect(rejection(value).issues.length).toBeGreaterThan(0)
  })
})

describe('parseCatalog', () => {
  it('accepts a list of manifests and rejects a duplicate id and version', () => {
    const catalog = {
      schemaVersion: 1,
      endpoints: ['https://catalog.example/catalog.json'],
      models: [validManifest()],
    }
    expect(parseCatalog(catalog).models).toHaveLength(1)
    try {
      parseCatalog({ ...catalog, models: [validManifest(), validManifest()] })
      expect.unreachable()
    } catch (error) {
      expect(ManifestError.isInstance(error)).toBe(true)
      expect((error as ManifestError).issues[0]).toMatchObject({
        path: 'models[1]',
        message: expect.stringContaining('acme/tiny-llama@1.2.0'),
      })
    }
  })

  it('names the path of a problem inside a model', () => {
    const model = withArtifact((a) => {
      a.path = '../x'
    })
    try {
      parseCatalog({ schemaVersion: 1, models: [validManifest(), model] })
      expect.unreachable()
    } catch (error) {
      expect((error as ManifestError).issues[0]?.path).toBe('models[1].artifacts[0].path')
    }
  })
})
