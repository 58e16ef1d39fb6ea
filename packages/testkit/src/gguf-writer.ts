/**
 * A deterministic writer of tiny llama-architecture GGUF models.
 *
 * Every test and example needs a real model file, and nothing can be downloaded, so we write one:
 * the same options always give the same bytes (seeded weights), llama.cpp loads it, and it
 * generates tokens. The weights are random, so the text is nonsense, but generation is real work.
 *
 * One property is built in on purpose: the model never emits a control token (BOS, EOS, ChatML
 * markers) or a raw byte token. Dimension 0 of the residual stream is a constant that no layer
 * reads or writes, and the output rows of those tokens weigh it strongly negative. So generation
 * always runs to `maxTokens` and its text is valid UTF-8, which makes token counts in tests exact
 * instead of luck.
 */
import { createHash, randomBytes } from 'node:crypto'
import { open, rename, rm } from 'node:fs/promises'
import { InvalidArgumentError } from '@llmesh/core'
import { z } from 'zod'

export type TensorType = 'f32' | 'f16' | 'q8_0'

export const tinyModelOptionsSchema = z.strictObject({
  name: z.string().min(1).default('llmesh-tiny-llama'),
  seed: z.number().int().nonnegative().default(1),
  type: z.enum(['f32', 'f16', 'q8_0']).default('f32'),
  layers: z.number().int().min(1).max(64).default(2),
  embeddingLength: z.number().int().min(32).max(8192).default(64),
  feedForwardLength: z.number().int().min(32).max(32768).default(128),
  headCount: z.number().int().min(1).max(128).default(4),
  headCountKv: z.number().int().min(1).max(128).optional(),
  vocabularySize: z.number().int().min(512).max(65536).default(512),
  contextLength: z.number().int().min(16).max(131072).default(256),
  /** Metadata keys to leave out, to produce the malformed files that crash llama.cpp (validators' tests). */
  omitMetadataKeys: z.array(z.string()).default([]),
  /**
   * Metadata values to write instead of the consistent ones (numbers as uint32), for files whose
   * metadata disagrees with their tensors, like a zero head count.
   */
  overrideMetadata: z
    .record(z.string(), z.union([z.number().int().nonnegative().max(0xffffffff), z.string()]))
    .default({}),
})

export type TinyModelOptions = z.input<typeof tinyModelOptionsSchema>
export type ResolvedTinyModelOptions = z.output<typeof tinyModelOptionsSchema>

/**
 * Ready-made sizes: `tiny` (about 0.6 MB in F32) for tests, `bigger` (about 70 MB in F16) for
 * benchmarks on a CPU, and `large` (about 2 GB in F16, TinyLlama-1.1B's shape with a smaller
 * vocabulary) for benchmarks on a GPU, where a smaller model's token costs less arithmetic than the
 * fixed cost of a decode step.
 */
export const tinyModelPresets = {
  tiny: {},
  bigger: {
    name: 'llmesh-bigger-llama',
    type: 'f16',
    layers: 8,
    embeddingLength: 512,
    feedForwardLength: 1408,
    headCount: 8,
    vocabularySize: 8192,
    contextLength: 2048,
  },
  large: {
    name: 'llmesh-large-llama',
    type: 'f16',
    layers: 22,
    embeddingLength: 2048,
    feedForwardLength: 5632,
    headCount: 32,
    headCountKv: 4,
    vocabularySize: 16384,
    contextLength: 2048,
  },
} as const satisfies Record<string, TinyModelOptions>

export type TinyModelPreset = keyof typeof tinyModelPresets

export interface WrittenModel {
  path: string
  size: number
  sha256: string
  options: ResolvedTinyModelOptions
}

const GGUF_MAGIC = 0x46554747
const GGUF_VERSION = 3
const ALIGNMENT = 32
const ggmlTypes = { f32: 0, f16: 1, q8_0: 8 } as const
const fileTypes = { f32: 0, f16: 1, q8_0: 7 } as const
const valueTypes = { uint32: 4, int32: 5, float32: 6, bool: 7, string: 8, array: 9 } as const

/** The special tokens, in vocabulary order; all are control tokens that the model never emits. */
const specialTokens = ['<unk>', '<s>', '</s>', '<|im_start|>', '<|im_end|>'] as const
const CHAT_TEMPLATE =
  "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"

