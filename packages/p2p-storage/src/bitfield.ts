/** Which pieces of a blob a peer holds: one bit per piece, sent as base64. */
export class Bitfield {
  readonly bytes: Uint8Array
  private held = 0
  private readonly listeners = new Set<(index: number) => void>()

  constructor(
    readonly size: number,
    bytes?: Uint8Array,
  ) {
    this.bytes = new Uint8Array(Math.ceil(size / 8))
    if (bytes !== undefined) {
      this.bytes.set(bytes.subarray(0, this.bytes.length))
      for (let index = 0; index < size; index++) if (this.has(index)) this.held++
    }
  }

  static full(size: number): Bitfield {
    const field = new Bitfield(size)
    for (let index = 0; index < size; index++) field.set(index)
    return field
  }

  static fromBase64(size: number, text: string): Bitfield {
    return new Bitfield(size, Buffer.from(text, 'base64'))
  }

  has(index: number): boolean {
    return (
      index >= 0 && index < this.size && (this.bytes[index >> 3]! & (0x80 >> (index & 7))) !== 0
    )
  }

  set(index: number): void {
    if (index < 0 || index >= this.size || this.has(index)) return
    this.bytes[index >> 3]! |= 0x80 >> (index & 7)
    this.held++
    for (const listener of this.listeners) listener(index)
  }

  /** Calls `listener` with each piece set from now on; returns the function that stops it. */
  watch(listener: (index: number) => void): () => void {
    this.listeners.add(listener)
    return () => this.listeners.delete(listener)
  }

  /** Pieces held. */
  get count(): number {
    return this.held
  }

  get complete(): boolean {
    return this.held === this.size
  }

  toBase64(): string {
    return Buffer.from(this.bytes).toString('base64')
  }
}
