export { ImdClient } from "./client.js";
export { ImdError, RETRYABLE_CODES } from "./errors.js";
export { MemoryStore } from "./store.js";
export { backoffDelay } from "./backoff.js";
export { newId } from "./ids.js";
export type {
  AckPacket,
  ClosedEvent,
  ConnectionState,
  Conversation,
  ErrorPacket,
  HistoryPacket,
  HistoryPage,
  HistoryQuery,
  ImdClientEvents,
  ImdClientOptions,
  MessagePacket,
  OutboxEvent,
  Packet,
  RawInput,
  PositionPacket,
  ReadInput,
  ReceiptPacket,
  RecallInput,
  SendInput,
  StateEvent,
  Store,
  Target,
  Timers,
  TokenResult,
  TypingPacket,
  Uid,
  WebSocketConstructor,
  WebSocketLike,
} from "./types.js";