type MetadataValue =
  | { type: 'uint32'; value: number }
  | { type: 'int32'; value: number }
  | { type: 'float32'; value: number }
  | { type: 'bool'; value: boolean }
  | { type: 'string'; value: string }
  | { type: 'array'; itemType: 'string'; value: string[] }
  | { type: 'array'; itemType: 'float32' | 'int32'; value: number[] }

interface TensorPlan {
  name: string
  /** ggml order: dimensions[0] is the row length. */
  dimensions: number[]
  type: TensorType
  fill: (values: Float32Array, random: () => number) => void
}

/** Resolves options (a preset name, or options over the `tiny` preset) and checks they make a loadable model. */
export function resolveTinyModelOptions(
  options: TinyModelOptions | TinyModelPreset = {},
): ResolvedTinyModelOptions {
  const input = typeof options === 'string' ? tinyModelPresets[options] : options
  if (input === undefined)
    throw new InvalidArgumentError({
      argument: 'options',
      message: `unknown preset "${String(options)}"`,
    })
  const parsed = tinyModelOptionsSchema.safeParse(input)
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!
    throw new InvalidArgumentError({
      argument: `options.${issue.path.join('.')}`,
      message: issue.message,
    })
  }
  const resolved = parsed.data
  const headCountKv = resolved.headCountKv ?? resolved.headCount
  const problems: string[] = []
  if (resolved.embeddingLength % resolved.headCount !== 0)
    problems.push('embeddingLength must be a multiple of headCount')
  if (resolved.headCount % headCountKv !== 0)
    problems.push('headCount must be a multiple of headCountKv')
  if ((resolved.embeddingLength / resolved.headCount) % 2 !== 0)
    problems.push('the head size (embeddingLength / headCount) must be even for RoPE')
  if (
    resolved.type === 'q8_0' &&
    (resolved.embeddingLength % 32 !== 0 || resolved.feedForwardLength % 32 !== 0)
  )
    problems.push('q8_0 needs embeddingLength and feedForwardLength to be multiples of 32')
  if (problems.length > 0)
    throw new InvalidArgumentError({ argument: 'options', message: problems.join('; ') })
  return { ...resolved, headCountKv }
}

/**
 * Writes a tiny GGUF model to `path` atomically (a temporary file renamed into place) and
 * returns its size and sha256. The same options always give the same bytes.
 */
export async function writeTinyGguf(
  path: string,
  options: TinyModelOptions | TinyModelPreset = {},
): Promise<WrittenModel> {
  const resolved = resolveTinyModelOptions(options)
  const temporary = `${path}.partial-${randomBytes(6).toString('hex')}`
  const hash = createHash('sha256')
  let size = 0
  const handle = await open(temporary, 'wx')
  try {
    for (const chunk of ggufChunks(resolved)) {
      hash.update(chunk)
      size += chunk.byteLength
      await handle.write(chunk)
    }
    await handle.sync()
    await handle.close()
    await rename(temporary, path)
  } catch (error) {
    await handle.close().catch(() => {})
    await rm(temporary, { force: true })
    throw error
  }
  return { path, size, sha256: hash.digest('hex'), options: resolved }
}

/** The whole model in memory, for small models in tests. */
export function tinyGgufBytes(options: TinyModelOptions | TinyModelPreset = {}): Uint8Array {
  return Buffer.concat([...ggufChunks(resolveTinyModelOptions(options))])
}

/** The vocabulary: special tokens, the 256 byte tokens, then word pieces, as SentencePiece spells them. */
export function tinyVocabulary(size: number): { tokens: string[]; types: number[] } {
  const tokens: string[] = [...specialTokens]
  const types: number[] = [2, 3, 3, 3, 3]
  for (let byte = 0; byte < 256; byte++) {
    tokens.push(`<0x${byte.toString(16).toUpperCase().padStart(2, '0')}>`)
    types.push(6)
  }
  const seen = new Set(tokens)
  const add = (token: string) => {
    if (tokens.length < size && !seen.has(token)) {
      seen.add(token)
      tokens.push(token)
      types.push(1)
    }
  }
  add('\u2581')
  for (const word of [
    'the',
    'a',
    'hello',
    'world',
    'model',
    'mesh',
    'node',
    'token',
    'llama',
    'is',
    'and',
    'of',
    'to',
    'in',
  ])
    add(`\u2581${word}`)
  for (let code = 33; code < 127; code++) add(String.fromCharCode(code))
  const letters = 'etaoinshrdlucmfwypvbgkjqxz'
  for (const first of letters) for (const second of letters) add(`\u2581${first}${second}`)
  for (const first of letters)
    for (const second of letters) for (const third of letters) add(`${first}${second}${third}`)
  if (tokens.length < size)
    throw new InvalidArgumentError({
      argument: 'options.vocabularySize',
      message: `at most ${tokens.length} is supported`,
    })
  return { tokens, types }
}

