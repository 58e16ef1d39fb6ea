/**
 * The blob exchange, two libp2p protocols:
 *
 * - `/llmesh/blob/have/1.0.0`: `{ digest, watch? }` → `{ status: "ok", size, pieceSize, bitfield }`
 *   (the verified pieces the peer holds, base64) or an error. With `watch: true` the stream stays
 *   open and the peer pushes `{ pieces: [index, ...] }` as it verifies more (those of 50 ms in
 *   one message), until it holds them all (then it closes the stream) or the asker closes it;
 * - `/llmesh/blob/piece/1.0.0`: `{ digest, index, redirect? }` → `{ status: "ok", length }`
 *   followed by the piece's bytes as one length-prefixed message, or an error (after which the
 *   peer closes the stream). Once it has read a piece, the asker may send its next request on the
 *   same stream; either side ends it by closing. (Earlier peers served one piece per stream: the
 *   asker sends its next request on a new stream when it finds the last one ended.) An asker that
 *   sends `redirect: true` takes a redirect from a seed (see SuperSeeding): the error
 *   `LLMESH_PEER_SENT_ELSEWHERE` with `suggest`, a piece the seed sent to no one yet; the stream
 *   stays open for the next request.
 *
 * Messages are length-prefixed (varint) JSON; a piece is at most the largest piece size the
 * manifest allows and a request at most 4 KiB, so memory per stream is bounded (a length prefix
 * longer than such a message needs is a protocol error: the stream is cut). A piece's bytes are
 * never trusted: the requester checks them against its own piece index.
 */
import type { AbortOptions, Stream } from '@libp2p/interface'
import { type LengthPrefixedStream, lpStream } from '@libp2p/utils'
import { MAX_PIECE_SIZE } from '@llmesh/manifest'
import { pEvent } from 'p-event'
import * as varint from 'uint8-varint'
import { Uint8ArrayList } from 'uint8arraylist'
import { z } from 'zod'
import { PeerError, type PeerErrorCode } from './errors.js'

export const HAVE_PROTOCOL = '/llmesh/blob/have/1.0.0'
export const PIECE_PROTOCOL = '/llmesh/blob/piece/1.0.0'

/** A watched peer sends the pieces it verifies within this long in one update. */
export const HAVE_UPDATE_DELAY_MS = 50

/** The largest message: a piece, plus room for framing. */
export const MAX_MESSAGE_BYTES = MAX_PIECE_SIZE + 1024

/** The largest request a peer answers (have, piece): a digest and an index need far less. */
export const MAX_REQUEST_BYTES = 4096

/**
 * A piece is read from disk and sent in parts of at most this many bytes, so that an upload holds
 * one part, not a whole piece (32 MiB in a 100 GiB model), and its first bytes leave before its
 * last are read. The parts make one message: the asker sees no difference.
 */
export const PIECE_PART_BYTES = 4 * 1024 * 1024

const digestSchema = z.string().regex(/^[0-9a-f]{64}$/, { message: 'must be 64 lowercase hex' })

export const haveRequestSchema = z.strictObject({
  digest: digestSchema,
  watch: z.boolean().optional(),
})

/** Pieces a watched peer verified since its last message. */
export const haveUpdateSchema = z.strictObject({
  pieces: z.array(z.number().int().nonnegative()).min(1),
})
export const pieceRequestSchema = z.strictObject({
  digest: digestSchema,
  index: z.number().int().nonnegative(),
  /** The asker takes a redirect to another piece (a swarm download does). */
  redirect: z.boolean().optional(),
})

/** The refusals this version knows; `LLMESH_PEER_REFUSED` stands for any other. */
const ERROR_CODES = [
  'LLMESH_PEER_UNKNOWN_DIGEST',
  'LLMESH_PEER_OUT_OF_RANGE',
  'LLMESH_PEER_PIECE_NOT_HELD',
  'LLMESH_PEER_BUSY',
  'LLMESH_PEER_SENT_ELSEWHERE',
  'LLMESH_PEER_PROTOCOL',
] as const satisfies readonly PeerErrorCode[]

