// The client on Node with the ws package, against a small scripted server on
// 127.0.0.1 that speaks the protocol's sync, ack and dedup rules. (Against a
// real imd through cut connections: integration.ts, run by the imd
// repository's tests/test_sdk_integration.py.)
import assert from "node:assert/strict";
import type { AddressInfo } from "node:net";
import { after, before, describe, it } from "node:test";

import WebSocket, { WebSocketServer } from "ws";

import { ImdClient } from "../dist/index.js";
import type { ImdClientEvents, MessagePacket } from "../dist/index.js";

type Json = Record<string, unknown>;

/** One user's stream and dedup set, and the connections open for it. */
class ScriptedServer {
  readonly wss: WebSocketServer;
  readonly stream: Json[] = [];
  readonly seen = new Map<string, number>();
  readonly sockets: WebSocket[] = [];
  readonly tokens: string[] = [];
  readonly received: Json[] = [];
  /** While true, stored packets get no A (as when the connection dies right after the store). */
  withholdAcks = false;
  /** Called with each packet stored. */
  onStore: (packet: Json) => void = () => {};
  private nextPos = 1;

  constructor() {
    this.wss = new WebSocketServer({ host: "127.0.0.1", port: 0 });
    this.wss.on("connection", (socket, request) => {
      this.tokens.push(request.url ?? "");
      this.sockets.push(socket);
      socket.send(JSON.stringify({ id: "srv-1", from: 0, type: "L", msg: "login in", uid: 1 }));
      socket.on("message", (data) => this.onPacket(socket, JSON.parse(String(data)) as Json));
    });
  }

  get port(): number {
    return (this.wss.address() as AddressInfo).port;
  }

  /** A message from user 2, stored and delivered live to every open connection. */
  deliver(text: string): Json {
    const packet = { id: `srv-m${this.nextPos}`, from: 2, to: 1, type: "t", msg: text, ts: Date.now(), pos: this.nextPos++ };
    this.stream.push(packet);
    for (const socket of this.sockets) if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(packet));
    return packet;
  }

  private onPacket(socket: WebSocket, packet: Json): void {
    this.received.push(packet);
    const reply = (extra: Json) => socket.send(JSON.stringify({ id: packet.id, from: 0, ...extra }));
    if (packet.type === "P") reply({ type: "P", msg: "pong" });
    else if (packet.type === "H") {
      const msg = packet.msg as Json;
      const from = typeof msg.sync === "number" ? msg.sync : 0;
      reply({ type: "H", msg: this.stream.filter((p) => (p.pos as number) > from), more: false });
    } else if (packet.type === "t") {
      const id = String(packet.id);
      const known = this.seen.get(id);
      if (known !== undefined) {
        reply({ type: "A", msg: "success", pos: known, dup: true });
        return;
      }
      const pos = this.nextPos++;
      this.seen.set(id, pos);
      this.stream.push({ ...packet, from: 1, ts: Date.now(), pos });
      this.onStore(packet);
      if (!this.withholdAcks) reply({ type: "A", msg: "success", pos });
    }
  }

  dropAll(): void {
    for (const socket of this.sockets) socket.terminate();
  }

  close(): Promise<void> {
    for (const socket of this.sockets) socket.terminate();
    return new Promise((resolve) => this.wss.close(() => resolve()));
  }
}

/** Resolves with the first event that passes `test`; fails after `ms`. */
function waitFor<K extends keyof ImdClientEvents>(
  client: ImdClient,
  event: K,
  test: (value: ImdClientEvents[K]) => boolean = () => true,
  ms = 5000,
): Promise<ImdClientEvents[K]> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no ${String(event)} event within ${ms} ms`));
    }, ms);
    const off = client.on(event, (value) => {
      if (!test(value)) return;
      clearTimeout(timer);
      off();
      resolve(value);
    });
  });
}

describe("with the ws package", () => {
  let server: ScriptedServer;
  before(() => {
    server = new ScriptedServer();
  });
  after(() => server.close());

  it("logs in, syncs, sends and receives, and after the connection is cut resends with the same id and catches up", async () => {
    server.deliver("before the client came");
    const client = new ImdClient({
      token: () => `ws://127.0.0.1:${server.port}/tok-${server.tokens.length + 1}`,
      WebSocket,
      reconnect: { minDelayMs: 10, maxDelayMs: 50 },
    });
    const messages: MessagePacket[] = [];
    client.on("message", (m) => messages.push(m));
    try {
      await client.connect();
      assert.deepEqual(messages.map((m) => m.msg), ["before the client came"]);

      const ack = await client.send({ to: 2, type: "t", msg: "hi" });
      assert.equal(ack.pos, 2);

      const live = waitFor(client, "message");
      server.deliver("live");
      assert.equal((await live).msg, "live");

      // stored, but the connection dies before the A
      server.withholdAcks = true;
      const stored = new Promise<void>((resolve) => (server.onStore = () => resolve()));
      const sending = client.send({ to: 2, type: "t", msg: "lost ack" });
      await stored;
      const reconnected = waitFor(client, "state", (s) => s.state === "connected");
      server.withholdAcks = false;
      server.dropAll();
      server.deliver("while away");
      await reconnected;
      const ackAgain = await sending;
      assert.equal(ackAgain.dup, true);
      assert.equal(ackAgain.pos, 4);

      const texts = messages.map((m) => m.msg);
      assert.deepEqual(texts, ["before the client came", "live", "while away"]);
      const sends = server.received.filter((p) => p.msg === "lost ack");
      assert.equal(sends.length, 2);
      assert.equal(sends[0]!.id, sends[1]!.id);
      assert.deepEqual(
        server.tokens,
        server.tokens.map((_, i) => `/tok-${i + 1}`),
        "a new token for each connection",
      );
      const syncs = server.received.filter((p) => p.type === "H").map((p) => p.msg);
      assert.deepEqual(syncs, [
        { sync: 0, limit: 200 },
        { sync: 3, limit: 200 },
      ]);
    } finally {
      client.close();
    }
  });
});
