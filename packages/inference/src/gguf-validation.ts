/**
 * Checks a GGUF file before llama.cpp sees it.
 *
 * llama.cpp trusts its input: a missing or zero `llama.feed_forward_length`,
 * `llama.attention.head_count` or `head_count_kv` makes it build a tensor with a zero dimension, and
 * a zero `llama.block_count` fails another check; each is a `GGML_ASSERT`, which aborts the whole
 * process (every model and request on the node with it). A file cut short is refused more gently,
 * but only after mapping it. So every file is read here first: its header's structure is walked
 * with every length bounded by the file (`gguf-structure.ts`: node-llama-cpp's own parser makes
 * Node abort on some damaged lengths), then it is parsed with node-llama-cpp's JavaScript parser
 * and checked: the metadata keys the architecture needs, and every tensor's bytes inside the file.
 */
import { stat } from 'node:fs/promises'
import { GgmlType, type GgufFileInfo, readGgufFileInfo } from 'node-llama-cpp'
import { InferenceError } from './errors.js'
import { checkGgufStructure } from './gguf-structure.js'

export interface ValidatedGguf {
  path: string
  architecture: string
  /** `general.name`, when the file has one. */
  name: string | undefined
  /** The context length the model was trained with. */
  trainedContextLength: number
  layers: number
  tensorCount: number
  /** Bytes, over every part of a split model. */
  size: number
  parts: number
  /** node-llama-cpp's parsed header, for memory estimates. */
  fileInfo: GgufFileInfo
}

/**
 * Architectures whose loader in llama.cpp reads these hyperparameters without a default, so a
 * missing one becomes a zero-sized tensor dimension and an abort. Other architectures get the
 * checks that apply to every model.
 */
const denseTransformerArchitectures = new Set([
  'llama',
  'mistral',
  'mistral3',
  'qwen2',
  'qwen3',
  'gemma',
  'gemma2',
  'gemma3',
  'phi3',
  'starcoder2',
  'granite',
  'stablelm',
  'internlm2',
  'olmo',
  'olmo2',
  'command-r',
  'cohere2',
  'baichuan',
  'exaone',
  'smollm3',
])

const keysEveryModelNeeds = ['context_length', 'embedding_length', 'block_count']
const keysDenseTransformersNeed = ['feed_forward_length', 'attention.head_count']
/** Keys with a default when missing, that abort llama.cpp when present and zero. */
const keysPositiveWhenPresent = ['attention.head_count_kv']

