/**
 * Which model a request gets: the one it names, an alias of one, or the model a task policy
 * chooses (a request with `model: "auto"` and the header `x-llmesh-task: debug` gets the code
 * model), all from configuration.
 */
import { z } from 'zod'

export const modelPolicySchema = z.strictObject({
  /** Other names for models: `{ "fast": "acme/tiny" }`. */
  aliases: z.record(z.string(), z.string()).default({}),
  /** Models by task: `{ "debug": "acme/coder" }`, chosen for `model: "auto"` with `x-llmesh-task`. */
  tasks: z.record(z.string(), z.string()).default({}),
  /** The model for `auto` when the request names no task (or an unknown one). */
  defaultModel: z.string().optional(),
  /** Specialty to prefer per task, for the balancer's bonus: `{ "debug": "code" }`. */
  taskSpecialties: z.record(z.string(), z.string()).default({}),
})

export type ModelPolicy = z.output<typeof modelPolicySchema>
export type ModelPolicyInput = z.input<typeof modelPolicySchema>

export interface ResolvedModel {
  model: string
  specialty: string | undefined
}

/** The model and preferred specialty for a request; undefined when `auto` cannot be resolved. */
export function resolveModel(
  policy: ModelPolicy,
  requested: string,
  task: string | undefined,
): ResolvedModel | undefined {
  const specialty = task === undefined ? undefined : policy.taskSpecialties[task]
  if (requested === 'auto') {
    const model = (task === undefined ? undefined : policy.tasks[task]) ?? policy.defaultModel
    return model === undefined ? undefined : { model, specialty }
  }
  return { model: policy.aliases[requested] ?? requested, specialty }
}
