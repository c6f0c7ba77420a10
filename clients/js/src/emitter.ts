type Handler<T> = (value: T) => void;

/** A small typed event emitter. A handler that throws does not disturb the client: its error is rethrown on its own. */
export class Emitter<Events extends object> {
  private readonly handlers = new Map<keyof Events, Set<Handler<never>>>();

  /** `onHandlerError` gets what a handler threw; by default it is rethrown as an unhandled rejection. */
  constructor(private readonly onHandlerError: (error: unknown, event: keyof Events) => void = (error) => void Promise.reject(error)) {}

  on<K extends keyof Events>(event: K, handler: Handler<Events[K]>): () => void {
    let set = this.handlers.get(event);
    if (!set) {
      set = new Set();
      this.handlers.set(event, set);
    }
    set.add(handler as Handler<never>);
    return () => this.off(event, handler);
  }

  off<K extends keyof Events>(event: K, handler: Handler<Events[K]>): void {
    this.handlers.get(event)?.delete(handler as Handler<never>);
  }

  emit<K extends keyof Events>(event: K, value: Events[K]): void {
    const set = this.handlers.get(event);
    if (!set) return;
    for (const handler of [...set]) {
      try {
        (handler as Handler<Events[K]>)(value);
      } catch (err) {
        // Surface the application's error without unwinding the client's state.
        this.onHandlerError(err, event);
      }
    }
  }
}
