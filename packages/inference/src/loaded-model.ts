/**
 * One model in memory: its llama.cpp context split into sequences (slots), a bounded queue for
 * requests waiting for a slot, and chat and text completion as `Generation`s.
 *
 * Requests on different sequences of one context are decoded in the same batch by
 * node-llama-cpp, in sequence order (see batch-order.ts), so four concurrent requests cost far
 * less than four times one where a decode step is not already bound by arithmetic.
 */
import { EventEmitter } from 'node:events'
import { AbortedError, createLogger, type Logger } from '@llmesh/core'
import {
  type ChatHistoryItem,
  type ChatWrapper,
  LlamaChat,
  LlamaCompletion,
  type LlamaContext,
  type LlamaContextSequence,
  type LlamaModel,
  resolveChatWrapper,
  type Token,
} from 'node-llama-cpp'
import type { BatchOrder } from './batch-order.js'
import { InferenceError } from './errors.js'
import { type FinishReason, Generation, type GenerationResult } from './generation.js'

export interface SamplingOptions {
  /** Most tokens to generate; default 256, never past the context. */
  maxTokens?: number
  /** 0 is greedy (the same text every time); default 0.7. */
  temperature?: number
  topP?: number
  topK?: number
  minP?: number
  seed?: number
  /** Stop when one of these strings is generated (it is not included in the text). */
  stop?: string[]
  signal?: AbortSignal
}

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant'
  content: string
}

export interface LoadedModelStatistics {
  slots: number
  inFlight: number
  queued: number
  maxQueue: number
}

/** What a `LoadedModel` emits when a generation ends, for metrics and tests. */
export interface GenerationEndEvent {
  model: string
  outcome: 'completed' | 'aborted' | 'failed'
  completionTokens: number
}

export interface LoadedModelOptions {
  /** The name requests use (a store reference or a path). */
  name: string
  model: LlamaModel
  context: LlamaContext
  /** Requests that may wait for a slot; one more is refused as busy. */
  maxQueue: number
  /** The context's batch order (its `itemPrioritizationStrategy`), told each token given. */
  batchOrder: BatchOrder
  logger?: Logger
}

interface Waiter {
  resolve: (sequence: LlamaContextSequence) => void
  reject: (error: unknown) => void
}

export class LoadedModel {
  readonly name: string
  readonly model: LlamaModel
  readonly context: LlamaContext
  /** `generation-end` (GenerationEndEvent) after every generation; `idle` when the last one ends. */
  readonly events = new EventEmitter<{ 'generation-end': [GenerationEndEvent]; idle: [] }>()
  /** Free sequences, highest id first: `pop()` hands out the lowest, which keeps ids in use consecutive. */
  private readonly free: LlamaContextSequence[] = []
  /** A fresh context numbers its sequences 0, 1, 2… in the order `getSequence()` hands them out. */
  private readonly sequenceIds = new Map<LlamaContextSequence, number>()
  private readonly batchOrder: BatchOrder
  private readonly waiters: Waiter[] = []
  private readonly maxQueue: number
  private readonly log: Logger
  private inFlight = 0
  private closed = false
  /** Resolved once: resolving it from the model's Jinja template costs tens of milliseconds. */
  private chatWrapperCache: ChatWrapper | undefined

  constructor(options: LoadedModelOptions) {
    this.name = options.name
    this.model = options.model
    this.context = options.context
    this.maxQueue = options.maxQueue
    this.log = options.logger ?? createLogger('inference:model')
    this.batchOrder = options.batchOrder
    while (this.context.sequencesLeft > 0) {
      const sequence = this.context.getSequence()
      this.sequenceIds.set(sequence, this.sequenceIds.size)
      this.free.unshift(sequence)
    }
  }

  /** Tokens one request may hold: prompt and answer together. */
  get contextSize(): number {
    return this.context.contextSize
  }

  get statistics(): LoadedModelStatistics {
    return {
      slots: this.context.totalSequences,
      inFlight: this.inFlight,
      queued: this.waiters.length,
      maxQueue: this.maxQueue,
    }
  }

  /** True when no request runs or waits. */
  get idle(): boolean {
    return this.inFlight === 0 && this.waiters.length === 0
  }

