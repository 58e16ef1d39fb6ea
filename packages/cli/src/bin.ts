#!/usr/bin/env node
import { run } from './program.js'

const controller = new AbortController()
process.once('SIGINT', () => controller.abort(new DOMException('Interrupted', 'AbortError')))
process.exitCode = await run(process.argv.slice(2), { signal: controller.signal })
