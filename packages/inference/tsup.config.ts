import { packageBuild } from '../../tsup.base.js'

// The backend check runs its child from a file of its own.
export default packageBuild(new URL('./package.json', import.meta.url), {
  entry: ['src/index.ts', 'src/backend-check-child.ts'],
})
