import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { AbortedError } from '@llmesh/core'
import { createTempDir, type TempDir, writeTinyGguf } from '@llmesh/testkit'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { checkBackend } from './backend-check.js'

describe('checkBackend', () => {
  let directory: TempDir
  let modelPath: string

  beforeAll(async () => {
    directory = await createTempDir()
    modelPath = (await writeTinyGguf(join(directory.path, 'tiny.gguf'))).path
  })
  afterAll(() => directory.remove())

  /**
   * The child's environment with a module that runs before the check: a stand-in for what
   * llama.cpp does inside the child on a machine that cannot run it.
   */
  async function childThat(name: string, source: string): Promise<NodeJS.ProcessEnv> {
    const file = join(directory.path, `${name}.mjs`)
    await writeFile(file, source)
    return { ...process.env, NODE_OPTIONS: `--import=${pathToFileURL(file).href}` }
  }

  it('loads and decodes on the CPU in a child process', async () => {
    const check = await checkBackend({ modelPath, backend: 'cpu', threads: 1, tokens: 4 })
    expect(check).toMatchObject({ ok: true, backend: 'cpu', devices: [], layersOffloaded: 0 })
    if (!check.ok) throw new Error(check.reason)
    expect(check.tokens).toBeGreaterThan(0)
    expect(check.tokensPerSecond).toBeGreaterThan(0)
  })

  it("reports a file llama.cpp must not see with the validator's typed error", async () => {
    const broken = await writeTinyGguf(join(directory.path, 'no-ffn.gguf'), {
      omitMetadataKeys: ['llama.feed_forward_length'],
    })
    const check = await checkBackend({ modelPath: broken.path, backend: 'cpu', threads: 1 })
    expect(check).toMatchObject({ ok: false, code: 'LLMESH_GGUF_INVALID' })
    if (check.ok) throw new Error('passed')
    expect(check.reason).toMatch(/llama\.feed_forward_length is missing/)
  })

  it("turns llama.cpp aborting the process into a report with llama.cpp's words", async () => {
    const env = await childThat(
      'aborts',
      [
        "process.stderr.write('/llama.cpp/ggml/src/ggml-cuda/ggml-cuda.cu:108: CUDA error\\n')",
        "process.stderr.write('llama.cpp error: CUDA error: the provided PTX was compiled with an unsupported toolchain.\\n')",
        "process.stderr.write('llama.cpp error:   current device: 0, in function ggml_cuda_kernel_can_use_pdl\\n')",
        "process.kill(process.pid, 'SIGABRT')",
      ].join('\n'),
    )
    const check = await checkBackend({ modelPath, backend: 'cpu', env })
    expect(check.ok).toBe(false)
    if (check.ok) throw new Error('passed')
    expect(check.reason).toBe(
      'llama.cpp ended the check process (SIGABRT) on the cpu backend: CUDA error: the provided PTX was compiled with an unsupported toolchain.',
    )
    expect(check.code).toBeUndefined()
    expect(check.output).toContain('ggml_cuda_kernel_can_use_pdl')
  })

  it('gives up on a child that never finishes, and kills it', async () => {
    const env = await childThat('hangs', 'await new Promise(() => setInterval(() => {}, 1000))')
    const check = await checkBackend({ modelPath, backend: 'cpu', env, timeoutMs: 300 })
    expect(check).toMatchObject({
      ok: false,
      reason: 'The cpu backend did not load and decode 8 tokens within 0.3 s.',
    })
  })

  it('stops the child when the signal aborts', async () => {
    const env = await childThat('hangs', 'await new Promise(() => setInterval(() => {}, 1000))')
    const controller = new AbortController()
    const checking = checkBackend({ modelPath, backend: 'cpu', env, signal: controller.signal })
    controller.abort()
    await expect(checking).rejects.toBeInstanceOf(AbortedError)
  })
})
