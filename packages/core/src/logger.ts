import createDebug from 'debug'

/**
 * A namespaced debug logger, off by default and enabled with `DEBUG=llmesh:*` (the `debug`
 * package's rules, as in libp2p). Libraries never print to stdout; components receive a logger
 * rather than creating globals, so an app can route or silence them.
 */
export interface Logger {
  (formatter: string, ...args: unknown[]): void
  /** Errors worth seeing when debugging: `llmesh:<name>:error`. */
  error(formatter: string, ...args: unknown[]): void
  /** Very chatty detail: `llmesh:<name>:trace`. */
  trace(formatter: string, ...args: unknown[]): void
  readonly enabled: boolean
  readonly namespace: string
}

/** Creates the logger for a component, for example `createLogger('downloader')` → `llmesh:downloader`. */
export function createLogger(component: string): Logger {
  const namespace = component.startsWith('llmesh:') ? component : `llmesh:${component}`
  const log = createDebug(namespace)
  const error = createDebug(`${namespace}:error`)
  const trace = createDebug(`${namespace}:trace`)
  const logger = ((formatter: string, ...args: unknown[]) => log(formatter, ...args)) as Logger
  Object.defineProperties(logger, {
    error: { value: (formatter: string, ...args: unknown[]) => error(formatter, ...args) },
    trace: { value: (formatter: string, ...args: unknown[]) => trace(formatter, ...args) },
    enabled: { get: () => Boolean(log.enabled) },
    namespace: { value: namespace },
  })
  return logger
}

/** Enables namespaces at run time, for example from a `--debug` flag (same syntax as `DEBUG`). */
export function enableLogging(namespaces: string): void {
  createDebug.enable(namespaces)
}