function* ggufChunks(options: ResolvedTinyModelOptions): Generator<Uint8Array> {
  const tensors = planTensors(options)
  const metadata = buildMetadata(options)
  const header = new ByteWriter()
  header.uint32(GGUF_MAGIC)
  header.uint32(GGUF_VERSION)
  header.uint64(tensors.length)
  header.uint64(metadata.size)
  for (const [key, value] of metadata) {
    header.string(key)
    header.metadataValue(value)
  }
  let offset = 0
  const offsets: number[] = []
  for (const tensor of tensors) {
    header.string(tensor.name)
    header.uint32(tensor.dimensions.length)
    for (const dimension of tensor.dimensions) header.uint64(dimension)
    header.uint32(ggmlTypes[tensor.type])
    header.uint64(offset)
    offsets.push(offset)
    offset = alignUp(offset + tensorBytes(tensor), ALIGNMENT)
  }
  const headerBytes = header.bytes()
  yield headerBytes
  yield new Uint8Array(alignUp(headerBytes.byteLength, ALIGNMENT) - headerBytes.byteLength)

  const random = seededRandom(options.seed)
  let written = 0
  for (const [index, tensor] of tensors.entries()) {
    if (offsets[index]! > written) yield new Uint8Array(offsets[index]! - written)
    const values = new Float32Array(
      tensor.dimensions.reduce((product, dimension) => product * dimension, 1),
    )
    tensor.fill(values, random)
    const data = encodeTensor(values, tensor.type)
    yield data
    written = offsets[index]! + data.byteLength
  }
}

function buildMetadata(options: ResolvedTinyModelOptions): Map<string, MetadataValue> {
  const { tokens, types } = tinyVocabulary(options.vocabularySize)
  const uint32 = (value: number): MetadataValue => ({ type: 'uint32', value })
  const entries: Array<[string, MetadataValue]> = [
    ['general.architecture', { type: 'string', value: 'llama' }],
    ['general.name', { type: 'string', value: options.name }],
    ['general.file_type', uint32(fileTypes[options.type])],
    ['llama.context_length', uint32(options.contextLength)],
    ['llama.embedding_length', uint32(options.embeddingLength)],
    ['llama.block_count', uint32(options.layers)],
    ['llama.feed_forward_length', uint32(options.feedForwardLength)],
    ['llama.attention.head_count', uint32(options.headCount)],
    ['llama.attention.head_count_kv', uint32(options.headCountKv!)],
    ['llama.rope.dimension_count', uint32(options.embeddingLength / options.headCount)],
    ['llama.attention.layer_norm_rms_epsilon', { type: 'float32', value: 1e-5 }],
    ['llama.vocab_size', uint32(options.vocabularySize)],
    ['tokenizer.ggml.model', { type: 'string', value: 'llama' }],
    ['tokenizer.ggml.tokens', { type: 'array', itemType: 'string', value: tokens }],
    [
      'tokenizer.ggml.scores',
      { type: 'array', itemType: 'float32', value: tokens.map((_, index) => -index) },
    ],
    ['tokenizer.ggml.token_type', { type: 'array', itemType: 'int32', value: types }],
    ['tokenizer.ggml.unknown_token_id', uint32(0)],
    ['tokenizer.ggml.bos_token_id', uint32(1)],
    ['tokenizer.ggml.eos_token_id', uint32(2)],
    ['tokenizer.ggml.add_bos_token', { type: 'bool', value: true }],
    ['tokenizer.ggml.add_eos_token', { type: 'bool', value: false }],
    ['tokenizer.chat_template', { type: 'string', value: CHAT_TEMPLATE }],
  ]
  const omitted = new Set(options.omitMetadataKeys)
  const metadata = new Map(entries.filter(([key]) => !omitted.has(key)))
  for (const [key, value] of Object.entries(options.overrideMetadata))
    metadata.set(key, typeof value === 'number' ? uint32(value) : { type: 'string', value })
  return metadata
}

