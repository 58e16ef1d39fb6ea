import type { DownloadProgressEvent } from '@llmesh/downloader'
import { formatBytes } from '@llmesh/downloader'
import { MultiBar, Presets, type SingleBar } from 'cli-progress'
import type { Output } from './output.js'

/**
 * Shows a pull's progress the way the terminal can take it: one bar per file on a TTY (several
 * at once for a multi-file model), a JSON line per event with `--json`, and a line per file
 * otherwise (a CI log). Bars show verified bytes, the figure that never goes back.
 */
export class PullProgress {
  private readonly bars = new Map<string, SingleBar>()
  private readonly names = new Map<string, string>()
  private multiBar: MultiBar | undefined

  constructor(private readonly output: Output) {
    const terminal = output.io.terminal
    if (!output.json && output.io.interactive && terminal !== undefined)
      this.multiBar = new MultiBar(
        {
          stream: terminal,
          format: ' {name} |{bar}| {percentage}% {done}/{total} {rate}',
          hideCursor: true,
          clearOnComplete: false,
          etaBuffer: 20,
        },
        Presets.shades_classic,
      )
  }

  readonly onProgress = (event: DownloadProgressEvent): void => {
    if (this.output.json) {
      this.output.line({ event: event.type, ...event.detail })
      return
    }
    switch (event.type) {
      case 'pull:file-started':
        if (event.detail.sha256 !== undefined)
          this.names.set(event.detail.sha256, event.detail.path)
        if (this.multiBar === undefined)
          this.output.info(
            `pulling ${event.detail.model} ${event.detail.path} (${formatBytes(event.detail.size)})`,
          )
        return
      case 'download:started':
        if (this.multiBar === undefined && event.detail.resumedBytes > 0)
          this.output.info(`  resuming: ${formatBytes(event.detail.resumedBytes)} already verified`)
        return
      case 'download:progress':
      case 'download:waiting': {
        const key = event.detail.sha256 ?? 'file'
        const bar = this.barFor(key, event.detail.totalBytes)
        const rate =
          event.type === 'download:waiting'
            ? `(another process, pid ${event.detail.holderPid}, downloads it)`
            : ''
        bar?.update(event.detail.verifiedBytes, {
          done: formatBytes(event.detail.verifiedBytes),
          total: formatBytes(event.detail.totalBytes),
          rate,
        })
        return
      }
      case 'download:source-dropped':
        this.log(`  dropped ${event.detail.source}: ${event.detail.reason}`)
        return
      case 'pull:file-done':
        this.bars.get(event.detail.sha256)?.update(event.detail.size, {
          done: formatBytes(event.detail.size),
          total: formatBytes(event.detail.size),
          rate: event.detail.cached ? '(already in the store)' : '',
        })
        if (this.multiBar === undefined)
          this.output.info(
            `  ${event.detail.cached ? 'already in the store' : 'verified'}: ${event.detail.path} sha256 ${event.detail.sha256} (${describeVerification(event.detail.verification)})`,
          )
        return
      default:
        return
    }
  }

  stop(): void {
    this.multiBar?.stop()
  }

  private barFor(key: string, total: number): SingleBar | undefined {
    if (this.multiBar === undefined) return undefined
    let bar = this.bars.get(key)
    if (bar === undefined) {
      bar = this.multiBar.create(total, 0, {
        name: (this.names.get(key) ?? key.slice(0, 12)).padEnd(24).slice(0, 24),
        done: '0 B',
        total: formatBytes(total),
        rate: '',
      })
      this.bars.set(key, bar)
    }
    return bar
  }

  private log(text: string): void {
    if (this.multiBar !== undefined) this.multiBar.log(`${text}\n`)
    else this.output.info(text)
  }
}

export function describeVerification(verification: string): string {
  switch (verification) {
    case 'pieces+sha256':
      return 'every piece and the whole file checked'
    case 'sha256':
      return 'whole-file sha256 checked; no per-piece hashes were available'
    default:
      return 'size checked only: nobody published its sha256'
  }
}
