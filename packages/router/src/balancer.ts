/**
 * Choosing a node: power of two choices on the nodes' costs.
 *
 * Two distinct candidates are drawn at random and the cheaper one wins: close to the best choice,
 * without herding every request onto the one node that looked best a moment ago (what
 * least-loaded does with stale numbers). A specialty match lowers the cost by a bounded share.
 * When most candidates are ejected, the balancer ignores ejection ("panic", as Envoy calls it):
 * spreading load over all of them beats failing every request.
 */
import { defaultHealthPolicy, type HealthPolicy, NodeHealth } from './node-health.js'
import type { RouterNode } from './node-source.js'

export interface BalancerOptions {
  health?: Partial<HealthPolicy>
  /** Largest share a specialty match takes off a node's cost; default 0.3. */
  specialtyBonus?: number
  /** Below this share of healthy candidates, ejection is ignored; default 0.5. */
  panicThreshold?: number
  /** Random numbers in [0, 1); injectable for tests. */
  random?: () => number
  now?: () => number
}

export interface Choice {
  node: RouterNode
  health: NodeHealth
  /** True when the choice ignored ejection because most candidates were ejected. */
  panic: boolean
}

export class Balancer {
  readonly policy: HealthPolicy
  private readonly healthByNode = new Map<string, NodeHealth>()
  private readonly specialtyBonus: number
  private readonly panicThreshold: number
  private readonly random: () => number
  readonly now: () => number

  constructor(options: BalancerOptions = {}) {
    this.policy = { ...defaultHealthPolicy, ...options.health }
    this.specialtyBonus = options.specialtyBonus ?? 0.3
    this.panicThreshold = options.panicThreshold ?? 0.5
    this.random = options.random ?? Math.random
    this.now = options.now ?? Date.now
  }

  health(nodeId: string): NodeHealth {
    let health = this.healthByNode.get(nodeId)
    if (health === undefined) {
      health = new NodeHealth(this.policy)
      this.healthByNode.set(nodeId, health)
    }
    return health
  }

  /** Every node the balancer has seen, with its health. */
  entries(): IterableIterator<[string, NodeHealth]> {
    return this.healthByNode.entries()
  }

  /**
   * Picks one of `candidates`, leaving out the `excluded` ids (nodes this request already tried).
   * Undefined when none is left.
   */
  choose(
    candidates: readonly RouterNode[],
    { excluded, specialty }: { excluded?: ReadonlySet<string>; specialty?: string } = {},
  ): Choice | undefined {
    const now = this.now()
    // The usual case costs two draws, whatever the fleet's size: two distinct healthy candidates.
    if (candidates.length > 2) {
      const first = this.drawHealthy(candidates, excluded, now, undefined)
      const second =
        first === undefined ? undefined : this.drawHealthy(candidates, excluded, now, first)
      if (first !== undefined && second !== undefined)
        return this.choice(this.cheaper(first, second, specialty, now), false)
    }
    // Few candidates, or many ejected or excluded: look at all of them.
    const usable: RouterNode[] = []
    let healthy = 0
    for (const node of candidates) {
      if (excluded?.has(node.id)) continue
      usable.push(node)
      if (this.health(node.id).condition(now) === 'healthy') healthy++
    }
    if (usable.length === 0) return undefined
    const panic = healthy < usable.length * this.panicThreshold
    let pool = usable
    if (!panic && healthy < usable.length)
      pool = usable.filter((node) => this.health(node.id).condition(now) === 'healthy')
    if (pool.length === 1) return this.choice(pool[0]!, panic)
    const first = Math.floor(this.random() * pool.length)
    let second = Math.floor(this.random() * (pool.length - 1))
    if (second >= first) second++
    return this.choice(this.cheaper(pool[first]!, pool[second]!, specialty, now), panic)
  }

  /** A random healthy, not excluded candidate other than `other`, in a few draws; undefined if none turned up. */
  private drawHealthy(
    candidates: readonly RouterNode[],
    excluded: ReadonlySet<string> | undefined,
    now: number,
    other: RouterNode | undefined,
  ): RouterNode | undefined {
    for (let draw = 0; draw < 4; draw++) {
      const node = candidates[Math.floor(this.random() * candidates.length)]!
      if (node === other || excluded?.has(node.id)) continue
      if (this.health(node.id).condition(now) === 'healthy') return node
    }
    return undefined
  }

  private cheaper(
    a: RouterNode,
    b: RouterNode,
    specialty: string | undefined,
    now: number,
  ): RouterNode {
    return this.weightedCost(a, specialty, now) <= this.weightedCost(b, specialty, now) ? a : b
  }

  private choice(node: RouterNode, panic: boolean): Choice {
    return { node, health: this.health(node.id), panic }
  }

  private weightedCost(node: RouterNode, specialty: string | undefined, now: number): number {
    const cost = this.health(node.id).cost(now)
    if (specialty === undefined) return cost
    const matches = node.models.some((model) => model.specialties?.includes(specialty))
    return matches ? cost * (1 - this.specialtyBonus) : cost
  }
}
