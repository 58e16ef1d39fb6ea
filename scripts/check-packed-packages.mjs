// Packs every published package the way `pnpm publish` would and checks what users will get:
// no `workspace:` range left, and each dependency on another llmesh package pointing at that
// package's current version. (publint and attw check the rest.)
import { execFileSync } from 'node:child_process'
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

const root = new URL('..', import.meta.url).pathname
const folders = readdirSync(join(root, 'packages')).map((name) => join(root, 'packages', name))
const versions = new Map(
  folders.map((folder) => {
    const manifest = JSON.parse(readFileSync(join(folder, 'package.json'), 'utf8'))
    return [manifest.name, manifest.version]
  }),
)
const destination = mkdtempSync(join(tmpdir(), 'llmesh-packs-'))
const problems = []
try {
  for (const folder of folders) {
    const output = execFileSync('pnpm', ['pack', '--pack-destination', destination, '--json'], {
      cwd: folder,
      encoding: 'utf8',
    })
    const { filename, name } = JSON.parse(output)
    const packed = JSON.parse(
      execFileSync('tar', ['-xzOf', filename, 'package/package.json'], { encoding: 'utf8' }),
    )
    for (const field of ['dependencies', 'peerDependencies', 'optionalDependencies']) {
      for (const [dependency, range] of Object.entries(packed[field] ?? {})) {
        if (range.startsWith('workspace:'))
          problems.push(`${name}: ${field}.${dependency} is still ${range}`)
        const current = versions.get(dependency)
        if (current !== undefined && range !== `^${current}`)
          problems.push(`${name}: ${field}.${dependency} is ${range}, expected ^${current}`)
      }
    }
  }
} finally {
  rmSync(destination, { recursive: true, force: true })
}
if (problems.length > 0) {
  console.error(problems.join('\n'))
  process.exit(1)
}
console.log(`packed ${folders.length} packages: dependency ranges between them are right`)
