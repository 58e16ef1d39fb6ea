import { execFile } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { describe, expect, it } from 'vitest'

const bin = fileURLToPath(new URL('../dist/bin.js', import.meta.url))
const execute = promisify(execFile)

async function llmesh(
  ...argv: string[]
): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await execute(process.execPath, [bin, ...argv])
    return { code: 0, stdout, stderr }
  } catch (error) {
    const failed = error as { code: number; stdout: string; stderr: string }
    return { code: failed.code, stdout: failed.stdout, stderr: failed.stderr }
  }
}

describe('the built llmesh binary', () => {
  it('prints the package version', async () => {
    const { version } = (await import('../package.json', { with: { type: 'json' } })).default
    expect(await llmesh('--version')).toMatchObject({ code: 0, stdout: `${version}\n` })
  })

  it('prints help and exits 0, and exits 2 on an unknown command', async () => {
    expect((await llmesh('--help')).stdout).toContain('Usage: llmesh')
    const unknown = await llmesh('frobnicate')
    expect(unknown.code).toBe(2)
    expect(unknown.stderr).toContain("unknown command 'frobnicate'")
  })
})
