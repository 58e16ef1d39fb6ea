import { existsSync } from 'node:fs'
import { writeFile } from 'node:fs/promises'
import { describe, expect, it } from 'vitest'
import { startServer } from './servers.js'
import { createTempDir, withTempDir } from './temp-dir.js'

describe('startServer', () => {
  it('listens on a free port of 127.0.0.1 and closes even with keep-alive connections open', async () => {
    const running = await startServer((_request, response) => response.end('pong'))
    expect(running.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/)
    expect(running.port).toBeGreaterThan(0)
    const response = await fetch(`${running.url}/ping`)
    expect(await response.text()).toBe('pong')
    await running.close()
    await running.close()
    await expect(fetch(`${running.url}/ping`)).rejects.toThrow()
  })
})

describe('temp dirs', () => {
  it('creates a fresh folder and removes it with its content', async () => {
    const directory = await createTempDir()
    await writeFile(`${directory.path}/file`, 'x')
    expect(existsSync(directory.path)).toBe(true)
    await directory.remove()
    expect(existsSync(directory.path)).toBe(false)
  })

  it('removes the folder even when the work fails', async () => {
    let seen = ''
    await expect(
      withTempDir(async (path) => {
        seen = path
        throw new Error('work failed')
      }),
    ).rejects.toThrow('work failed')
    expect(existsSync(seen)).toBe(false)
  })
})
