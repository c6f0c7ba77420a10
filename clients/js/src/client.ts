import { backoffDelay } from "./backoff.js";
import { Emitter } from "./emitter.js";
import { ImdError, RETRYABLE_CODES } from "./errors.js";
import { newId } from "./ids.js";
import { MemoryStore } from "./store.js";
import { connectionUrl } from "./url.js";
import type {
  AckPacket,
  ConnectionState,
  Conversation,
  ErrorPacket,
  HistoryPacket,
  HistoryPage,
  HistoryQuery,
  ImdClientEvents,
  ImdClientOptions,
  MessagePacket,
  Packet,
  PositionPacket,
  RawInput,
  ReadInput,
  ReceiptPacket,
  RecallInput,
  SendInput,
  StateEvent,
  Store,
  Target,
  Timers,
  TypingPacket,
  Uid,
  WebSocketConstructor,
  WebSocketLike,
} from "./types.js";

const OPEN = 1;
const MESSAGE_TYPES: ReadonlySet<string> = new Set(["t", "i", "s", "D"]);
const SIGNAL_TYPES: ReadonlySet<string> = new Set(["R", "Y", "S"]);
const REPLY_TYPES: ReadonlySet<string> = new Set(["A", "E", "P", "O", "H"]);
/** The server's default `[websocket] max_message_bytes`: a larger frame is closed with 1009. */
const MAX_FRAME_BYTES = 65536;
const ROOM_ID = /^(?!\.\.?$)[A-Za-z0-9_.:-]{1,64}$/;
const DIGITS = /^[0-9]+$/;
/** Own acked ids kept without a position to prune them by (servers before version 3). */
const MAX_UNPOSITIONED_OWN_IDS = 1000;

/** A packet this client sends: every one has an id and gets exactly one reply with it. */
interface ClientPacket {
  id: string;
  type: string;
  to?: Uid;
  room?: string;
  msg: unknown;
}

/** A stored packet (`t`, `i`, `D`) waiting for its `A`, sent one at a time and in order. */
interface OutboxEntry {
  packet: ClientPacket;
  /** Absent for entries restored from the store (their caller is gone) and after a stop. */
  resolve?: (ack: AckPacket) => void;
  reject?: (error: Error) => void;
  attempts: number;
}

/** A packet that is not stored (`R`, `H`, `O`, `Y`) waiting for its reply. */
interface PendingRequest {
  packet: ClientPacket;
  resolve: (reply: Packet) => void;
  reject: (error: Error) => void;
  /** Resent after a reconnect and after `unavailable`/`rate_limited`; `Y` is not. */
  reliable: boolean;
  sentOn: Connection | null;
  attempts: number;
  retryTimer: unknown;
}

/** What one WebSocket connection is doing. */
class Connection {
  /** `login` until `L`, `syncing` until the sync's last page, then `live`. */
  phase: "login" | "syncing" | "live" = "login";
  /** `L` came and the stored state is loaded: packets may be sent. */
  ready = false;
  /** Live packets that arrived during the sync, delivered after it. */
  buffer: Packet[] = [];
  syncId: string | null = null;
  syncMsg: Record<string, unknown> = {};
  syncAttempts = 0;
  pingId: string | null = null;
  /** The text of the server's `C`, the reason of the close that follows. */
  closeReason: string | null = null;
  loginTimer: unknown = null;
  pingTimer: unknown = null;
  pingDeadline: unknown = null;
  syncRetryTimer: unknown = null;
  /** The pos this connection synced from: everything at or below it was processed before. */
  syncFrom = 0;
  /** The positions above `syncFrom` processed on this connection: live packets of two nodes may come out of pos order, so one below the highest is not necessarily seen (contract §10: drop what was seen). */
  seen = new Set<number>();

  constructor(readonly ws: WebSocketLike) {}
}

const noop = (): void => {};

function isRecord(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

function utf8Length(text: string): number {
  let bytes = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x80) bytes += 1;
    else if (c < 0x800) bytes += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < text.length) {
      bytes += 4;
      i++;
    } else bytes += 3;
  }
  return bytes;
}

function decodeFrame(data: unknown): string | null {
  if (typeof data === "string") return data;
  const Decoder = (globalThis as { TextDecoder?: new () => { decode(input: unknown): string } }).TextDecoder;
  if (!Decoder) return null;
  if (data instanceof ArrayBuffer || ArrayBuffer.isView(data)) return new Decoder().decode(data);
  return null;
}

function badPacket(message: string): ImdError {
  return new ImdError("bad_packet", message);
}

function checkUid(value: unknown, what: string): Uid {
  if (typeof value === "number" && Number.isInteger(value) && value > 0) return value;
  if (typeof value === "string" && DIGITS.test(value) && !/^0+$/.test(value)) return value;
  throw badPacket(`${what} must be a positive integer user id`);
}

function checkTarget(input: { to?: unknown; room?: unknown }): Target {
  if (input.room !== undefined && input.room !== null) {
    if (input.to !== undefined && input.to !== null && input.to !== 0) throw badPacket("give either to or room, not both");
    if (typeof input.room !== "string" || !ROOM_ID.test(input.room)) {
      throw badPacket("room must be 1-64 characters of A-Z a-z 0-9 _ . : -, but not . or ..");
    }
    return { room: input.room };
  }
  return { to: checkUid(input.to, "to") };
}

