import { readFileSync } from 'node:fs'
import { defineConfig } from 'tsup'

const { version } = JSON.parse(
  readFileSync(new URL('./package.json', import.meta.url), 'utf8'),
) as {
  version: string
}

export default defineConfig({
  entry: ['src/index.ts'],
  format: ['esm'],
  target: 'node22',
  dts: true,
  sourcemap: true,
  clean: true,
  // Keep `node:sqlite` as written: it exists only with the prefix.
  removeNodeProtocol: false,
  define: { __PACKAGE_VERSION__: JSON.stringify(version) },
})
