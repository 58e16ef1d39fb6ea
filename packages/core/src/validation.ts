import type { z } from 'zod'
import { InvalidArgumentError } from './errors.js'

/**
 * Formats a zod issue path the way a person reads it in code: `artifacts[2].sha256`.
 * The root is written as `(root)`.
 */
export function formatIssuePath(path: ReadonlyArray<PropertyKey>): string {
  let text = ''
  for (const segment of path) {
    if (typeof segment === 'number') text += `[${segment}]`
    else if (typeof segment === 'string' && /^[A-Za-z_$][\w$]*$/.test(segment))
      text += text === '' ? segment : `.${segment}`
    else text += `[${JSON.stringify(String(segment))}]`
  }
  return text === '' ? '(root)' : text
}

/** Validates options at a public boundary; throws `InvalidArgumentError` naming the exact field. */
export function parseArgument<Schema extends z.ZodType>(
  schema: Schema,
  value: unknown,
  argument: string,
): z.output<Schema> {
  const result = schema.safeParse(value)
  if (result.success) return result.data
  const issue = result.error.issues[0]!
  const where = issue.path.length === 0 ? argument : `${argument}.${formatIssuePath(issue.path)}`
  throw new InvalidArgumentError({ argument: where, message: issue.message, cause: result.error })
}