  /** Continues `prompt` as plain text. */
  complete(prompt: string, options: SamplingOptions = {}): Generation {
    return this.generate(options, async (sequence, onTextChunk) => {
      const promptTokens = this.model.tokenize(prompt).length + (this.addsBos ? 1 : 0)
      this.checkFits(promptTokens)
      const completion = new LlamaCompletion({ contextSequence: sequence })
      try {
        const response = await completion.generateCompletionWithMeta(prompt, {
          ...this.sampling(options, promptTokens),
          onTextChunk,
          onToken: this.tokenListener(sequence),
        })
        return { text: response.response, stopReason: response.metadata.stopReason, promptTokens }
      } finally {
        completion.dispose({ disposeSequence: false })
      }
    })
  }

  /** Answers the last user message of `messages`, formatted with the model's chat template. */
  chat(messages: ChatMessage[], options: SamplingOptions = {}): Generation {
    return this.generate(options, async (sequence, onTextChunk) => {
      this.chatWrapperCache ??= resolveChatWrapper(this.model)
      const chat = new LlamaChat({
        contextSequence: sequence,
        chatWrapper: this.chatWrapperCache,
        autoDisposeSequence: false,
      })
      try {
        const history: ChatHistoryItem[] = messages.map((message) =>
          message.role === 'assistant'
            ? { type: 'model', response: [message.content] }
            : { type: message.role, text: message.content },
        )
        history.push({ type: 'model', response: [] })
        const promptTokens = chat.chatWrapper
          .generateContextState({ chatHistory: history })
          .contextText.tokenize(this.model.tokenizer).length
        this.checkFits(promptTokens)
        const response = await chat.generateResponse(history, {
          ...this.sampling(options, promptTokens),
          onTextChunk,
          onToken: this.tokenListener(sequence),
        })
        return { text: response.response, stopReason: response.metadata.stopReason, promptTokens }
      } finally {
        chat.dispose({ disposeSequence: false })
      }
    })
  }

  /** Refuses new requests, fails those waiting, and frees the model once running ones end. */
  async dispose(): Promise<void> {
    this.closed = true
    for (const waiter of this.waiters.splice(0))
      waiter.reject(
        new InferenceError({
          code: 'LLMESH_INFERENCE_CLOSED',
          model: this.name,
          message: `The model ${this.name} was unloaded while the request waited for a slot.`,
          isRetryable: true,
        }),
      )
    await this.context.dispose()
    await this.model.dispose()
  }

  private get addsBos(): boolean {
    return this.model.tokens.shouldPrependBosToken
  }

  /** Tells the batch order which token the sequence's next decode carries. */
  private tokenListener(sequence: LlamaContextSequence): (tokens: Token[]) => void {
    const sequenceId = this.sequenceIds.get(sequence)!
    return (tokens) => {
      const last = tokens.at(-1)
      if (last !== undefined) this.batchOrder.tokenGiven(sequenceId, last)
    }
  }

  private checkFits(promptTokens: number): void {
    if (promptTokens >= this.contextSize)
      throw new InferenceError({
        code: 'LLMESH_CONTEXT_OVERFLOW',
        model: this.name,
        message: `The prompt is ${promptTokens} tokens, and the context of ${this.name} holds ${this.contextSize}; shorten the prompt or load the model with a larger context.`,
      })
  }

