/** The package version, replaced at build time (tsup `define`) and in tests (vitest `define`). */
declare const __PACKAGE_VERSION__: string

/** The part of the WebAssembly JS API that `PieceFile` uses: TypeScript declares it only in its DOM lib. */
declare namespace WebAssembly {
  interface MemoryDescriptor {
    initial: number
    maximum?: number
    shared?: boolean
  }
  class Memory {
    constructor(descriptor: MemoryDescriptor)
    readonly buffer: ArrayBuffer | SharedArrayBuffer
  }
}
