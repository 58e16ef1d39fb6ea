import { describe, expect, it } from 'vitest'
import { PeerError } from './errors.js'
import { lengthPrefixDecoder, MAX_MESSAGE_BYTES, pieceAnswerSchema } from './protocol.js'

/** An unsigned varint: seven bits a byte, low first, the high bit set on all but the last. */
function varint(value: number): number[] {
  const bytes: number[] = []
  do {
    const low = value % 128
    value = Math.floor(value / 128)
    bytes.push(value > 0 ? low | 0x80 : low)
  } while (value > 0)
  return bytes
}

const list = (bytes: number[]) => ({
  byteLength: bytes.length,
  get: (index: number) => bytes[index]!,
})

describe('lengthPrefixDecoder', () => {
  const decode = lengthPrefixDecoder(MAX_MESSAGE_BYTES)

  it('decodes the prefixes of every message length up to the largest, ignoring what follows', () => {
    for (const length of [0, 1, 127, 128, 300, 16_383, 16_384, 1024 * 1024, MAX_MESSAGE_BYTES])
      expect(decode(list([...varint(length), 0xff, 0x01]))).toBe(length)
  })

  it('throws one and the same RangeError while the prefix is incomplete', () => {
    const prefix = varint(1024 * 1024)
    expect(prefix).toHaveLength(3)
    const errors = [0, 1, 2].map((bytes) => {
      try {
        decode(list(prefix.slice(0, bytes)))
      } catch (error) {
        return error
      }
      return undefined
    })
    expect(errors[0]).toBeInstanceOf(RangeError)
    expect(errors[1]).toBe(errors[0])
    expect(errors[2]).toBe(errors[0])
  })

  it('refuses a prefix longer than the largest message needs, as a protocol error', () => {
    const longest = varint(MAX_MESSAGE_BYTES).length
    let refused: unknown
    try {
      decode(list(new Array(longest + 1).fill(0xff)))
    } catch (error) {
      refused = error
    }
    expect(PeerError.isInstance(refused)).toBe(true)
    expect(refused).toMatchObject({ code: 'LLMESH_PEER_PROTOCOL' })
    // Requests are small: two bytes of prefix at most.
    expect(() => lengthPrefixDecoder(4096)(list([0x80, 0x80, 0x01]))).toThrow(/more than 2 bytes/)
  })
})

describe('pieceAnswerSchema', () => {
  it('reads a refusal whose code this version does not know as a refusal naming that code, not as a broken protocol', () => {
    expect(
      pieceAnswerSchema.parse({
        status: 'error',
        code: 'LLMESH_PEER_SOMETHING_NEW',
        message: 'a later version says no',
      }),
    ).toEqual({
      status: 'error',
      code: 'LLMESH_PEER_REFUSED',
      message: 'LLMESH_PEER_SOMETHING_NEW: a later version says no',
    })
    expect(
      pieceAnswerSchema.parse({ status: 'error', code: 'LLMESH_PEER_BUSY', message: 'busy' }),
    ).toEqual({ status: 'error', code: 'LLMESH_PEER_BUSY', message: 'busy' })
    expect(pieceAnswerSchema.safeParse({ status: 'error', code: 7, message: 'no' }).success).toBe(
      false,
    )
  })
})