  private generate(
    options: SamplingOptions,
    run: (
      sequence: LlamaContextSequence,
      onTextChunk: (text: string) => void,
    ) => Promise<{ text: string; stopReason: string; promptTokens: number }>,
  ): Generation {
    const started = performance.now()
    return new Generation(async (push) => {
      const sequence = await this.acquire(options.signal)
      const queuedMs = performance.now() - started
      const meterBefore = sequence.tokenMeter.getState()
      let firstTokenAt: number | undefined
      let outcome: GenerationEndEvent['outcome'] = 'failed'
      this.inFlight++
      try {
        const { text, stopReason, promptTokens } = await run(sequence, (chunk) => {
          firstTokenAt ??= performance.now()
          push({ text: chunk })
        })
        const completionTokens = sequence.tokenMeter.diff(meterBefore).usedOutputTokens
        const ended = performance.now()
        outcome = 'completed'
        this.events.emit('generation-end', { model: this.name, outcome, completionTokens })
        return {
          text,
          finishReason: finishReasonOf(stopReason),
          usage: {
            promptTokens,
            completionTokens,
            totalTokens: promptTokens + completionTokens,
          },
          timings: {
            queuedMs,
            firstTokenMs: firstTokenAt === undefined ? undefined : firstTokenAt - started,
            totalMs: ended - started,
            tokensPerSecond:
              firstTokenAt === undefined || completionTokens < 2
                ? 0
                : ((completionTokens - 1) * 1000) / (ended - firstTokenAt),
          },
        } satisfies GenerationResult
      } catch (error) {
        if (options.signal?.aborted) {
          outcome = 'aborted'
          this.events.emit('generation-end', {
            model: this.name,
            outcome,
            completionTokens: sequence.tokenMeter.diff(meterBefore).usedOutputTokens,
          })
          throw new AbortedError({ message: 'The generation was cancelled.', cause: error })
        }
        this.events.emit('generation-end', {
          model: this.name,
          outcome,
          completionTokens: sequence.tokenMeter.diff(meterBefore).usedOutputTokens,
        })
        throw error
      } finally {
        this.inFlight--
        this.release(sequence)
        this.log('%s: generation %s', this.name, outcome)
      }
    })
  }

  /** node-llama-cpp's options; the answer may use what the prompt leaves of the context (past it, llama.cpp would shift the context). */
  private sampling(options: SamplingOptions, promptTokens: number) {
    return {
      maxTokens: Math.max(1, Math.min(options.maxTokens ?? 256, this.contextSize - promptTokens)),
      temperature: options.temperature ?? 0.7,
      ...(options.topP === undefined ? {} : { topP: options.topP }),
      ...(options.topK === undefined ? {} : { topK: options.topK }),
      ...(options.minP === undefined ? {} : { minP: options.minP }),
      ...(options.seed === undefined ? {} : { seed: options.seed }),
      ...(options.stop === undefined || options.stop.length === 0
        ? {}
        : { customStopTriggers: options.stop }),
      ...(options.signal === undefined ? {} : { signal: options.signal, stopOnAbortSignal: false }),
    }
  }

  private acquire(signal: AbortSignal | undefined): Promise<LlamaContextSequence> {
    if (signal?.aborted)
      return Promise.reject(new AbortedError({ message: 'The generation was cancelled.' }))
    if (this.closed)
      return Promise.reject(
        new InferenceError({
          code: 'LLMESH_INFERENCE_CLOSED',
          model: this.name,
          message: `The model ${this.name} is being unloaded.`,
          isRetryable: true,
        }),
      )
    const sequence = this.free.pop()
    if (sequence !== undefined) return Promise.resolve(sequence)
    if (this.waiters.length >= this.maxQueue)
      return Promise.reject(
        new InferenceError({
          code: 'LLMESH_INFERENCE_BUSY',
          model: this.name,
          message: `All ${this.context.totalSequences} slots of ${this.name} are busy and ${this.waiters.length} requests wait; try another node or later.`,
        }),
      )
    return new Promise((resolve, reject) => {
      const waiter: Waiter = {
        resolve: (granted) => {
          signal?.removeEventListener('abort', onAbort)
          resolve(granted)
        },
        reject: (error) => {
          signal?.removeEventListener('abort', onAbort)
          reject(error)
        },
      }
      const onAbort = () => {
        const index = this.waiters.indexOf(waiter)
        if (index >= 0) this.waiters.splice(index, 1)
        waiter.reject(new AbortedError({ message: 'The generation was cancelled.' }))
      }
      signal?.addEventListener('abort', onAbort, { once: true })
      this.waiters.push(waiter)
    })
  }

  private release(sequence: LlamaContextSequence): void {
    this.batchOrder.forget(this.sequenceIds.get(sequence)!)
    const waiter = this.waiters.shift()
    if (waiter !== undefined) waiter.resolve(sequence)
    else {
      this.free.push(sequence)
      this.free.sort(
        (first, second) => this.sequenceIds.get(second)! - this.sequenceIds.get(first)!,
      )
      if (this.inFlight === 0) this.events.emit('idle')
    }
  }
}

function finishReasonOf(stopReason: string): FinishReason {
  return stopReason === 'maxTokens' ? 'length' : 'stop'
}
