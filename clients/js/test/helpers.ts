// A scripted fake WebSocket and a fake clock: the unit tests play the server
// packet by packet and move time by hand, so nothing waits on the wall clock.
import assert from "node:assert/strict";

import { ImdClient } from "../dist/index.js";
import type {
  ClosedEvent,
  ImdClientOptions,
  MessagePacket,
  OutboxEvent,
  Packet,
  StateEvent,
  Store,
  Timers,
  WebSocketLike,
} from "../dist/index.js";

/** Lets promise callbacks and the client's background work (store writes) run. */
export async function flush(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise<void>((resolve) => setImmediate(resolve));
}

interface Timer {
  at: number;
  seq: number;
  callback: () => void;
}

export class FakeClock implements Timers {
  now = 0;
  private seq = 0;
  private readonly timers = new Map<number, Timer>();

  setTimeout(callback: () => void, ms: number): unknown {
    const seq = ++this.seq;
    this.timers.set(seq, { at: this.now + Math.max(0, ms), seq, callback });
    return seq;
  }

  clearTimeout(handle: unknown): void {
    this.timers.delete(handle as number);
  }

  /** Delays (from now) of the timers still pending. */
  pending(): number[] {
    return [...this.timers.values()].map((t) => t.at - this.now).sort((a, b) => a - b);
  }

  /** Moves time forward by `ms`, running every timer that falls due, in order. */
  async tick(ms: number): Promise<void> {
    const target = this.now + ms;
    for (;;) {
      let next: Timer | undefined;
      for (const t of this.timers.values()) {
        if (t.at <= target && (!next || t.at < next.at || (t.at === next.at && t.seq < next.seq))) next = t;
      }
      if (!next) break;
      this.timers.delete(next.seq);
      this.now = next.at;
      next.callback();
      await flush();
    }
    this.now = target;
    await flush();
  }
}

export type Sent = { id: string; type: string; to?: number | string; room?: string; msg: any };

/** The server's side of one connection, played by the test. */
export class FakeSocket implements WebSocketLike {
  readyState = 0;
  onopen: ((event: unknown) => void) | null = null;
  onmessage: ((event: { data: unknown }) => void) | null = null;
  onclose: ((event: { code: number; reason: string }) => void) | null = null;
  onerror: ((event: unknown) => void) | null = null;
  readonly sent: Sent[] = [];
  closedByClient: number | null = null;

  constructor(readonly url: string) {}

  send(data: string): void {
    if (this.readyState !== 1) throw new Error("send on a socket that is not open");
    this.sent.push(JSON.parse(data) as Sent);
  }

  close(code?: number): void {
    this.closedByClient = code ?? 1000;
    this.readyState = 3;
  }

  // ---- the server's side ----

  open(): void {
    this.readyState = 1;
    this.onopen?.({});
  }

  receive(packet: Record<string, unknown>): void {
    assert.equal(this.readyState, 1, "the server sends on an open socket only");
    this.onmessage?.({ data: JSON.stringify(packet) });
  }

  login(uid: number): void {
    this.open();
    this.receive({ id: "srv-1", from: 0, type: "L", msg: "login in", uid });
  }

  /** The server replies to one of the client's packets. */
  reply(to: Sent, packet: Record<string, unknown>): void {
    this.receive({ id: to.id, from: 0, ...packet });
  }

  ack(to: Sent, extra: Record<string, unknown> = {}): void {
    this.reply(to, { type: "A", msg: "success", ...extra });
  }

  error(to: Sent, code: string): void {
    this.reply(to, { type: "E", msg: `refused: ${code}`, code });
  }

