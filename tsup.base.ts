import { readFileSync } from 'node:fs'
import { defineConfig, type Options } from 'tsup'

/**
 * The build every llmesh package shares: ESM for Node 22, type declarations, source maps, and the
 * package's version compiled in as `__PACKAGE_VERSION__` (for User-Agent headers).
 */
export function packageBuild(packageJson: URL, overrides: Options = {}) {
  const { version } = JSON.parse(readFileSync(packageJson, 'utf8')) as { version: string }
  return defineConfig({
    entry: ['src/index.ts'],
    format: ['esm'],
    target: 'node22',
    dts: true,
    sourcemap: true,
    clean: true,
    // Keep `node:` prefixes as written: `node:sqlite` exists only with the prefix.
    removeNodeProtocol: false,
    define: { __PACKAGE_VERSION__: JSON.stringify(version) },
    ...overrides,
  })
}
