// Packet and option types of imd-client. Field names are the wire protocol's
// (docs/protocol.md in the imd repository).

/** A user id: a positive integer (the server also accepts a string of digits). */
export type Uid = number | string;

/** Any packet, as it came over the wire. */
export interface Packet {
  id: string | number | null;
  type: string;
  from?: number;
  to?: Uid;
  room?: string;
  msg?: unknown;
  [field: string]: unknown;
}

/**
 * A stored packet of the user's stream: `t` text, `i` image, `s` system
 * (one-to-one with `to`, or in a room with `room` and `seq`), or `D`, the
 * recall of the message whose id is `msg`.
 */
export interface MessagePacket extends Packet {
  id: string | number;
  type: "t" | "i" | "s" | "D";
  from: number;
  ts: number;
  /** The packet's position in this user's stream (contract version 3). */
  pos?: number;
  /** A room message's number in its room. */
  seq?: number;
}

/** `R`: a one-to-one receipt (`msg.ids`) or a room read cursor (`msg.seq`). */
export interface ReceiptPacket extends Packet {
  type: "R";
  from: number;
  msg: { state: "delivered" | "read"; ids?: Array<string | number>; seq?: number; ts: number };
}

/** `Y`: someone is typing (`msg` true) or stopped (`msg` false). */
export interface TypingPacket extends Packet {
  type: "Y";
  from: number;
  msg: boolean;
}

/** `S`: a courier's position. */
export interface PositionPacket extends Packet {
  type: "S";
  from: number;
  msg: { longitude: number; latitude: number; ts: number };
}

/** `A`: the server stored (or accepted) a packet. */
export interface AckPacket extends Packet {
  type: "A";
  /** The sender's position of the acknowledged message or recall. */
  pos?: number;
  /** A room message's number in its room. */
  seq?: number;
  /** The server masked something in the text (a phone number, an e-mail address). */
  masked?: boolean;
  /** A retry of a packet the server had already stored: nothing was stored again. */
  dup?: boolean;
}

/** `E`: the server refused a packet. */
export interface ErrorPacket extends Packet {
  type: "E";
  code: string;
  msg: string;
}

/** `H`: one page of history, sync or conversation list. */
export interface HistoryPacket extends Packet {
  type: "H";
  msg: unknown[];
  more?: boolean;
  next?: string;
  read?: Record<string, number>;
  truncated?: boolean;
}

/** One page of `history()`. */
export interface HistoryPage {
  messages: MessagePacket[];
  /** More pages follow. */
  more: boolean;
  /** The cursor of the next page (`H {"after": next}`), when `more`. */
  next?: string;
  /** Room history only: every member's read cursor, by uid. */
  read?: Record<string, number>;
  /** The query reached further back than the server keeps. */
  truncated?: boolean;
}

/** One entry of the conversation list, newest activity first. */
export interface Conversation {
  with?: number;
  room?: string;
  last: MessagePacket;
  unread: number;
}

/** What `history()` asks for: one of the `H` forms of the protocol. */
export type HistoryQuery =
  | { with?: Uid; since?: number; limit?: number }
  | { room: string; after_seq?: number; limit?: number };

/** What `send()` sends: a text (`t`) or an image id (`i`) to a user or a room. */
export type SendInput =
  | { to: Uid; room?: undefined; type: "t" | "i"; msg: string | number; id?: string }
  | { room: string; to?: undefined; type: "t" | "i"; msg: string | number; id?: string };

export type Target = { to: Uid; room?: undefined } | { room: string; to?: undefined };

/**
 * A packet for raw(), sent as given: `type` and `msg` as the protocol says,
 * `to` (0 when absent, as commands want) or `room`, `id` made when absent.
 */
export interface RawInput {
  type: string;
  msg?: unknown;
  to?: unknown;
  room?: unknown;
  id?: string;
}

export type ReadInput =
  | { to: Uid; ids: Array<string | number>; room?: undefined }
  | { room: string; seq: number; to?: undefined };

export type RecallInput = (
  | { to: Uid; room?: undefined }
  | { room: string; to?: undefined }
) & { id: string | number };

