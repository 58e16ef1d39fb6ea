import type { ManifestInput } from './schema.js'

export const digestA = 'a'.repeat(64)
export const digestB = 'b'.repeat(64)

/** A complete, valid manifest using every field, for tests to copy and break. */
export function validManifest(): ManifestInput & Record<string, unknown> {
  return {
    schemaVersion: 1,
    id: 'acme/tiny-llama',
    version: '1.2.0',
    profile: 'gguf',
    name: 'Tiny Llama',
    license: {
      id: 'apache-2.0',
      url: 'https://www.apache.org/licenses/LICENSE-2.0',
      approval: { status: 'approved', by: 'legal', at: '2026-01-02T03:04:05Z' },
    },
    source: { provider: 'huggingface', repo: 'acme/tiny-llama', revision: 'main' },
    stage: 'staging',
    artifacts: [
      {
        path: 'tiny-llama.Q8_0.gguf',
        size: 123_456,
        sha256: digestA,
        mediaType: 'application/vnd.gguf',
        mirrors: [
          'https://mirror-1.example/tiny.gguf',
          'hf:acme/tiny-llama/tiny-llama.Q8_0.gguf#main',
        ],
        pieces: { algorithm: 'sha256-pieces', pieceSize: 65_536, layer: digestB },
      },
      { path: 'docs/README.md', size: 10, sha256: digestB },
    ],
    entrypoint: { artifact: 'tiny-llama.Q8_0.gguf', contextSize: 2048, gpuLayers: 'auto' },
    hardware: { minRamBytes: 1_000_000, accelerators: ['cpu', 'cuda'] },
    tags: ['chat', 'code'],
    tokenCostPer1k: 0.5,
    smokeTest: {
      prompt: 'Say hello',
      maxTokens: 16,
      maxSeconds: 30,
      expect: { minTokens: 1, regex: '\\w+' },
    },
    createdAt: '2026-11-22T10:00:00.000Z',
  }
}