function checkId(id: unknown): string {
  if (typeof id !== "string" || id.length < 1 || id.length > 64) throw badPacket("id must be a string of 1-64 characters");
  return id;
}

/**
 * A connection to imd that survives reconnects: it syncs what it missed
 * after every reconnect, delivers each message once (the sync in `pos` order; live packets as they come, which across nodes is not always `pos` order), and
 * resends what was not acknowledged with the same id until the server
 * stores it.
 */
export class ImdClient {
  private readonly events: Emitter<ImdClientEvents>;
  private readonly tokenFn: ImdClientOptions["token"];
  private readonly baseUrl: string | undefined;
  private readonly WebSocketCtor: WebSocketConstructor;
  private readonly store: Store;
  private readonly storePrefix: string;
  private readonly minDelayMs: number;
  private readonly maxDelayMs: number;
  private readonly pingIntervalMs: number;
  private readonly pingTimeoutMs: number;
  private readonly loginTimeoutMs: number;
  private readonly syncPageSize: number;
  private readonly timers: Timers;
  private readonly random: () => number;

  private currentState: ConnectionState = "idle";
  /** Not running: before connect(), after close() and after a stop. */
  private stopped = true;
  private conn: Connection | null = null;
  /** Increases with every attempt, so that a late token() answer of an abandoned attempt is ignored. */
  private generation = 0;
  /** Reconnect attempts since the last `L`. */
  private attempt = 0;
  /** The last attempt was refused with 4001 (no `L` since): a second one stops the client. */
  private authRejected = false;
  private reconnectTimer: unknown = null;
  private waiters: Array<{ resolve: () => void; reject: (error: Error) => void }> = [];

  private userId: number | null = null;
  /** The uid whose stored state (position, outbox) is being or has been loaded. */
  private loadedUid: number | null = null;
  private loading: Promise<void> | null = null;
  /** The uid whose state is written to the store: set once its load is done, so nothing stored is overwritten unread. */
  private persistUid: number | null = null;
  /** The highest `pos` processed: every packet at or below it has been delivered or skipped. */
  private highest = 0;
  private readonly outbox: OutboxEntry[] = [];
  private readonly outboxIds = new Set<string>();
  private outboxInFlight: OutboxEntry | null = null;
  private outboxRetryTimer: unknown = null;
  /** Ids of this user's packets acknowledged to this client, with their `pos`: not delivered again as messages. */
  private readonly ownIds = new Map<string, number | null>();
  private readonly requests = new Map<string, PendingRequest>();
  private readonly dirty = new Set<"pos" | "outbox">();
  private writing: Promise<void> | null = null;

  constructor(options: ImdClientOptions) {
    if (!options || typeof options.token !== "function") throw new TypeError("ImdClient: options.token must be a function");
    const Ctor = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (typeof Ctor !== "function") {
      throw new TypeError("ImdClient: there is no global WebSocket here: pass one, e.g. { WebSocket } from the ws package");
    }
    this.events = new Emitter<ImdClientEvents>(options.onHandlerError);
    this.tokenFn = options.token;
    this.baseUrl = options.url;
    this.WebSocketCtor = Ctor;
    this.store = options.store ?? new MemoryStore();
    this.storePrefix = options.storePrefix ?? "imd:";
    this.minDelayMs = options.reconnect?.minDelayMs ?? 500;
    this.maxDelayMs = options.reconnect?.maxDelayMs ?? 30000;
    if (!(this.minDelayMs >= 0) || !(this.maxDelayMs >= this.minDelayMs)) {
      throw new TypeError("ImdClient: reconnect needs 0 <= minDelayMs <= maxDelayMs");
    }
    this.pingIntervalMs = options.pingIntervalMs ?? 30000;
    this.pingTimeoutMs = options.pingTimeoutMs ?? 10000;
    this.loginTimeoutMs = options.loginTimeoutMs ?? 15000;
    this.syncPageSize = options.syncPageSize ?? 200;
    if (!(this.pingIntervalMs > 0) || !(this.pingTimeoutMs > 0) || !(this.loginTimeoutMs > 0)) {
      throw new TypeError("ImdClient: pingIntervalMs, pingTimeoutMs and loginTimeoutMs must be positive");
    }
    if (!Number.isInteger(this.syncPageSize) || this.syncPageSize < 1 || this.syncPageSize > 500) {
      throw new TypeError("ImdClient: syncPageSize must be an integer in 1..500");
    }
    const g = globalThis as unknown as Timers;
    this.timers = options.timers ?? {
      setTimeout: (callback, ms) => g.setTimeout(callback, ms),
      clearTimeout: (handle) => g.clearTimeout(handle),
    };
    this.random = options.random ?? Math.random;
  }

  // ---- public API -------------------------------------------------------

  /** The connection state (`idle` before the first connect()). */
  get state(): ConnectionState {
    return this.currentState;
  }

  /** The user id from the last `L`, or null before the first one. */
  get uid(): number | null {
    return this.userId;
  }