/**
 * Where the client keeps what must survive a restart of the app: the highest
 * position processed and the outbox. Values are strings, so
 * `{get: (k) => localStorage.getItem(k), set: (k, v) => localStorage.setItem(k, v)}`
 * works as it is; both methods may return promises (AsyncStorage).
 */
export interface Store {
  get(key: string): string | null | undefined | Promise<string | null | undefined>;
  set(key: string, value: string): void | Promise<void>;
}

/**
 * The WebSocket the client uses: the browser's, React Native's, or the `ws`
 * package's (anything with the WHATWG `on…` handlers and `send`/`close`).
 */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: any) => void) | null;
  onclose: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** What `token()` may return: a wstoken, a full `ws(s)://` URL, or the body of `POST /IM/token`. */
export type TokenResult = string | { url?: string; token?: string };

/** Timer functions; the defaults are the global ones (tests pass a fake clock). */
export interface Timers {
  setTimeout(callback: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export interface ImdClientOptions {
  /** Called before every connection attempt; a token is never used twice. */
  token: () => TokenResult | Promise<TokenResult>;
  /** The server's WebSocket URL without the token (`ws://host:8765`), for when `token()` returns a bare wstoken. */
  url?: string;
  /** The WebSocket class; optional where there is a global one (browsers, React Native). */
  WebSocket?: WebSocketConstructor;
  /** Keeps the last position and the outbox across restarts; memory by default. */
  store?: Store;
  /** Prefix of the store's keys (`<prefix><uid>:pos`, `<prefix><uid>:outbox`); default `"imd:"`. */
  storePrefix?: string;
  /** Reconnect and retry delays: exponential backoff with full jitter between these bounds. */
  reconnect?: { minDelayMs?: number; maxDelayMs?: number };
  /** Interval of `P` pings while connected (the server closes a connection after 90 s of silence); default 30000. */
  pingIntervalMs?: number;
  /** A ping unanswered this long means the connection is dead: it is dropped and reconnected; default 10000. */
  pingTimeoutMs?: number;
  /** No `L` this long after opening the socket: the attempt is dropped and retried; default 15000. */
  loginTimeoutMs?: number;
  /** `limit` of each sync page (1..500); default 200. */
  syncPageSize?: number;
  /** Timer functions (for tests); default the global `setTimeout`/`clearTimeout`. */
  timers?: Timers;
  /** Random numbers in [0, 1) for the jitter (for tests); default `Math.random`. */
  random?: () => number;
  /**
   * Gets what an event handler of the application threw (the client goes on
   * delivering either way); by default the error is rethrown as an unhandled
   * promise rejection, so it shows in the console.
   */
  onHandlerError?: (error: unknown, event: keyof ImdClientEvents) => void;
}

/** The client's connection state, as reported by the `state` event. */
export type ConnectionState = "idle" | "connecting" | "syncing" | "connected" | "reconnecting" | "closed";

export interface StateEvent {
  state: ConnectionState;
  /** `reconnecting`: the delay before the next attempt, and the attempt's number (1, 2, ...). */
  delayMs?: number;
  attempt?: number;
  /** `reconnecting` and `closed`: the WebSocket close code and the reason (the server's `C` text when it sent one). */
  code?: number;
  reason?: string;
  /** `connected`/`syncing`: the user id from `L`. */
  uid?: number;
  /**
   * Something to know about that is not an error of a call:
   * `truncated` — the sync started past what the server still keeps (messages older than its retention are gone);
   * `sync_failed` — the server refused the sync (`error` says why), live delivery goes on;
   * `store_failed` — the store could not be written (`error`);
   * `token_failed` — `token()` threw (`error`), the attempt is retried;
   * `server_error` — an `E` that answers no packet of this client.
   */
  warning?: "truncated" | "sync_failed" | "store_failed" | "token_failed" | "server_error";
  error?: unknown;
}

export interface ClosedEvent {
  code: number;
  reason: string;
}

/** The settled outcome of an outbox packet, also for packets restored from the store after a restart. */
export interface OutboxEvent {
  packet: Packet;
  ack?: AckPacket;
  error?: Error;
}

export interface ImdClientEvents {
  message: MessagePacket;
  receipt: ReceiptPacket;
  typing: TypingPacket;
  position: PositionPacket;
  state: StateEvent;
  closed: ClosedEvent;
  outbox: OutboxEvent;
}
