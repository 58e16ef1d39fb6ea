// Copies the first TypeScript example of every package README into generated/, so that
// `tsc` checks it against the packages as built: a README example that no longer compiles fails CI.
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

const packages = new URL('../../packages/', import.meta.url).pathname
const output = new URL('./generated/', import.meta.url).pathname
rmSync(output, { recursive: true, force: true })
mkdirSync(output, { recursive: true })
let count = 0
for (const name of readdirSync(packages)) {
  let readme
  try {
    readme = readFileSync(join(packages, name, 'README.md'), 'utf8')
  } catch {
    continue
  }
  const block = /^```ts\n([\s\S]*?)^```/m.exec(readme)?.[1]
  if (block === undefined) continue
  writeFileSync(
    join(output, `${name}.ts`),
    `// From packages/${name}/README.md\n${block}\nexport {}\n`,
  )
  count++
}
console.log(`readme-check: ${count} README examples extracted`)