/** ggml's block size (values) and block bytes per type; from ggml's type traits. */
const ggmlTypeLayout = new Map<number, { blockValues: number; blockBytes: number }>([
  [GgmlType.F32, { blockValues: 1, blockBytes: 4 }],
  [GgmlType.F16, { blockValues: 1, blockBytes: 2 }],
  [GgmlType.BF16, { blockValues: 1, blockBytes: 2 }],
  [GgmlType.F64, { blockValues: 1, blockBytes: 8 }],
  [GgmlType.I8, { blockValues: 1, blockBytes: 1 }],
  [GgmlType.I16, { blockValues: 1, blockBytes: 2 }],
  [GgmlType.I32, { blockValues: 1, blockBytes: 4 }],
  [GgmlType.I64, { blockValues: 1, blockBytes: 8 }],
  [GgmlType.Q4_0, { blockValues: 32, blockBytes: 18 }],
  [GgmlType.Q4_1, { blockValues: 32, blockBytes: 20 }],
  [GgmlType.Q5_0, { blockValues: 32, blockBytes: 22 }],
  [GgmlType.Q5_1, { blockValues: 32, blockBytes: 24 }],
  [GgmlType.Q8_0, { blockValues: 32, blockBytes: 34 }],
  [GgmlType.Q8_1, { blockValues: 32, blockBytes: 36 }],
  [GgmlType.Q2_K, { blockValues: 256, blockBytes: 84 }],
  [GgmlType.Q3_K, { blockValues: 256, blockBytes: 110 }],
  [GgmlType.Q4_K, { blockValues: 256, blockBytes: 144 }],
  [GgmlType.Q5_K, { blockValues: 256, blockBytes: 176 }],
  [GgmlType.Q6_K, { blockValues: 256, blockBytes: 210 }],
  [GgmlType.Q8_K, { blockValues: 256, blockBytes: 292 }],
  [GgmlType.IQ2_XXS, { blockValues: 256, blockBytes: 66 }],
  [GgmlType.IQ2_XS, { blockValues: 256, blockBytes: 74 }],
  [GgmlType.IQ3_XXS, { blockValues: 256, blockBytes: 98 }],
  [GgmlType.IQ1_S, { blockValues: 256, blockBytes: 50 }],
  [GgmlType.IQ4_NL, { blockValues: 32, blockBytes: 18 }],
  [GgmlType.IQ3_S, { blockValues: 256, blockBytes: 110 }],
  [GgmlType.IQ2_S, { blockValues: 256, blockBytes: 82 }],
  [GgmlType.IQ4_XS, { blockValues: 256, blockBytes: 136 }],
  [GgmlType.IQ1_M, { blockValues: 256, blockBytes: 56 }],
  [GgmlType.TQ1_0, { blockValues: 256, blockBytes: 54 }],
  [GgmlType.TQ2_0, { blockValues: 256, blockBytes: 66 }],
  [GgmlType.MXFP4, { blockValues: 32, blockBytes: 17 }],
])

/**
 * Reads and checks a GGUF model (the first part of a split model finds the others). Throws
 * `InferenceError` `LLMESH_GGUF_INVALID` naming the file and the problem; never aborts.
 */