  /** The highest `pos` processed (0 before any). */
  get position(): number {
    return this.highest;
  }

  /** How many stored packets (`send`, `recall`) wait for their `A`. */
  get outboxSize(): number {
    return this.outbox.length;
  }

  on<K extends keyof ImdClientEvents>(event: K, handler: (value: ImdClientEvents[K]) => void): () => void {
    return this.events.on(event, handler);
  }

  off<K extends keyof ImdClientEvents>(event: K, handler: (value: ImdClientEvents[K]) => void): void {
    this.events.off(event, handler);
  }

  /**
   * Starts the client; resolves once the first connection has logged in and
   * caught up (sync done). From then on the client reconnects by itself
   * until close(), a 4002/4003 close or a second 4001 in a row, which reject
   * the promise if it is still pending.
   */
  connect(): Promise<void> {
    if (this.currentState === "connected") return Promise.resolve();
    const connected = new Promise<void>((resolve, reject) => this.waiters.push({ resolve, reject }));
    if (this.stopped) {
      this.stopped = false;
      this.attempt = 0;
      this.authRejected = false;
      void this.open();
    }
    return connected;
  }

  /**
   * Sends a text (`t`) or an image id (`i`) to a user (`to`) or a room.
   * Resolves with the `A` once the server stored it (`seq`, `pos`, `masked`,
   * `dup`); until then the packet is kept in the outbox (and the store) and
   * resent with the same id after every reconnect. Rejects with an ImdError
   * carrying the server's `E` code; `unavailable` and `rate_limited` are
   * retried instead.
   */
  send(input: SendInput): Promise<AckPacket> {
    let packet: ClientPacket;
    try {
      if (!isRecord(input)) throw badPacket("send() takes {to | room, type, msg}");
      const target = checkTarget(input);
      if (input.type !== "t" && input.type !== "i") throw badPacket('type must be "t" (text) or "i" (image id)');
      if (input.type === "t" && (typeof input.msg !== "string" || input.msg === "")) {
        throw badPacket("a text message is a non-empty string");
      }
      if (input.type === "i" && typeof input.msg !== "string" && typeof input.msg !== "number") {
        throw badPacket("an image message is the image's id (a string or a number)");
      }
      const id = input.id === undefined ? newId() : checkId(input.id);
      packet = { id, ...target, type: input.type, msg: input.msg };
    } catch (err) {
      return Promise.reject(err);
    }
    return this.enqueue(packet);
  }

  /** Recalls one of this user's own messages (`D`); resolves with the `A`, through reconnects like send(). */
  recall(input: RecallInput): Promise<AckPacket> {
    let packet: ClientPacket;
    try {
      if (!isRecord(input)) throw badPacket("recall() takes {to | room, id}");
      const target = checkTarget(input);
      if ((typeof input.id !== "string" || input.id === "") && typeof input.id !== "number") {
        throw badPacket("id must name the message to recall");
      }
      packet = { id: newId(), ...target, type: "D", msg: input.id };
    } catch (err) {
      return Promise.reject(err);
    }
    return this.enqueue(packet);
  }

  /**
   * Marks messages read: `{to, ids}` (ids of messages `to` sent to this
   * user) or `{room, seq}` (moves this user's read cursor in the room).
   * Retried through reconnects; resolves with the `A`.
   */
  markRead(input: ReadInput): Promise<AckPacket> {
    return this.receipt(input, "read");
  }

  /** Reports messages of `to` delivered (`R` with state `delivered`), which stops offline pushes for them. */
  markDelivered(input: { to: Uid; ids: Array<string | number> }): Promise<AckPacket> {
    return this.receipt(input, "delivered");
  }

  /** Tells `to` or the room's members that this user is typing (or stopped). Best effort: only while connected, never retried. */
  typing(target: Target, on: boolean): void {
    const conn = this.conn;
    if (!conn || !conn.ready) return;
    let packet: ClientPacket;
    try {
      packet = { id: newId(), ...checkTarget(target as { to?: unknown; room?: unknown }), type: "Y", msg: Boolean(on) };
    } catch {
      return;
    }
    const request: PendingRequest = {
      packet,
      resolve: noop,
      reject: noop,
      reliable: false,
      sentOn: conn,
      attempts: 0,
      retryTimer: null,
    };
    this.requests.set(packet.id, request);
    this.transmit(conn, packet);
  }

  /**
   * History, page by page, oldest first: `{with, since, limit}` for one-to-one
   * messages, `{room, after_seq, limit}` for a room (its pages carry `read`).
   */
  history(query: HistoryQuery = {}): AsyncIterableIterator<HistoryPage> {
    return this.pages({ ...query } as Record<string, unknown>, (reply) => {
      const page: HistoryPage = { messages: reply.msg as MessagePacket[], more: reply.more === true };
      if (typeof reply.next === "string") page.next = reply.next;
      if (isRecord(reply.read)) page.read = reply.read as Record<string, number>;
      if (reply.truncated === true) page.truncated = true;
      return page;
    });
  }

  /** The first page of the conversation list, newest activity first, with each one's last message and unread count. */
  async conversations(options: { limit?: number } = {}): Promise<Conversation[]> {
    const pages = this.conversationPages(options);
    const first = await pages.next();
    await pages.return?.(undefined);
    return first.done ? [] : first.value;
  }

