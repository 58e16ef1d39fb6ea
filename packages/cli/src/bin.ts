#!/usr/bin/env node
import { tuneHeapForTransfers } from '@llmesh/downloader'
import { run } from './program.js'

// Pulls read hundreds of MB/s into short-lived buffers: fewer full garbage collections.
tuneHeapForTransfers()

const controller = new AbortController()
process.once('SIGINT', () => controller.abort(new DOMException('Interrupted', 'AbortError')))
process.exitCode = await run(process.argv.slice(2), { signal: controller.signal })