function planTensors(options: ResolvedTinyModelOptions): TensorPlan[] {
  const {
    embeddingLength: embedding,
    feedForwardLength: feedForward,
    vocabularySize: vocabulary,
  } = options
  const headSize = embedding / options.headCount
  const kvLength = headSize * options.headCountKv!
  const scale = 0.05
  const ones = (values: Float32Array) => values.fill(1)
  const gaussian = (values: Float32Array, random: () => number) => {
    for (let index = 0; index < values.length; index++) values[index] = normal(random) * scale
  }
  // A matrix [rows of `rowLength`]: element (row, column) is at row * rowLength + column.
  // Reading from dimension 0 of the residual stream means column 0; writing to it means row 0.
  const ignoresConstant = (rowLength: number) => (values: Float32Array, random: () => number) => {
    gaussian(values, random)
    for (let row = 0; row < values.length / rowLength; row++) values[row * rowLength] = 0
  }
  const leavesConstant = (rowLength: number) => (values: Float32Array, random: () => number) => {
    gaussian(values, random)
    values.fill(0, 0, rowLength)
  }
  // Control tokens and raw byte tokens (which can form invalid UTF-8) are never emitted.
  const unreadableTokens = specialTokens.length + 256
  const tensors: TensorPlan[] = [
    {
      name: 'token_embd.weight',
      dimensions: [embedding, vocabulary],
      type: options.type,
      fill: (values, random) => {
        gaussian(values, random)
        for (let token = 0; token < vocabulary; token++) values[token * embedding] = 1
      },
    },
  ]
  for (let layer = 0; layer < options.layers; layer++) {
    const block = `blk.${layer}`
    tensors.push(
      { name: `${block}.attn_norm.weight`, dimensions: [embedding], type: 'f32', fill: ones },
      {
        name: `${block}.attn_q.weight`,
        dimensions: [embedding, embedding],
        type: options.type,
        fill: ignoresConstant(embedding),
      },
      {
        name: `${block}.attn_k.weight`,
        dimensions: [embedding, kvLength],
        type: options.type,
        fill: ignoresConstant(embedding),
      },
      {
        name: `${block}.attn_v.weight`,
        dimensions: [embedding, kvLength],
        type: options.type,
        fill: ignoresConstant(embedding),
      },
      {
        name: `${block}.attn_output.weight`,
        dimensions: [embedding, embedding],
        type: options.type,
        fill: leavesConstant(embedding),
      },
      { name: `${block}.ffn_norm.weight`, dimensions: [embedding], type: 'f32', fill: ones },
      {
        name: `${block}.ffn_gate.weight`,
        dimensions: [embedding, feedForward],
        type: options.type,
        fill: ignoresConstant(embedding),
      },
      {
        name: `${block}.ffn_up.weight`,
        dimensions: [embedding, feedForward],
        type: options.type,
        fill: ignoresConstant(embedding),
      },
      {
        name: `${block}.ffn_down.weight`,
        dimensions: [feedForward, embedding],
        type: options.type,
        fill: leavesConstant(feedForward),
      },
    )
  }
  tensors.push(
    { name: 'output_norm.weight', dimensions: [embedding], type: 'f32', fill: ones },
    {
      name: 'output.weight',
      dimensions: [embedding, vocabulary],
      type: options.type,
      fill: (values, random) => {
        for (let index = 0; index < values.length; index++) values[index] = normal(random)
        for (let token = 0; token < vocabulary; token++)
          values[token * embedding] = token < unreadableTokens ? -4 : 0
      },
    },
  )
  return tensors
}

function tensorBytes(tensor: TensorPlan): number {
  const count = tensor.dimensions.reduce((product, dimension) => product * dimension, 1)
  if (tensor.type === 'f32') return count * 4
  if (tensor.type === 'f16') return count * 2
  return (count / 32) * 34
}

function encodeTensor(values: Float32Array, type: TensorType): Uint8Array {
  if (type === 'f32') return new Uint8Array(values.buffer, values.byteOffset, values.byteLength)
  if (type === 'f16') {
    const halves = new Uint16Array(values.length)
    for (let index = 0; index < values.length; index++) halves[index] = toHalf(values[index]!)
    return new Uint8Array(halves.buffer)
  }
  // Q8_0: blocks of 32 values, each an f16 scale and 32 signed bytes.
  const blocks = values.length / 32
  const output = new Uint8Array(blocks * 34)
  const view = new DataView(output.buffer)
  for (let block = 0; block < blocks; block++) {
    let maximum = 0
    for (let index = 0; index < 32; index++)
      maximum = Math.max(maximum, Math.abs(values[block * 32 + index]!))
    const scale = maximum / 127
    const inverse = scale === 0 ? 0 : 1 / scale
    view.setUint16(block * 34, toHalf(scale), true)
    for (let index = 0; index < 32; index++)
      view.setInt8(block * 34 + 2 + index, Math.round(values[block * 32 + index]! * inverse))
  }
  return output
}

