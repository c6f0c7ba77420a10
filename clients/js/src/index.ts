export { ImdClient } from "./client.js";
export { ImdError, RETRYABLE_CODES } from "./errors.js";
export { MemoryStore } from "./store.js";
export { backoffDelay } from "./backoff.js";
export { newId } from "./ids.js";
export type * from "./types.js";
