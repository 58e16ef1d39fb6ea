/**
 * A bounds check of a GGUF header's structure, before any other parser reads it.
 *
 * node-llama-cpp's GGUF parser trusts the lengths it reads: a string or array length damaged into
 * a huge number becomes a file read whose length is not a 32-bit integer, and Node aborts the
 * process on that (`Assertion failed: args[3]->IsInt32()`, found by this package's fuzz test).
 * So the header is walked here first: every length is checked against the bytes the file has
 * left, every type against the ones GGUF defines, before a single value is trusted.
 */
import { type FileHandle, open } from 'node:fs/promises'

/** GGUF value types, by the size of one item; strings and arrays have their own rules. */
const fixedSizes = new Map<number, number>([
  [0, 1], // uint8
  [1, 1], // int8
  [2, 2], // uint16
  [3, 2], // int16
  [4, 4], // uint32
  [5, 4], // int32
  [6, 4], // float32
  [7, 1], // bool
  [10, 8], // uint64
  [11, 8], // int64
  [12, 8], // float64
])
const STRING = 8
const ARRAY = 9
/** llama.cpp's GGML_MAX_DIMS. */
const MAX_DIMENSIONS = 4
const WINDOW = 1024 * 1024

/** Where the header's structure first goes wrong; undefined when it is sound. */
export async function checkGgufStructure(path: string): Promise<string | undefined> {
  const handle = await open(path, 'r')
  try {
    const reader = new BoundedReader(handle, (await handle.stat()).size)
    return await walk(reader)
  } finally {
    await handle.close()
  }
}

async function walk(reader: BoundedReader): Promise<string | undefined> {
  if (reader.size < 24) return `it has ${reader.size} bytes, fewer than a GGUF header's 24`
  const magic = await reader.bytes(4)
  if (Buffer.from(magic).toString('latin1') !== 'GGUF')
    return `it does not start with "GGUF" (it starts with ${JSON.stringify(Buffer.from(magic).toString('latin1'))})`
  const version = await reader.uint32()
  if (version !== 2 && version !== 3) return `its GGUF version is ${version}; only 2 and 3 exist`
  const tensorCount = await reader.uint64()
  const metadataCount = await reader.uint64()
  // Each metadata entry takes at least 12 bytes, each tensor at least 24: more than the file holds is a lie.
  if (metadataCount * 12n > BigInt(reader.left))
    return `it declares ${metadataCount} metadata entries, more than its ${reader.size} bytes can hold`
  if (tensorCount * 24n > BigInt(reader.left))
    return `it declares ${tensorCount} tensors, more than its ${reader.size} bytes can hold`
  for (let index = 0n; index < metadataCount; index++) {
    const key = await reader.string()
    if (key === undefined) return `metadata entry ${index} has a key longer than the file`
    const type = await reader.uint32()
    const problem = await skipValue(reader, type, 0)
    if (problem !== undefined) return `metadata key ${key}: ${problem}`
  }
  for (let index = 0n; index < tensorCount; index++) {
    const name = await reader.string()
    if (name === undefined) return `tensor ${index} has a name longer than the file`
    const dimensions = await reader.uint32()
    if (dimensions < 1 || dimensions > MAX_DIMENSIONS)
      return `tensor ${name} has ${dimensions} dimensions (1 to ${MAX_DIMENSIONS} exist)`
    if (!reader.has(dimensions * 8 + 12)) return `tensor ${name} is cut short`
    for (let dimension = 0; dimension < dimensions; dimension++) await reader.uint64()
    await reader.uint32()
    await reader.uint64()
  }
  return undefined
}

async function skipValue(
  reader: BoundedReader,
  type: number,
  depth: number,
): Promise<string | undefined> {
  const fixed = fixedSizes.get(type)
  if (fixed !== undefined) {
    if (!reader.has(fixed)) return 'its value is cut short'
    reader.skip(fixed)
    return undefined
  }
  if (type === STRING)
    return (await reader.string(false)) === undefined
      ? 'its string is longer than the file'
      : undefined
  if (type !== ARRAY) return `its value type is ${type}, which GGUF does not define`
  if (depth > 2) return 'its arrays are nested too deep'
  if (!reader.has(12)) return 'its array is cut short'
  const itemType = await reader.uint32()
  const count = await reader.uint64()
  const itemSize = fixedSizes.get(itemType)
  if (itemSize !== undefined) {
    if (count * BigInt(itemSize) > BigInt(reader.left))
      return `its array of ${count} items is longer than the file`
    reader.skip(Number(count) * itemSize)
    return undefined
  }
  // Strings and arrays take at least 8 bytes each.
  if (count * 8n > BigInt(reader.left)) return `its array of ${count} items is longer than the file`
  for (let index = 0n; index < count; index++) {
    const problem = await skipValue(reader, itemType, depth + 1)
    if (problem !== undefined) return problem
  }
  return undefined
}

/** Reads a file front to back through a window, never past its end. */
class BoundedReader {
  private position = 0
  private window = Buffer.alloc(0)
  private windowStart = 0

  constructor(
    private readonly handle: FileHandle,
    readonly size: number,
  ) {}

  get left(): number {
    return this.size - this.position
  }

  has(count: number): boolean {
    return count <= this.left
  }

  skip(count: number): void {
    this.position += count
  }

  async bytes(count: number): Promise<Uint8Array> {
    if (!this.has(count)) throw new RangeError('past the end')
    const end = this.position + count
    if (this.position < this.windowStart || end > this.windowStart + this.window.length) {
      const length = Math.min(Math.max(count, WINDOW), this.size - this.position)
      const buffer = Buffer.alloc(length)
      await this.handle.read(buffer, 0, length, this.position)
      this.window = buffer
      this.windowStart = this.position
    }
    const offset = this.position - this.windowStart
    this.position = end
    return this.window.subarray(offset, offset + count)
  }

  async uint32(): Promise<number> {
    if (!this.has(4)) return -1
    return Buffer.from(await this.bytes(4)).readUInt32LE(0)
  }

  async uint64(): Promise<bigint> {
    if (!this.has(8)) return -1n
    return Buffer.from(await this.bytes(8)).readBigUInt64LE(0)
  }

  /** A length-prefixed string (decoded when `decode`), or undefined when it runs past the end. */
  async string(decode = true): Promise<string | undefined> {
    const length = await this.uint64()
    if (length < 0n || length > BigInt(this.left)) return undefined
    if (!decode) {
      this.skip(Number(length))
      return ''
    }
    return Buffer.from(await this.bytes(Number(length))).toString('utf8')
  }
}