  /** The whole conversation list, page by page. */
  conversationPages(options: { limit?: number } = {}): AsyncIterableIterator<Conversation[]> {
    const msg: Record<string, unknown> = { conversations: true };
    if (options.limit !== undefined) msg.limit = options.limit;
    return this.pages(msg, (reply) => reply.msg as Conversation[]);
  }

  /**
   * Sends one packet as given, for the packet types this client has no
   * method for (`T` take order, `S` site, `P` ping) and for tools that try
   * packets by hand: `to` is 0 when neither `to` nor `room` is given, `id` is
   * made when absent, nothing else is checked (the server's `E` says what is
   * wrong). Sent once, on the current connection: not kept in the outbox,
   * not sent again after a reconnect, not retried after `unavailable`.
   * Resolves with the reply (`A`, `P`, `O`, `H`); rejects with an ImdError
   * carrying the `E` code, or `not_connected` when no connection is logged in
   * or it is lost before the reply. A `t` or `i` sent this way is not this
   * client's own: if it comes back through the sync, it is delivered to
   * `message` like one from another device.
   */
  raw(input: RawInput): Promise<Packet> {
    let packet: ClientPacket;
    try {
      if (!isRecord(input) || typeof input.type !== "string" || input.type === "") {
        throw badPacket("raw() takes {type, msg?, to? | room?, id?}");
      }
      const id = input.id === undefined ? newId() : checkId(input.id);
      if (this.requests.has(id) || this.outboxIds.has(id)) throw badPacket(`a packet with id ${id} is already waiting`);
      packet = { id, type: input.type, msg: input.msg } as ClientPacket;
      if (input.room !== undefined) packet.room = input.room as string;
      else packet.to = input.to === undefined ? 0 : (input.to as Uid);
      if (utf8Length(JSON.stringify(packet)) > MAX_FRAME_BYTES) {
        throw new ImdError("too_long", `the packet is over ${MAX_FRAME_BYTES} bytes`);
      }
    } catch (err) {
      return Promise.reject(err);
    }
    const conn = this.conn;
    if (!conn || !conn.ready) return Promise.reject(new ImdError("not_connected", "not connected: raw() sends on a logged-in connection only"));
    return new Promise<Packet>((resolve, reject) => {
      this.requests.set(packet.id, { packet, resolve, reject, reliable: false, sentOn: conn, attempts: 0, retryTimer: null });
      this.transmit(conn, packet);
    });
  }

  /** Whether a friend (or this user) has a live connection (`O`). */
  async online(uid: Uid): Promise<boolean> {
    const reply = await this.request({ id: newId(), to: 0, type: "O", msg: checkUid(uid, "uid") }, true);
    return isRecord(reply.msg) && reply.msg.online === true;
  }

  /**
   * Stops the client: closes the connection, stops reconnecting, rejects
   * pending calls with ImdError `closed`. Unacknowledged sends stay in the
   * outbox (and the store) and are resent, with their ids, by the next
   * connect(); the `outbox` event reports how they end.
   */
  close(): void {
    if (this.currentState === "closed") return;
    this.stop(1000, "closed by the client", "closed");
  }

  // ---- sending ----------------------------------------------------------

  private receipt(input: ReadInput | { to: Uid; ids: Array<string | number> }, state: "read" | "delivered"): Promise<AckPacket> {
    let packet: ClientPacket;
    try {
      if (!isRecord(input)) throw badPacket("takes {to, ids} or {room, seq}");
      const target = checkTarget(input);
      if (target.room !== undefined) {
        const seq = (input as { seq?: unknown }).seq;
        if (state !== "read") throw badPacket("a room has a read cursor only");
        if (typeof seq !== "number" || !Number.isInteger(seq) || seq < 1) throw badPacket("seq must be a positive integer");
        packet = { id: newId(), ...target, type: "R", msg: { state, seq } };
      } else {
        const ids = (input as { ids?: unknown }).ids;
        if (!Array.isArray(ids) || ids.length < 1 || ids.length > 100) throw badPacket("ids must list 1-100 message ids");
        packet = { id: newId(), ...target, type: "R", msg: { state, ids: [...ids] } };
      }
    } catch (err) {
      return Promise.reject(err);
    }
    return this.request(packet, true) as Promise<AckPacket>;
  }

  private enqueue(packet: ClientPacket): Promise<AckPacket> {
    if (this.currentState === "closed") return Promise.reject(new ImdError("closed", "the client is closed: call connect() first"));
    if (utf8Length(JSON.stringify(packet)) > MAX_FRAME_BYTES) {
      return Promise.reject(new ImdError("too_long", `the packet is over ${MAX_FRAME_BYTES} bytes`));
    }
    if (this.outboxIds.has(packet.id)) return Promise.reject(badPacket(`a packet with id ${packet.id} is already waiting`));
    return new Promise<AckPacket>((resolve, reject) => {
      this.outbox.push({ packet, resolve, reject, attempts: 0 });
      this.outboxIds.add(packet.id);
      this.persist("outbox");
      this.pumpOutbox();
    });
  }

