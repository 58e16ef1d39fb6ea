/**
 * The blob exchange, two libp2p protocols:
 *
 * - `/llmesh/blob/have/1.0.0`: `{ digest, watch? }` → `{ status: "ok", size, pieceSize, bitfield }`
 *   (the verified pieces the peer holds, base64) or an error. With `watch: true` the stream stays
 *   open and the peer pushes `{ pieces: [index, ...] }` as it verifies more (those of 50 ms in
 *   one message), until it holds them all (then it closes the stream) or the asker closes it;
 * - `/llmesh/blob/piece/1.0.0`: `{ digest, index }` → `{ status: "ok", length }` followed by the
 *   piece's bytes as one length-prefixed message, or an error (after which the peer closes the
 *   stream). Once it has read a piece, the asker may send its next request on the same stream;
 *   either side ends it by closing. (Earlier peers served one piece per stream: the asker sends its
 *   next request on a new stream when it finds the last one ended.)
 *
 * Messages are length-prefixed (varint) JSON; a piece is at most the largest piece size the
 * manifest allows, so memory per stream is bounded. A piece's bytes are never trusted: the
 * requester checks them against its own piece index.
 */
import { MAX_PIECE_SIZE } from '@llmesh/manifest'
import { z } from 'zod'
import type { PeerErrorCode } from './errors.js'

export const HAVE_PROTOCOL = '/llmesh/blob/have/1.0.0'
export const PIECE_PROTOCOL = '/llmesh/blob/piece/1.0.0'

/** A watched peer sends the pieces it verifies within this long in one update. */
export const HAVE_UPDATE_DELAY_MS = 50

/** The largest message: a piece, plus room for framing. */
export const MAX_MESSAGE_BYTES = MAX_PIECE_SIZE + 1024

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
})

const errorAnswerSchema = z.object({
  status: z.literal('error'),
  code: z.enum([
    'LLMESH_PEER_UNKNOWN_DIGEST',
    'LLMESH_PEER_OUT_OF_RANGE',
    'LLMESH_PEER_PIECE_NOT_HELD',
    'LLMESH_PEER_BUSY',
    'LLMESH_PEER_PROTOCOL',
  ]),
  message: z.string(),
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

export function encodeJson(value: unknown): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(value))
}

export function errorAnswer(
  code: Exclude<PeerErrorCode, 'LLMESH_SWARM_EXHAUSTED'>,
  message: string,
) {
  return { status: 'error' as const, code, message }
}