  serverClose(code: number, reason = ""): void {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  /** The server says why (`C`), then closes. */
  kick(code: number, why: string): void {
    this.receive({ id: "srv-c", from: 0, type: "C", msg: why });
    this.serverClose(code);
  }

  ofType(type: string): Sent[] {
    return this.sent.filter((p) => p.type === type);
  }

  last(type: string): Sent {
    const all = this.ofType(type);
    assert.ok(all.length > 0, `the client sent no ${type}`);
    return all[all.length - 1]!;
  }

  /** The pending sync request (`H` with `sync` or `after`) the client sent last. */
  lastSync(): Sent {
    const all = this.ofType("H").filter((p) => "sync" in p.msg || "after" in p.msg);
    assert.ok(all.length > 0, "the client sent no sync");
    return all[all.length - 1]!;
  }

  /** Answers the last sync with one page. */
  syncPage(messages: Record<string, unknown>[], more = false, extra: Record<string, unknown> = {}): void {
    const page: Record<string, unknown> = { type: "H", msg: messages, more, ...extra };
    if (more) page.next = `cursor-${messages.length ? String(messages[messages.length - 1]!.pos) : "x"}`;
    this.reply(this.lastSync(), page);
  }
}

/** A message packet as the server delivers it. */
export function msg(pos: number, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { id: `m${pos}`, from: 2, to: 1, type: "t", msg: `hello ${pos}`, ts: 1700000000000 + pos, pos, ...extra };
}

export class RecordingStore implements Store {
  readonly values = new Map<string, string>();
  writes = 0;

  get(key: string): Promise<string | undefined> {
    return Promise.resolve(this.values.get(key));
  }

  set(key: string, value: string): Promise<void> {
    this.writes++;
    this.values.set(key, value);
    return Promise.resolve();
  }

  outbox(uid = 1): { pending: Sent[]; acked: Array<[string, number | null]> } {
    return JSON.parse(this.values.get(`imd:${uid}:outbox`) ?? '{"pending":[],"acked":[]}');
  }
}

export interface Harness {
  client: ImdClient;
  clock: FakeClock;
  sockets: FakeSocket[];
  tokens: string[];
  messages: MessagePacket[];
  states: StateEvent[];
  closed: ClosedEvent[];
  outbox: OutboxEvent[];
  events: Array<[string, Packet]>;
  store: RecordingStore;
  socket(): FakeSocket;
}

export function setup(options: Partial<ImdClientOptions> = {}, store = new RecordingStore()): Harness {
  const clock = new FakeClock();
  const sockets: FakeSocket[] = [];
  const tokens: string[] = [];
  class Socket extends FakeSocket {
    constructor(url: string) {
      super(url);
      sockets.push(this);
    }
  }
  const client = new ImdClient({
    token: async () => {
      const token = `token-${tokens.length + 1}`;
      tokens.push(token);
      return token;
    },
    url: "ws://imd.test:8765",
    WebSocket: Socket,
    store,
    timers: clock,
    random: () => 0.5,
    reconnect: { minDelayMs: 500, maxDelayMs: 30000 },
    ...options,
  });
  const h: Harness = {
    client,
    clock,
    sockets,
    tokens,
    messages: [],
    states: [],
    closed: [],
    outbox: [],
    events: [],
    store,
    socket() {
      const s = sockets[sockets.length - 1];
      assert.ok(s, "no socket was opened");
      return s;
    },
  };
  client.on("message", (p) => {
    h.messages.push(p);
    h.events.push(["message", p]);
  });
  client.on("receipt", (p) => h.events.push(["receipt", p]));
  client.on("typing", (p) => h.events.push(["typing", p]));
  client.on("position", (p) => h.events.push(["position", p]));
  client.on("state", (s) => h.states.push(s));
  client.on("closed", (c) => h.closed.push(c));
  client.on("outbox", (o) => h.outbox.push(o));
  return h;
}

/** connect(), log in as `uid`, answer the sync with `pages` (one empty page by default). */
export async function connectAndSync(h: Harness, uid = 1, pages: Record<string, unknown>[][] = [[]]): Promise<FakeSocket> {
  const connected = h.client.connect();
  await flush();
  const socket = h.socket();
  socket.login(uid);
  await flush();
  pages.forEach((page, i) => socket.syncPage(page, i < pages.length - 1));
  await connected;
  await flush();
  return socket;
}

/** The socket of the next attempt, after the reconnect delay. */
export async function nextSocket(h: Harness, uid = 1): Promise<FakeSocket> {
  const before = h.sockets.length;
  const reconnecting = [...h.states].reverse().find((s) => s.state === "reconnecting");
  assert.ok(reconnecting, "the client is not reconnecting");
  await h.clock.tick(reconnecting.delayMs ?? 0);
  assert.equal(h.sockets.length, before + 1, "the client did not reconnect");
  const socket = h.socket();
  socket.login(uid);
  await flush();
  return socket;
}

export function pos(messages: MessagePacket[]): number[] {
  return messages.map((m) => m.pos as number);
}
