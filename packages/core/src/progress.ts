/**
 * Typed progress events, shared with js-libp2p through the `progress-events` package, so a
 * download that mixes HTTP mirrors and libp2p peers reports through one callback.
 *
 * Event names are namespaced: `download:chunk-verified`, `manifest:file-hashed`.
 */
import type { ProgressEvent, ProgressOptions } from 'progress-events'
import { CustomProgressEvent } from 'progress-events'

export type { ProgressEvent, ProgressOptions }
export { CustomProgressEvent }

/**
 * Emits an event to an optional listener. A listener that throws must not break a transfer,
 * so its error is handed to `onListenerError` (by default: ignored after being logged by the caller).
 */
export function emitProgress<Event extends ProgressEvent>(
  options: ProgressOptions<Event> | undefined,
  type: Event['type'],
  detail: Event['detail'],
  onListenerError?: (error: unknown) => void,
): void {
  const listener = options?.onProgress
  if (listener === undefined) return
  try {
    listener(new CustomProgressEvent(type, detail) as unknown as Event)
  } catch (error) {
    onListenerError?.(error)
  }
}
