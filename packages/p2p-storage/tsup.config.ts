import { packageBuild } from '../../tsup.base.js'

export default packageBuild(new URL('./package.json', import.meta.url))
