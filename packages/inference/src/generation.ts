/**
 * A running generation as an async iterator of text chunks, plus a promise of its outcome.
 *
 * node-llama-cpp reports text through callbacks; a consumer (an HTTP stream, a terminal) wants to
 * pull. The bridge buffers the few chunks produced between two pulls (tokens are small and come
 * at most a few thousand a second, so the buffer stays small) and ends with the error, if any.
 */

export type FinishReason = 'stop' | 'length'

export interface GenerationChunk {
  /** New text; may be empty when a token completes no character yet. */
  text: string
}

export interface TokenUsage {
  promptTokens: number
  completionTokens: number
  totalTokens: number
}

export interface GenerationResult {
  text: string
  finishReason: FinishReason
  usage: TokenUsage
  timings: {
    /** Milliseconds spent waiting for a free slot of the model. */
    queuedMs: number
    /** Milliseconds from the call to the first text (undefined when nothing was generated). */
    firstTokenMs: number | undefined
    totalMs: number
    /** Completion tokens per second, counted from the first token. */
    tokensPerSecond: number
  }
}

export class Generation implements AsyncIterable<GenerationChunk> {
  /** Settles when the generation ends: the result, or the error (an `AbortedError` after a cancel). */
  readonly result: Promise<GenerationResult>
  private readonly buffered: GenerationChunk[] = []
  private failure: { error: unknown } | undefined
  private finished = false
  private wake: (() => void) | undefined
  private iterated = false

  /** @internal `run` produces the text through `push` and resolves with the outcome. */
  constructor(run: (push: (chunk: GenerationChunk) => void) => Promise<GenerationResult>) {
    this.result = run((chunk) => {
      this.buffered.push(chunk)
      this.notify()
    }).then(
      (result) => {
        this.finished = true
        this.notify()
        return result
      },
      (error: unknown) => {
        this.failure = { error }
        this.finished = true
        this.notify()
        throw error
      },
    )
    // The error reaches whoever iterates or awaits `result`; an unobserved one must not crash the process.
    this.result.catch(() => {})
  }

  async *[Symbol.asyncIterator](): AsyncIterator<GenerationChunk> {
    if (this.iterated) throw new Error('A Generation can be iterated only once')
    this.iterated = true
    while (true) {
      const chunk = this.buffered.shift()
      if (chunk !== undefined) {
        yield chunk
        continue
      }
      if (this.finished) {
        if (this.failure !== undefined) throw this.failure.error
        return
      }
      await new Promise<void>((resolve) => {
        this.wake = resolve
      })
    }
  }

  /** The whole text; throws what the generation threw. */
  async text(): Promise<string> {
    return (await this.result).text
  }

  private notify(): void {
    const wake = this.wake
    this.wake = undefined
    wake?.()
  }
}
