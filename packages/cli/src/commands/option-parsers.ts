import { InvalidArgumentError } from 'commander'

/** Parses a non-negative integer option value, with commander's usage error when it is not one. */
export function parseInteger(value: string): number {
  const parsed = Number(value)
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(parsed))
    throw new InvalidArgumentError(`"${value}" is not a whole number`)
  return parsed
}
