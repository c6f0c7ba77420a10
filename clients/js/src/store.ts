import type { Store } from "./types.js";

/** The default store: a Map, so nothing survives a restart of the app. */
export class MemoryStore implements Store {
  private readonly values = new Map<string, string>();

  get(key: string): string | undefined {
    return this.values.get(key);
  }

  set(key: string, value: string): void {
    this.values.set(key, value);
  }
}