  /** Sends the outbox's first packet when nothing is in flight: one at a time, so a retried packet never lands after a later one. */
  private pumpOutbox(): void {
    const conn = this.conn;
    if (!conn || !conn.ready || this.outboxInFlight !== null || this.outboxRetryTimer !== null) return;
    const head = this.outbox[0];
    if (!head) return;
    this.outboxInFlight = head;
    this.transmit(conn, head.packet);
  }

  private onOutboxReply(entry: OutboxEntry, reply: Packet): void {
    this.outboxInFlight = null;
    if (reply.type === "E" && RETRYABLE_CODES.has(String(reply.code))) {
      entry.attempts += 1;
      this.outboxRetryTimer = this.timers.setTimeout(() => {
        this.outboxRetryTimer = null;
        this.pumpOutbox();
      }, this.backoff(entry.attempts));
      return;
    }
    this.outbox.shift();
    this.outboxIds.delete(entry.packet.id);
    if (reply.type === "A") {
      const ack = reply as AckPacket;
      this.rememberOwn(entry.packet.id, typeof ack.pos === "number" ? ack.pos : null);
      this.persist("outbox");
      entry.resolve?.(ack);
      this.events.emit("outbox", { packet: entry.packet as Packet, ack });
    } else {
      const error =
        reply.type === "E"
          ? new ImdError(String(reply.code), String(reply.msg), reply as ErrorPacket)
          : new ImdError("bad_reply", `unexpected ${reply.type} reply`);
      this.persist("outbox");
      entry.reject?.(error);
      this.events.emit("outbox", { packet: entry.packet as Packet, error });
    }
    this.pumpOutbox();
  }

  private request(packet: ClientPacket, reliable: boolean): Promise<Packet> {
    if (this.currentState === "closed") return Promise.reject(new ImdError("closed", "the client is closed: call connect() first"));
    return new Promise<Packet>((resolve, reject) => {
      const request: PendingRequest = { packet, resolve, reject, reliable, sentOn: null, attempts: 0, retryTimer: null };
      this.requests.set(packet.id, request);
      const conn = this.conn;
      if (conn && conn.ready) {
        request.sentOn = conn;
        this.transmit(conn, packet);
      }
    });
  }

  private onRequestReply(request: PendingRequest, reply: Packet): void {
    if (reply.type === "E" && request.reliable && RETRYABLE_CODES.has(String(reply.code))) {
      request.attempts += 1;
      request.sentOn = null;
      request.retryTimer = this.timers.setTimeout(() => {
        request.retryTimer = null;
        const conn = this.conn;
        if (conn && conn.ready && this.requests.get(request.packet.id) === request) {
          request.sentOn = conn;
          this.transmit(conn, request.packet);
        }
      }, this.backoff(request.attempts));
      return;
    }
    this.requests.delete(request.packet.id);
    if (reply.type === "E") request.reject(new ImdError(String(reply.code), String(reply.msg), reply as ErrorPacket));
    else request.resolve(reply);
  }

  private pages<T>(first: Record<string, unknown>, toPage: (reply: HistoryPacket) => T): AsyncIterableIterator<T> {
    const self = this;
    return (async function* () {
      let msg = first;
      for (;;) {
        const reply = (await self.request({ id: newId(), to: 0, type: "H", msg }, true)) as HistoryPacket;
        yield toPage(reply);
        if (reply.more !== true || typeof reply.next !== "string") return;
        msg = { after: reply.next };
      }
    })();
  }

  private transmit(conn: Connection, packet: ClientPacket): void {
    if (conn.ws.readyState !== OPEN) return;
    try {
      conn.ws.send(JSON.stringify(packet));
    } catch {
      // The socket is going away; its close event brings the reconnect, which resends.
    }
  }

  // ---- connecting -------------------------------------------------------

  private async open(): Promise<void> {
    const generation = ++this.generation;
    this.setState({ state: "connecting", attempt: this.attempt });
    let url: string;
    try {
      url = connectionUrl(await this.tokenFn(), this.baseUrl);
    } catch (err) {
      if (generation !== this.generation || this.stopped) return;
      if (err instanceof ImdError && err.code === "config") {
        this.stop(0, err.message, "config");
        return;
      }
      this.warn("token_failed", err);
      this.scheduleReconnect({ error: err });
      return;
    }
    if (generation !== this.generation || this.stopped) return;
    let ws: WebSocketLike;
    try {
      ws = new this.WebSocketCtor(url);
    } catch (err) {
      this.scheduleReconnect({ error: err });
      return;
    }
    const conn = new Connection(ws);
    this.conn = conn;
    ws.onmessage = (event: { data?: unknown }) => this.onFrame(conn, event?.data);
    ws.onclose = (event: { code?: number; reason?: string }) =>
      this.onDisconnect(conn, event?.code ?? 1006, conn.closeReason ?? event?.reason ?? "");
    ws.onerror = noop; // a close event follows every error
    conn.loginTimer = this.timers.setTimeout(() => {
      conn.loginTimer = null;
      this.dropConnection(conn, "no login reply");
    }, this.loginTimeoutMs);
  }

