import { createHash } from 'node:crypto'
import { readFile, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { PieceIndex, parseManifest } from '@llmesh/manifest'
import { createTempDir, type TempDir } from '@llmesh/testkit'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { exitCodes } from './exit-codes.js'
import { llmesh } from './test-io.js'

let directory: TempDir
const at = (name: string) => join(directory.path, name)

beforeAll(async () => {
  directory = await createTempDir('llmesh-cli-')
})
afterAll(() => directory.remove())

describe('llmesh', () => {
  it('prints its version and help', async () => {
    expect(await llmesh('--version')).toMatchObject({ code: 0, out: '0.0.0-test\n' })
    const help = await llmesh('--help')
    expect(help.code).toBe(0)
    for (const command of ['manifest', 'keys', 'testkit']) expect(help.out).toContain(command)
  })

  it('exits 2 on wrong usage', async () => {
    expect((await llmesh('no-such-command')).code).toBe(exitCodes.usage)
    expect((await llmesh('manifest', 'create', at('x'))).code).toBe(exitCodes.usage)
    expect((await llmesh('testkit', 'gguf', at('x.gguf'), '--layers', 'many')).code).toBe(
      exitCodes.usage,
    )
    // With --json, a script reads what was wrong from stdout too.
    const usage = await llmesh('--json', 'testkit', 'gguf', at('x.gguf'), '--layers', 'many')
    expect(usage.code).toBe(exitCodes.usage)
    expect(JSON.parse(usage.out)).toEqual({
      error: {
        name: 'UsageError',
        code: 'LLMESH_USAGE',
        commanderCode: 'commander.invalidArgument',
        message: expect.stringMatching(/--layers <number>.*'many' is invalid/),
      },
    })
  })

  it('writes a tiny model, creates, signs and verifies its manifest end to end', async () => {
    const model = await llmesh(
      'testkit',
      'gguf',
      at('tiny.gguf'),
      '--type',
      'q8_0',
      '--seed',
      '3',
      '--json',
    )
    expect(model.code).toBe(0)
    const written = JSON.parse(model.out) as { sha256: string; size: number }
    expect(
      createHash('sha256')
        .update(await readFile(at('tiny.gguf')))
        .digest('hex'),
    ).toBe(written.sha256)

    const created = await llmesh(
      'manifest',
      'create',
      at('tiny.gguf'),
      '--id',
      'acme/tiny',
      '--model-version',
      '1.0.0',
      '--license',
      'apache-2.0',
      '--piece-size',
      '16384',
      '--mirror',
      'https://mirror.example/models/',
      '--out',
      at('out/manifest.json'),
    )
    expect(created.code).toBe(0)
    expect(created.err).toContain(`hashed tiny.gguf ${written.sha256}`)
    const manifest = parseManifest(await readFile(at('out/manifest.json')))
    expect(manifest.artifacts[0]).toMatchObject({
      path: 'tiny.gguf',
      sha256: written.sha256,
      mirrors: ['https://mirror.example/models/tiny.gguf'],
    })
    const index = PieceIndex.fromJSON(
      JSON.parse(await readFile(at(`out/pieces/${written.sha256}.json`), 'utf8')),
    )
    expect(() => index.assertMatches(manifest.artifacts[0]!)).not.toThrow()

    expect((await llmesh('manifest', 'validate', at('out/manifest.json'))).out).toContain(
      'valid manifest acme/tiny@1.0.0',
    )

    const keys = await llmesh(
      'keys',
      'generate',
      '--out-dir',
      at('keys'),
      '--name',
      'release',
      '--json',
    )
    const { keyId } = JSON.parse(keys.out) as { keyId: string }
    expect((await stat(at('keys/release.private.pem'))).mode & 0o777).toBe(0o600)

    expect(
      (
        await llmesh(
          'manifest',
          'sign',
          at('out/manifest.json'),
          '--key',
          at('keys/release.private.pem'),
          '--out',
          at('out/signed.json'),
        )
      ).code,
    ).toBe(0)
    const verified = await llmesh(
      '--json',
      'manifest',
      'verify',
      at('out/signed.json'),
      '--trust',
      at('keys/release.public.pem'),
    )
    expect(verified.code).toBe(0)
    expect(JSON.parse(verified.out)).toMatchObject({ valid: true, keyId })

    // Tampering: one character of the digest changed.
    const signed = await readFile(at('out/signed.json'), 'utf8')
    await writeFile(
      at('out/tampered.json'),
      signed.replace(
        written.sha256,
        written.sha256.replace(/.$/, (last) => (last === '0' ? '1' : '0')),
      ),
    )
    const tampered = await llmesh(
      'manifest',
      'verify',
      at('out/tampered.json'),
      '--trust',
      at('keys/release.public.pem'),
    )
    expect(tampered.code).toBe(exitCodes.verificationFailed)
    expect(tampered.err).toContain('changed after signing')

    // A key that is not trusted.
    await llmesh('keys', 'generate', '--out-dir', at('keys'), '--name', 'stranger')
    const untrusted = await llmesh(
      '--json',
      'manifest',
      'verify',
      at('out/signed.json'),
      '--trust',
      at('keys/stranger.public.pem'),
    )
    expect(untrusted.code).toBe(exitCodes.verificationFailed)
    expect(JSON.parse(untrusted.out).error.code).toBe('LLMESH_UNTRUSTED_KEY')
  })

  it('exits 3 and names every problem of an invalid manifest', async () => {
    await writeFile(
      at('bad.yaml'),
      'schemaVersion: 1\nid: acme/x\nversion: one\nprofile: gguf\nlicense: {id: mit}\nartifacts:\n  - {path: ../x.gguf, size: 1, sha256: ABC}\n',
    )
    const result = await llmesh('manifest', 'validate', at('bad.yaml'))
    expect(result.code).toBe(exitCodes.invalidInput)
    for (const path of ['version', 'artifacts[0].path', 'artifacts[0].sha256'])
      expect(result.err).toContain(path)
    const json = await llmesh('--json', 'manifest', 'validate', at('bad.yaml'))
    expect(JSON.parse(json.out).error.issues.map((issue: { path: string }) => issue.path)).toEqual(
      expect.arrayContaining(['version', 'artifacts[0].path', 'artifacts[0].sha256']),
    )
  })

  it('exits 1 with a message when a file is missing', async () => {
    const result = await llmesh('manifest', 'validate', at('missing.json'))
    expect(result.code).toBe(exitCodes.failure)
    expect(result.err).toContain('missing.json')
  })
})
