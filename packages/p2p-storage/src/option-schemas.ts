/** Schemas of the numbers the package's public functions take as options. */
import { z } from 'zod'

/** A count, a size or a rate: above 0, or `Infinity` for no limit. */
export const positiveOrUnlimited = z.custom<number>(
  (value) => typeof value === 'number' && value > 0,
  'expected a number above 0 (Infinity for no limit)',
)

/** A delay for a timer: a whole number of ms a Node timer takes (longer ones fire at once). */
export const timerMs = z
  .number()
  .int()
  .positive()
  .max(2 ** 31 - 1)