const errorAnswerSchema = z
  .object({
    status: z.literal('error'),
    code: z.string(),
    message: z.string(),
    /** With `LLMESH_PEER_SENT_ELSEWHERE`: the piece to ask for instead. */
    suggest: z.number().int().nonnegative().optional(),
  })
  // A code this version does not know (a newer peer's refusal) is a refusal, not a broken
  // protocol: a peer is not banned for speaking a later version.
  .transform((answer) => {
    const known = ERROR_CODES.find((code) => code === answer.code)
    return known === undefined
      ? {
          ...answer,
          code: 'LLMESH_PEER_REFUSED' as const,
          message: `${answer.code}: ${answer.message}`,
        }
      : { ...answer, code: known }
  })

export const haveAnswerSchema = z.union([
  z.object({
    status: z.literal('ok'),
    size: z.number().int().nonnegative(),
    pieceSize: z.number().int().positive(),
    bitfield: z.string(),
  }),
  errorAnswerSchema,
])

export const pieceAnswerSchema = z.union([
  z.object({ status: z.literal('ok'), length: z.number().int().nonnegative() }),
  errorAnswerSchema,
])

export type HaveAnswer = z.output<typeof haveAnswerSchema>

/** What a length prefix decoder throws while the prefix is incomplete: made once, its stack unused. */
const INCOMPLETE_PREFIX = new RangeError('the length prefix is incomplete')

/**
 * The length prefix (an unsigned varint) of messages of at most `maxDataLength` bytes, for
 * `lpStream`'s `lengthDecoder`.
 *
 * `lpStream` reads a prefix a byte at a time, decodes it after each byte, and reads on while the
 * decoder throws a RangeError. Its default decoder throws a new one each time, with a stack trace:
 * two per piece of 1 MiB or more (a three-byte prefix), about 30 ms of the receiving thread per
 * GiB. It also goes on forever on a run of bytes with the high bit set, one byte and one error
 * at a time. This decoder throws the same RangeError each time, and a prefix longer than the
 * largest message needs is a protocol error at once.
 */
export function lengthPrefixDecoder(
  maxDataLength: number,
): (bytes: { byteLength: number; get(index: number): number }) => number {
  const maxPrefixBytes = Math.max(1, Math.ceil(Math.log2(maxDataLength + 1) / 7))
  return (bytes) => {
    let value = 0
    for (let index = 0; index < bytes.byteLength; index++) {
      if (index === maxPrefixBytes)
        throw new PeerError({
          code: 'LLMESH_PEER_PROTOCOL',
          message: `a length prefix of more than ${maxPrefixBytes} bytes (messages here are at most ${maxDataLength} bytes)`,
        })
      const byte = bytes.get(index)
      value += (byte & 0x7f) * 2 ** (7 * index)
      if (byte < 0x80) return value
    }
    throw INCOMPLETE_PREFIX
  }
}

/**
 * A stream's length-prefixed messages of at most `maxDataLength` bytes; `maxBufferSize` bounds
 * what is read ahead (libp2p's default: 4 MiB).
 */
export function messageStream(
  stream: Stream,
  options: { maxDataLength: number; maxBufferSize?: number },
): LengthPrefixedStream<Stream> {
  return lpStream(stream, { ...options, lengthDecoder: lengthPrefixDecoder(options.maxDataLength) })
}

/**
 * Writes the answer `{ status: "ok", length }` and then the piece's `length` bytes as one
 * length-prefixed message, from `parts` as they come (the first goes in one write with the
 * answer). Each write waits until the stream drains; `options.signal` ends the wait, or the
 * write of a part after it aborted.
 *
 * The wait is for the stream's "drain" event, as libp2p's own length-prefixed writes do:
 * `stream.onDrain()` (of @libp2p/utils 7.4) resolves at once after the stream's first drain, as
 * it keeps the promise it resolved, so a loop on it would buffer a whole piece unsent.
 */
export async function writePiece(
  stream: Stream,
  length: number,
  parts: AsyncIterable<Uint8Array>,
  options: AbortOptions = {},
): Promise<void> {
  const answer = encodeJson({ status: 'ok', length })
  let first = true
  for await (const part of parts) {
    options.signal?.throwIfAborted()
    const bytes = first
      ? new Uint8ArrayList(varint.encode(answer.byteLength), answer, varint.encode(length), part)
      : part
    first = false
    if (!stream.send(bytes))
      await pEvent(stream, 'drain', {
        rejectionEvents: ['close'],
        ...(options.signal === undefined ? {} : { signal: options.signal }),
      })
  }
}

export function encodeJson(value: unknown): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(value))
}

export function errorAnswer(code: (typeof ERROR_CODES)[number], message: string) {
  return { status: 'error' as const, code, message }
}
