import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { createTempDir, startMockNode, type TempDir } from '@llmesh/testkit'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { exitCodes } from '../exit-codes.js'
import { run } from '../program.js'
import { captureIo, llmesh } from '../test-io.js'

let directory: TempDir
beforeAll(async () => {
  directory = await createTempDir('llmesh-cli-gateway-')
})
afterAll(() => directory.remove())

describe('llmesh gateway', () => {
  it('routes to the nodes of a YAML file, with its model policy, until stopped', async () => {
    await using first = await startMockNode({ name: 'first', models: ['acme/tiny'] })
    await using second = await startMockNode({ name: 'second', models: ['acme/tiny'] })
    const file = join(directory.path, 'nodes.yaml')
    await writeFile(
      file,
      [
        'nodes:',
        `  - { id: first, url: "${first.url}", models: [{ id: acme/tiny }] }`,
        `  - { id: second, url: "${second.url}", models: [{ id: acme/tiny }] }`,
        'policy:',
        '  aliases: { fast: acme/tiny }',
      ].join('\n'),
    )
    const stop = new AbortController()
    const io = captureIo()
    let announce: (url: string) => void = () => {}
    const listening = new Promise<string>((resolve) => {
      announce = resolve
    })
    const stdout = io.stdout
    io.stdout = (text) => {
      stdout(text)
      const line = JSON.parse(text)
      if (line.event === 'listening') announce(line.url)
    }
    const gateway = run(['gateway', '--nodes', file, '--port', '0', '--json'], {
      io,
      signal: stop.signal,
    })
    const url = await Promise.race([
      listening,
      gateway.then((code) => {
        throw new Error(`gateway ended with ${code}: ${io.err()}${io.out()}`)
      }),
    ])
    const served = new Set<string>()
    for (let index = 0; index < 12; index++) {
      const response = await fetch(`${url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'fast', messages: [{ role: 'user', content: 'hi' }] }),
      })
      expect(response.status).toBe(200)
      served.add(response.headers.get('x-llmesh-node')!)
    }
    expect(served).toEqual(new Set(['first', 'second']))
    stop.abort()
    expect(await gateway).toBe(0)
  })

  it('needs exactly one of --registry and --nodes, and refuses a bad nodes file with exit code 3', async () => {
    expect((await llmesh('gateway')).code).toBe(exitCodes.usage)
    const file = join(directory.path, 'bad.yaml')
    await writeFile(file, '- { id: a, url: "ftp://x", models: [{ id: m }] }\n')
    const bad = await llmesh('gateway', '--nodes', file)
    expect(bad.code).toBe(exitCodes.invalidInput)
    expect(bad.err).toContain('bad.yaml')
  })
})