  private onFrame(conn: Connection, data: unknown): void {
    if (conn !== this.conn) return;
    const text = decodeFrame(data);
    if (text === null) return;
    let packet: unknown;
    try {
      packet = JSON.parse(text);
    } catch {
      return;
    }
    if (!isRecord(packet) || typeof packet.type !== "string") return;
    this.onPacket(conn, packet as Packet);
  }

  private onPacket(conn: Connection, packet: Packet): void {
    const type = packet.type;
    if (REPLY_TYPES.has(type)) {
      this.onReply(conn, packet);
      return;
    }
    if (type === "L") {
      void this.onLogin(conn, packet);
    } else if (type === "C") {
      conn.closeReason = typeof packet.msg === "string" ? packet.msg : JSON.stringify(packet.msg ?? "");
    } else if (MESSAGE_TYPES.has(type) || SIGNAL_TYPES.has(type)) {
      if (conn.phase !== "live") conn.buffer.push(packet);
      else this.deliver(packet);
    }
    // Other types are from a newer server: ignored.
  }

  private onReply(conn: Connection, reply: Packet): void {
    if (reply.id === null || reply.id === undefined) {
      if (reply.type === "E") this.warn("server_error", new ImdError(String(reply.code), String(reply.msg), reply as ErrorPacket));
      return;
    }
    const id = String(reply.id);
    if (id === conn.syncId) {
      this.onSyncReply(conn, reply);
    } else if (id === conn.pingId) {
      this.onPong(conn);
    } else if (this.outboxInFlight !== null && id === this.outboxInFlight.packet.id) {
      this.onOutboxReply(this.outboxInFlight, reply);
    } else {
      const request = this.requests.get(id);
      if (request) this.onRequestReply(request, reply);
      else if (reply.type === "E") this.warn("server_error", new ImdError(String(reply.code), String(reply.msg), reply as ErrorPacket));
    }
  }

  private async onLogin(conn: Connection, login: Packet): Promise<void> {
    if (conn.phase !== "login") return;
    this.clearTimer(conn.loginTimer);
    conn.loginTimer = null;
    conn.phase = "syncing";
    const uid = Number(login.uid);
    this.userId = uid;
    this.authRejected = false;
    this.attempt = 0;
    this.setState({ state: "syncing", uid });
    await this.loadStored(uid);
    if (conn !== this.conn) return;
    conn.ready = true;
    this.schedulePing(conn);
    conn.syncFrom = this.highest;
    conn.syncMsg = { sync: this.highest, limit: this.syncPageSize };
    this.sendSync(conn);
    this.pumpOutbox();
    for (const request of this.requests.values()) {
      if (request.reliable && request.retryTimer === null && request.sentOn !== conn) {
        request.sentOn = conn;
        this.transmit(conn, request.packet);
      }
    }
  }

  private sendSync(conn: Connection): void {
    conn.syncId = newId();
    this.transmit(conn, { id: conn.syncId, to: 0, type: "H", msg: conn.syncMsg });
  }

  private onSyncReply(conn: Connection, reply: Packet): void {
    conn.syncId = null;
    if (reply.type === "E") {
      if (RETRYABLE_CODES.has(String(reply.code))) {
        conn.syncAttempts += 1;
        conn.syncRetryTimer = this.timers.setTimeout(() => {
          conn.syncRetryTimer = null;
          if (conn === this.conn) this.sendSync(conn);
        }, this.backoff(conn.syncAttempts));
        return;
      }
      this.warn("sync_failed", new ImdError(String(reply.code), String(reply.msg), reply as ErrorPacket));
      this.finishSync(conn);
      return;
    }
    const page = reply as HistoryPacket;
    if (Array.isArray(page.msg)) {
      for (const packet of page.msg) {
        if (conn !== this.conn) return; // a handler closed the client
        if (isRecord(packet) && MESSAGE_TYPES.has(String(packet.type))) this.deliver(packet as Packet);
      }
    }
    if (page.truncated === true) this.warn("truncated");
    if (conn !== this.conn) return; // a handler closed the client
    if (page.more === true && typeof page.next === "string") {
      conn.syncMsg = { after: page.next };
      this.sendSync(conn);
    } else {
      this.finishSync(conn);
    }
  }

  private finishSync(conn: Connection): void {
    conn.phase = "live";
    const buffered = conn.buffer;
    conn.buffer = [];
    for (const packet of buffered) {
      if (conn !== this.conn) return;
      this.deliver(packet);
    }
    if (conn !== this.conn) return;
    this.setState({ state: "connected", uid: this.userId ?? undefined });
    const waiters = this.waiters;
    this.waiters = [];
    for (const waiter of waiters) waiter.resolve();
  }