export async function validateGguf(path: string): Promise<ValidatedGguf> {
  const invalid = (problem: string, cause?: unknown) =>
    new InferenceError({
      code: 'LLMESH_GGUF_INVALID',
      path,
      message: `${path} is not a GGUF model llama.cpp can load: ${problem}.`,
      cause,
    })

  for (const part of splitPartPaths(path)) {
    let problem: string | undefined
    try {
      problem = await checkGgufStructure(part)
    } catch (error) {
      throw invalid(
        `${part === path ? 'it' : part} cannot be read (${error instanceof Error ? error.message : String(error)})`,
        error,
      )
    }
    if (problem !== undefined)
      throw invalid(part === path ? problem : `its part ${part} is damaged: ${problem}`)
  }

  let fileInfo: GgufFileInfo
  try {
    fileInfo = await readGgufFileInfo(path, {
      sourceType: 'filesystem',
      readTensorInfo: true,
      logWarnings: false,
    })
  } catch (error) {
    throw invalid(
      `its header cannot be read (${error instanceof Error ? error.message : String(error)})`,
      error,
    )
  }

  const partSizes: number[] = []
  for (const source of fileInfo.sourceData)
    partSizes.push(source.type === 'path' ? (await stat(source.path)).size : source.buffer.length)
  // The parser reads zeros past the end of a file, so a header cut short parses into nonsense.
  if ((fileInfo.infoEndOffset ?? 0) > partSizes[0]!)
    throw invalid(
      `its header is cut short: it ends at byte ${fileInfo.infoEndOffset}, and the file has ${partSizes[0]} bytes`,
    )

  const metadata = fileInfo.metadata as unknown as Record<string, unknown>
  const architecture = lookup(metadata, 'general.architecture')
  if (typeof architecture !== 'string' || architecture === '')
    throw invalid('the metadata key general.architecture is missing')

  const required = denseTransformerArchitectures.has(architecture)
    ? [...keysEveryModelNeeds, ...keysDenseTransformersNeed]
    : keysEveryModelNeeds
  for (const key of [
    ...keysEveryModelNeeds,
    ...keysDenseTransformersNeed,
    ...keysPositiveWhenPresent,
  ]) {
    const fullKey = `${architecture}.${key}`
    const value = lookup(metadata, fullKey)
    if (value === undefined) {
      if (required.includes(key)) throw invalid(`the metadata key ${fullKey} is missing`)
      continue
    }
    if (!isPositiveCount(value))
      throw invalid(`the metadata key ${fullKey} is ${describe(value)}, not a positive integer`)
  }
  const tokenizerModel = lookup(metadata, 'tokenizer.ggml.model')
  if (typeof tokenizerModel !== 'string')
    throw invalid('the metadata key tokenizer.ggml.model is missing')
  const tokens = lookup(metadata, 'tokenizer.ggml.tokens')
  if (tokenizerModel !== 'none' && (!Array.isArray(tokens) || tokens.length === 0))
    throw invalid('the metadata key tokenizer.ggml.tokens is missing or empty')

  const tensors = fileInfo.fullTensorInfo ?? fileInfo.tensorInfo ?? []
  if (tensors.length === 0) throw invalid('it has no tensors')
  for (const tensor of tensors) {
    const partSize = partSizes[tensor.filePart - 1]
    if (partSize === undefined)
      throw invalid(`tensor ${tensor.name} is in part ${tensor.filePart}, which is missing`)
    let values = 1n
    for (const dimension of tensor.dimensions) {
      if (BigInt(dimension) < 1n)
        throw invalid(`tensor ${tensor.name} has a dimension of ${dimension}`)
      values *= BigInt(dimension)
    }
    const layout = ggmlTypeLayout.get(tensor.ggmlType)
    const bytes =
      layout === undefined ? 0n : (values / BigInt(layout.blockValues)) * BigInt(layout.blockBytes)
    const end = BigInt(tensor.fileOffset) + bytes
    if (end > BigInt(partSize))
      throw invalid(
        `tensor ${tensor.name} ends at byte ${end}, past the end of the file (${partSize} bytes); the file is truncated or damaged`,
      )
  }

  const name = lookup(metadata, 'general.name')
  return {
    path,
    architecture,
    name: typeof name === 'string' ? name : undefined,
    trainedContextLength: Number(lookup(metadata, `${architecture}.context_length`)),
    layers: Number(lookup(metadata, `${architecture}.block_count`)),
    tensorCount: tensors.length,
    size: partSizes.reduce((sum, size) => sum + size, 0),
    parts: partSizes.length,
    fileInfo,
  }
}

/** A split model's parts (`name-00001-of-00003.gguf` and its siblings), or just the file. */
function splitPartPaths(path: string): string[] {
  const match = /^(.*)-(\d{5})-of-(\d{5})\.gguf$/i.exec(path)
  if (match === null) return [path]
  const total = Number(match[3])
  return Array.from(
    { length: total },
    (_, index) => `${match[1]}-${String(index + 1).padStart(5, '0')}-of-${match[3]}.gguf`,
  )
}

/** node-llama-cpp nests metadata by the dots of its keys. */
function lookup(metadata: Record<string, unknown>, key: string): unknown {
  let value: unknown = metadata
  for (const part of key.split('.')) {
    if (typeof value !== 'object' || value === null) return undefined
    value = (value as Record<string, unknown>)[part]
  }
  return value
}

/** A positive integer, or (for architectures with per-layer values) a list of non-negative ones, not all zero. */
function isPositiveCount(value: unknown): boolean {
  if (Array.isArray(value))
    return (
      value.length > 0 &&
      value.every((item) => isCount(item)) &&
      value.some((item) => Number(item) > 0)
    )
  return isCount(value) && Number(value) > 0
}

function isCount(value: unknown): boolean {
  return (
    (typeof value === 'number' && Number.isInteger(value) && value >= 0) ||
    (typeof value === 'bigint' && value >= 0n)
  )
}

function describe(value: unknown): string {
  if (Array.isArray(value)) return `a list [${value.slice(0, 4).join(', ')}…]`
  return typeof value === 'string' ? `"${value}"` : String(value)
}
