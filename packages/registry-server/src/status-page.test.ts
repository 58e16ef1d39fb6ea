import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { createRegistryClient } from '@llmesh/registry-client'
import { createTempDir } from '@llmesh/testkit'
import { type Browser, chromium } from 'playwright-core'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createRegistry } from './registry.js'

/** Debian's chromium; `.ci/run` installs it. A missing browser fails the test: it is never skipped. */
const executablePath = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'
let browser: Browser

beforeAll(async () => {
  if (!existsSync(executablePath))
    throw new Error(
      `No Chromium at ${executablePath}: install Debian's chromium (apt-get install chromium) or set CHROMIUM_PATH`,
    )
  browser = await chromium.launch({ executablePath, args: ['--no-sandbox'] })
})
afterAll(async () => {
  await browser?.close()
})

describe('status page', () => {
  it('lists registered nodes and shows a node turning not-ready on its own refresh', async () => {
    await using directory = await createTempDir('llmesh-status-')
    let now = Date.parse('2026-11-22T12:00:00Z')
    const registry = createRegistry({
      database: join(directory.path, 'registry.db'),
      adminToken: 'admin',
      publicReads: true,
      statusRefreshSeconds: 1,
      clock: () => now,
    })
    const server = await registry.listen()
    const page = await browser.newPage()
    try {
      const admin = createRegistryClient({ urls: [server.url], token: 'admin' })
      for (const nodeId of ['node-a', 'node-b']) {
        await admin.register({
          nodeId,
          endpoint: `http://127.0.0.1:9/${nodeId}`,
          hardware: {
            ramBytes: 32 * 1024 ** 3,
            cpu: { model: 'cpu', cores: 16 },
            gpus: [{ name: 'RTX 4090', vramBytes: 24 * 1024 ** 3 }],
          },
          models: [{ id: 'acme/tiny', version: '1.0.0', digest: 'c'.repeat(64) }],
          capacitySlots: 2,
        })
        await admin.heartbeat(nodeId, { inFlight: 1, queueDepth: 0, tokensPerSecond: 12.5 })
      }
      await page.goto(`${server.url}/`)
      const state = (nodeId: string) => page.locator(`tr[data-node="${nodeId}"] td.state`)
      expect(await state('node-a').textContent()).toBe('ready')
      expect(await state('node-b').textContent()).toBe('ready')
      expect(await page.locator('#nodes').textContent()).toContain('RTX 4090')
      expect(await page.locator('#models').textContent()).toContain('acme/tiny@1.0.0')

      // node-b stops beating; node-a goes on. The page reloads itself and shows the change.
      now += 31_000
      await admin.heartbeat('node-a', { inFlight: 0, queueDepth: 0, tokensPerSecond: 10 })
      await page.locator('tr[data-node="node-b"] td.state.not-ready').waitFor({ timeout: 10_000 })
      expect(await state('node-a').textContent()).toBe('ready')
    } finally {
      await page.close()
      await server.close()
      await registry.close()
    }
  })
})