  /** Hands a server packet to the application: messages once each (by the positions seen); the others as they come. */
  private deliver(packet: Packet): void {
    switch (packet.type) {
      case "R":
        this.events.emit("receipt", packet as ReceiptPacket);
        return;
      case "Y":
        this.events.emit("typing", packet as TypingPacket);
        return;
      case "S":
        this.events.emit("position", packet as PositionPacket);
        return;
    }
    const pos = packet.pos;
    const conn = this.conn;
    if (typeof pos === "number") {
      // seen already: at or below where this connection's sync started, or processed on it
      if (conn === null ? pos <= this.highest : pos <= conn.syncFrom || conn.seen.has(pos)) return;
      if (conn !== null) conn.seen.add(pos);
    }
    const id = String(packet.id);
    // Sent by this client: its send() or recall() has (or will have) the A.
    const own = this.userId !== null && Number(packet.from) === this.userId && (this.ownIds.has(id) || this.outboxIds.has(id));
    if (typeof pos === "number" && pos > this.highest) this.highest = pos;
    if (!own) this.events.emit("message", packet as MessagePacket);
    // Stored after the handler ran: a crash in between delivers the packet again after a restart, never loses it.
    if (typeof pos === "number") {
      if (this.pruneOwn()) this.persist("outbox");
      this.persist("pos");
    }
  }

  private rememberOwn(id: string, pos: number | null): void {
    if (pos !== null && pos <= this.highest) return; // already passed
    this.ownIds.set(id, pos);
    let unpositioned = 0;
    for (const p of this.ownIds.values()) if (p === null) unpositioned++;
    if (unpositioned > MAX_UNPOSITIONED_OWN_IDS) {
      for (const [key, p] of this.ownIds) {
        if (p === null) {
          this.ownIds.delete(key);
          break;
        }
      }
    }
  }

  /** Forgets own ids the position has passed (nothing at or below it is delivered any more); true when it forgot some. */
  private pruneOwn(): boolean {
    let pruned = false;
    for (const [id, pos] of this.ownIds) {
      if (pos !== null && pos <= this.highest) {
        this.ownIds.delete(id);
        pruned = true;
      }
    }
    return pruned;
  }

  private schedulePing(conn: Connection): void {
    conn.pingTimer = this.timers.setTimeout(() => {
      conn.pingTimer = null;
      if (conn !== this.conn) return;
      conn.pingId = newId();
      this.transmit(conn, { id: conn.pingId, to: 0, type: "P", msg: "ping" });
      conn.pingDeadline = this.timers.setTimeout(() => {
        conn.pingDeadline = null;
        this.dropConnection(conn, "no reply to ping");
      }, this.pingTimeoutMs);
    }, this.pingIntervalMs);
  }

  private onPong(conn: Connection): void {
    conn.pingId = null;
    this.clearTimer(conn.pingDeadline);
    conn.pingDeadline = null;
    this.schedulePing(conn);
  }

  /** Gives up on a connection that does not answer: no waiting for a close handshake that may never come. */
  private dropConnection(conn: Connection, reason: string): void {
    if (conn !== this.conn) return;
    this.closeSocket(conn.ws);
    this.onDisconnect(conn, 1006, reason);
  }

  private closeSocket(ws: WebSocketLike): void {
    ws.onmessage = null;
    ws.onclose = null;
    ws.onopen = null;
    ws.onerror = noop;
    try {
      const terminate = (ws as { terminate?: () => void }).terminate;
      if (typeof terminate === "function") terminate.call(ws);
      else ws.close(1000);
    } catch {
      // already closed
    }
  }

  private teardown(conn: Connection): void {
    this.clearTimer(conn.loginTimer);
    this.clearTimer(conn.pingTimer);
    this.clearTimer(conn.pingDeadline);
    this.clearTimer(conn.syncRetryTimer);
    conn.loginTimer = conn.pingTimer = conn.pingDeadline = conn.syncRetryTimer = null;
    conn.ready = false;
    conn.buffer = [];
    if (this.conn === conn) this.conn = null;
    // What was in flight is sent again, with the same ids, on the next connection.
    this.outboxInFlight = null;
    this.clearTimer(this.outboxRetryTimer);
    this.outboxRetryTimer = null;
    for (const [id, request] of this.requests) {
      this.clearTimer(request.retryTimer);
      request.retryTimer = null;
      request.sentOn = null;
      if (!request.reliable) {
        // typing and raw(): stale after a reconnect, never sent again
        this.requests.delete(id);
        request.reject(new ImdError("not_connected", "the connection was lost before the reply"));
      }
    }
  }

  private onDisconnect(conn: Connection, code: number, reason: string): void {
    if (conn !== this.conn) return;
    conn.ws.onmessage = null;
    conn.ws.onclose = null;
    this.teardown(conn);
    if (this.stopped) return;
    if (code === 4002) {
      this.stop(code, reason || "replaced by a newer device", "replaced");
    } else if (code === 4003) {
      this.stop(code, reason || "kicked", "kicked");
    } else if (code === 4001) {
      if (this.authRejected) {
        this.stop(code, reason || "unauthorized", "unauthorized");
      } else {
        // Once: a fresh token right away (a token is never used twice).
        this.authRejected = true;
        this.scheduleReconnect({ code, reason, delayMs: 0 });
      }
    } else {
      this.scheduleReconnect({ code, reason });
    }
  }