const float32 = new Float32Array(1)
const bits32 = new Uint32Array(float32.buffer)

/** IEEE 754 binary16 bits of `value`, rounded to nearest even (Float16Array is not in Node 22). */
export function toHalf(value: number): number {
  float32[0] = value
  const bits = bits32[0]!
  const sign = (bits >>> 16) & 0x8000
  const exponent = (bits >>> 23) & 0xff
  const mantissa = bits & 0x7fffff
  if (exponent === 0xff) return sign | 0x7c00 | (mantissa === 0 ? 0 : 0x200)
  const halfExponent = exponent - 127 + 15
  if (halfExponent >= 0x1f) return sign | 0x7c00
  if (halfExponent <= 0) {
    if (halfExponent < -10) return sign
    const shifted = (mantissa | 0x800000) >>> (14 - halfExponent)
    const remainder = (mantissa | 0x800000) & ((1 << (14 - halfExponent)) - 1)
    const halfway = 1 << (13 - halfExponent)
    return (
      sign |
      (shifted + (remainder > halfway || (remainder === halfway && (shifted & 1) === 1) ? 1 : 0))
    )
  }
  let half = sign | (halfExponent << 10) | (mantissa >>> 13)
  const remainder = mantissa & 0x1fff
  if (remainder > 0x1000 || (remainder === 0x1000 && (half & 1) === 1)) half++
  return half
}

/** mulberry32: small, fast and good enough for test weights; the point is determinism. */
function seededRandom(seed: number): () => number {
  let state = seed >>> 0
  return () => {
    state = (state + 0x6d2b79f5) >>> 0
    let value = state
    value = Math.imul(value ^ (value >>> 15), value | 1)
    value ^= value + Math.imul(value ^ (value >>> 7), value | 61)
    return ((value ^ (value >>> 14)) >>> 0) / 4294967296
  }
}

/** A standard normal sample (Box-Muller). */
function normal(random: () => number): number {
  const u = 1 - random()
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * random())
}

function alignUp(value: number, alignment: number): number {
  return Math.ceil(value / alignment) * alignment
}

/** Little-endian GGUF header encoding into a growing buffer. */
class ByteWriter {
  private buffer = Buffer.alloc(64 * 1024)
  private length = 0

  private reserve(bytes: number): void {
    if (this.length + bytes <= this.buffer.byteLength) return
    const grown = Buffer.alloc(Math.max(this.buffer.byteLength * 2, this.length + bytes))
    this.buffer.copy(grown, 0, 0, this.length)
    this.buffer = grown
  }

  uint32(value: number): void {
    this.reserve(4)
    this.length = this.buffer.writeUInt32LE(value, this.length)
  }

  int32(value: number): void {
    this.reserve(4)
    this.length = this.buffer.writeInt32LE(value, this.length)
  }

  float32(value: number): void {
    this.reserve(4)
    this.length = this.buffer.writeFloatLE(value, this.length)
  }

  uint64(value: number): void {
    this.reserve(8)
    this.length = this.buffer.writeBigUInt64LE(BigInt(value), this.length)
  }

  string(value: string): void {
    const bytes = Buffer.from(value, 'utf8')
    this.uint64(bytes.byteLength)
    this.reserve(bytes.byteLength)
    this.length += bytes.copy(this.buffer, this.length)
  }

  metadataValue(entry: MetadataValue): void {
    this.uint32(valueTypes[entry.type])
    if (entry.type === 'uint32') this.uint32(entry.value)
    else if (entry.type === 'int32') this.int32(entry.value)
    else if (entry.type === 'float32') this.float32(entry.value)
    else if (entry.type === 'string') this.string(entry.value)
    else if (entry.type === 'bool') {
      this.reserve(1)
      this.length = this.buffer.writeUInt8(entry.value ? 1 : 0, this.length)
    } else {
      this.uint32(valueTypes[entry.itemType])
      this.uint64(entry.value.length)
      for (const item of entry.value) {
        if (entry.itemType === 'string') this.string(item as string)
        else if (entry.itemType === 'float32') this.float32(item as number)
        else this.int32(item as number)
      }
    }
  }

  bytes(): Uint8Array {
    return this.buffer.subarray(0, this.length)
  }
}
