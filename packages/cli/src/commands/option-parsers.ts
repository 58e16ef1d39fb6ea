import { isMultiaddrText } from '@llmesh/p2p-storage'
import bytes from 'bytes'
import { InvalidArgumentError } from 'commander'

/** Parses a non-negative integer option value, with commander's usage error when it is not one. */
export function parseInteger(value: string): number {
  const parsed = Number(value)
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(parsed))
    throw new InvalidArgumentError(`"${value}" is not a whole number`)
  return parsed
}

/** Parses a byte size such as `500kb`, `10MB` or `1.5GB` (binary units, as the `bytes` package reads them). */
export function parseByteSize(value: string): number {
  const parsed = bytes.parse(value)
  if (parsed === null || !Number.isFinite(parsed) || parsed <= 0)
    throw new InvalidArgumentError(`"${value}" is not a size such as 500kb, 10MB or 1.5GB`)
  return parsed
}

/** The usage error's words for a peer address that is no multiaddr. */
export const NOT_A_MULTIADDR = 'not a multiaddr such as /ip4/192.0.2.7/tcp/4001/p2p/<peer id>'

/**
 * Collects the values of a variadic multiaddr option or argument, refusing one that is not a
 * multiaddr before any peer is dialled.
 */
export function collectMultiaddr(value: string, previous: string[] = []): string[] {
  if (!isMultiaddrText(value)) throw new InvalidArgumentError(NOT_A_MULTIADDR)
  return [...previous, value]
}
