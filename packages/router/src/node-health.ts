/**
 * What the router itself knows of each node: requests in flight (its own count, since heartbeat
 * load is seconds old), a peak-EWMA of time to first byte, failures in a row, and ejection.
 *
 * The cost is Finagle's and linkerd's peak-EWMA: the average reacts at once to a slower answer
 * (the peak) and decays towards faster ones over `decayMs`, multiplied by the requests in flight
 * plus one. A node that slows down or piles up requests loses traffic within a few requests; a
 * node that failed counts as slow; and an average that gets no new answers fades, so that such
 * a node is tried again after a while.
 *
 * Ejection is Envoy's outlier detection: after `consecutiveFailures` failures in a row a node is
 * ejected for `baseEjectionMs` times the number of its ejections so far (capped), and comes back
 * only after a health probe answers.
 */

export interface HealthPolicy {
  /** Failures in a row that eject a node; default 3. */
  consecutiveFailures: number
  /** First ejection; each later one is longer by this much, up to `maxEjectionMs`. Defaults 2 s and 30 s. */
  baseEjectionMs: number
  maxEjectionMs: number
  /** How fast the latency average forgets; default 10 s. */
  decayMs: number
}

export const defaultHealthPolicy: HealthPolicy = {
  consecutiveFailures: 3,
  baseEjectionMs: 2_000,
  maxEjectionMs: 30_000,
  decayMs: 10_000,
}

export type NodeCondition = 'healthy' | 'ejected' | 'probing'

export interface NodeHealthView {
  condition: NodeCondition
  cost: number
  inFlight: number
  latencyMs: number
  requests: number
  failures: number
  consecutiveFailures: number
  ejections: number
  ejectedUntil: string | undefined
  ejectionReason: string | undefined
}

/** What a failure counts as, at least: slow enough that the node loses traffic for a while. */
const FAILURE_LATENCY_MS = 100
/** The cost of a node that has never answered while it has a request out: tried once, not flooded. */
const UNKNOWN_BUSY_COST = 1e9

export class NodeHealth {
  inFlight = 0
  requests = 0
  failures = 0
  consecutiveFailures = 0
  ejections = 0
  ejectedUntil = 0
  ejectionReason: string | undefined
  /** True while a probe decides whether an ejected node comes back. */
  probing = false
  private latencyMs = 0
  private latencyAt = 0

  constructor(private readonly policy: HealthPolicy) {}

  condition(now: number): NodeCondition {
    if (this.ejectedUntil === 0) return 'healthy'
    return now < this.ejectedUntil || !this.probing ? 'ejected' : 'probing'
  }

  /** Whether an ejection has run its time, so a probe is due. */
  probeDue(now: number): boolean {
    return this.ejectedUntil !== 0 && now >= this.ejectedUntil && !this.probing
  }

  /** Peak-EWMA latency times (in flight + 1): lower is better. A node never measured costs nothing until it has a request out. */
  cost(now: number): number {
    if (this.latencyAt === 0) return this.inFlight === 0 ? 0 : UNKNOWN_BUSY_COST * this.inFlight
    return this.currentLatency(now) * (this.inFlight + 1)
  }

  started(): void {
    this.inFlight++
    this.requests++
  }

  /** The first byte came back after `latencyMs`: the node answers. */
  answered(latencyMs: number, now: number): void {
    const current = this.currentLatency(now)
    const weight = Math.exp(-(now - this.latencyAt) / this.policy.decayMs)
    // The first answer sets the average; a slower one replaces it at once (the peak); a faster one blends in.
    this.latencyMs =
      this.latencyAt === 0 || latencyMs > current
        ? latencyMs
        : current * weight + latencyMs * (1 - weight)
    this.latencyAt = now
    this.consecutiveFailures = 0
  }

  finished(): void {
    this.inFlight--
  }

  /** A failure blamed on the node; true when it got the node ejected. */
  failed(reason: string, now: number): boolean {
    this.failures++
    this.consecutiveFailures++
    // A failure counts as a slow answer too, so the node loses traffic before it is ejected.
    this.latencyMs = Math.max(this.currentLatency(now) * 2, FAILURE_LATENCY_MS)
    this.latencyAt = now
    if (this.ejectedUntil !== 0 || this.consecutiveFailures < this.policy.consecutiveFailures)
      return false
    this.eject(reason, now)
    return true
  }

  eject(reason: string, now: number): void {
    this.ejections++
    this.ejectionReason = reason
    this.ejectedUntil =
      now + Math.min(this.policy.baseEjectionMs * this.ejections, this.policy.maxEjectionMs)
    this.probing = false
  }

  /** The probe answered: the node comes back with a clean slate (its ejection count stays). */
  restored(): void {
    this.ejectedUntil = 0
    this.ejectionReason = undefined
    this.consecutiveFailures = 0
    this.probing = false
    this.latencyMs = 0
    this.latencyAt = 0
  }

  view(now: number): NodeHealthView {
    return {
      condition: this.condition(now),
      cost: this.cost(now),
      inFlight: this.inFlight,
      latencyMs: this.currentLatency(now),
      requests: this.requests,
      failures: this.failures,
      consecutiveFailures: this.consecutiveFailures,
      ejections: this.ejections,
      ejectedUntil: this.ejectedUntil === 0 ? undefined : new Date(this.ejectedUntil).toISOString(),
      ejectionReason: this.ejectionReason,
    }
  }

  private currentLatency(now: number): number {
    if (this.latencyAt === 0) return 0
    // Without new answers the average fades, so that a node slow once is tried again later.
    return this.latencyMs * Math.exp(-(now - this.latencyAt) / this.policy.decayMs)
  }
}