  private scheduleReconnect(info: { code?: number; reason?: string; error?: unknown; delayMs?: number }): void {
    if (this.stopped) return;
    let delayMs = info.delayMs;
    if (delayMs === undefined) {
      this.attempt += 1;
      delayMs = this.backoff(this.attempt);
    }
    const event: StateEvent = { state: "reconnecting", delayMs, attempt: this.attempt };
    if (info.code !== undefined) event.code = info.code;
    if (info.reason !== undefined) event.reason = info.reason;
    if (info.error !== undefined) event.error = info.error;
    this.setState(event);
    this.clearTimer(this.reconnectTimer);
    this.reconnectTimer = null;
    if (delayMs === 0) {
      void this.open();
      return;
    }
    this.reconnectTimer = this.timers.setTimeout(() => {
      this.reconnectTimer = null;
      if (!this.stopped) void this.open();
    }, delayMs);
  }

  private stop(code: number, reason: string, errorCode: string): void {
    this.stopped = true;
    this.generation += 1;
    this.clearTimer(this.reconnectTimer);
    this.reconnectTimer = null;
    const conn = this.conn;
    if (conn) {
      this.closeSocket(conn.ws);
      this.teardown(conn);
    }
    this.outboxInFlight = null;
    this.clearTimer(this.outboxRetryTimer);
    this.outboxRetryTimer = null;
    const error = new ImdError(errorCode, reason);
    for (const entry of this.outbox) {
      // The packet stays in the outbox: the next connect() sends it again.
      const reject = entry.reject;
      delete entry.resolve;
      delete entry.reject;
      reject?.(error);
    }
    const requests = [...this.requests.values()];
    this.requests.clear();
    for (const request of requests) {
      this.clearTimer(request.retryTimer);
      request.reject(error);
    }
    const waiters = this.waiters;
    this.waiters = [];
    for (const waiter of waiters) waiter.reject(error);
    this.setState({ state: "closed", code, reason });
    this.events.emit("closed", { code, reason });
  }

  // ---- stored state -----------------------------------------------------

  private key(kind: "pos" | "outbox", uid: number): string {
    return `${this.storePrefix}${uid}:${kind}`;
  }

  /** Loads the position and the outbox of `uid` from the store, once per uid; unsent packets of an earlier run go first. */
  private loadStored(uid: number): Promise<void> {
    if (this.loadedUid === uid) return this.loading ?? Promise.resolve();
    this.loadedUid = uid;
    this.persistUid = null;
    this.highest = 0;
    this.ownIds.clear();
    this.loading = (async () => {
      try {
        const [pos, saved] = await Promise.all([
          Promise.resolve(this.store.get(this.key("pos", uid))),
          Promise.resolve(this.store.get(this.key("outbox", uid))),
        ]);
        const stored = Number(pos);
        if (pos !== null && pos !== undefined && Number.isFinite(stored) && stored > this.highest) this.highest = stored;
        if (typeof saved === "string" && saved !== "") {
          const parsed: unknown = JSON.parse(saved);
          if (isRecord(parsed)) {
            const restored: OutboxEntry[] = [];
            for (const packet of Array.isArray(parsed.pending) ? parsed.pending : []) {
              if (isRecord(packet) && typeof packet.id === "string" && !this.outboxIds.has(packet.id)) {
                restored.push({ packet: packet as unknown as ClientPacket, attempts: 0 });
                this.outboxIds.add(packet.id);
              }
            }
            this.outbox.unshift(...restored);
            for (const pair of Array.isArray(parsed.acked) ? parsed.acked : []) {
              if (Array.isArray(pair) && typeof pair[0] === "string") {
                this.rememberOwn(pair[0], typeof pair[1] === "number" ? pair[1] : null);
              }
            }
          }
        }
      } catch (err) {
        this.warn("store_failed", err);
      }
      if (this.loadedUid !== uid) return; // another user logged in meanwhile
      this.persistUid = uid;
      this.persist("pos");
      this.persist("outbox");
    })();
    return this.loading;
  }

  /** Writes the position or the outbox to the store, in the background, one write at a time, always the latest state. */
  private persist(kind: "pos" | "outbox"): void {
    if (this.persistUid === null) return; // written once L names the user and its stored state is loaded
    this.dirty.add(kind);
    if (this.writing === null) this.writing = this.writeDirty();
  }

  private async writeDirty(): Promise<void> {
    try {
      while (this.dirty.size > 0 && this.persistUid !== null) {
        const uid = this.persistUid;
        const kinds = [...this.dirty];
        this.dirty.clear();
        for (const kind of kinds) {
          const value =
            kind === "pos"
              ? String(this.highest)
              : JSON.stringify({ pending: this.outbox.map((entry) => entry.packet), acked: [...this.ownIds] });
          try {
            await this.store.set(this.key(kind, uid), value);
          } catch (err) {
            this.warn("store_failed", err);
          }
        }
      }
    } finally {
      this.writing = null;
    }
  }

  // ---- helpers ----------------------------------------------------------

  private backoff(attempt: number): number {
    return backoffDelay(attempt, this.minDelayMs, this.maxDelayMs, this.random);
  }

  private clearTimer(handle: unknown): void {
    if (handle !== null && handle !== undefined) this.timers.clearTimeout(handle);
  }

  private setState(event: StateEvent): void {
    this.currentState = event.state;
    this.events.emit("state", event);
  }

  private warn(warning: NonNullable<StateEvent["warning"]>, error?: unknown): void {
    const event: StateEvent = { state: this.currentState, warning };
    if (error !== undefined) event.error = error;
    this.events.emit("state", event);
  }
}
