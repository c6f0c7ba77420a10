// A model of the server (one user's stream, dedup by id, sync pages, live
// delivery in pos order after L) drives the client through random cuts —
// before a packet is handled, between a store and its A, in the middle of a
// sync — random `unavailable` refusals and random timing, from a seeded
// generator. At the end every message of the others is delivered exactly
// once and in pos order, every send resolved, each stored once and in the
// order sent. IMD_SDK_SEEDS=N runs more seeds; a failure names its seed.
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import type { AckPacket } from "../dist/index.js";
import { FakeSocket, flush, setup } from "./helpers.js";
import type { Harness } from "./helpers.js";

type Json = Record<string, unknown>;

/** mulberry32: a small seeded generator, so that a failing run can be replayed. */
function generator(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface Link {
  socket: FakeSocket;
  handled: number; // client packets the server has read
  outgoing: Json[]; // server packets not yet on the client's side
}

class ModelServer {
  readonly stream: Json[] = [];
  readonly stored = new Map<string, number>();
  link: Link | null = null;
  cuts = 0;
  private nextPos = 1;
  private incoming = 0;

  constructor(private readonly random: () => number) {}

  attach(socket: FakeSocket): void {
    socket.open();
    // From L on, everything stored for the user is delivered on this connection.
    this.link = { socket, handled: 0, outgoing: [{ id: "srv-L", from: 0, type: "L", msg: "login in", uid: 1 }] };
  }

  /** A message from user 2 or 3, stored, then queued for the live connection. */
  receive(): void {
    const from = 2 + Math.floor(this.random() * 2);
    const packet = { id: `in-${++this.incoming}`, from, to: 1, type: "t", msg: `from ${from}`, ts: this.incoming, pos: this.nextPos++ };
    this.stream.push(packet);
    this.link?.outgoing.push(packet);
  }

  /** Reads one packet the client sent, if any, and queues its reply. */
  handleOne(): void {
    const link = this.link;
    if (!link || link.handled >= link.socket.sent.length) return;
    const packet = link.socket.sent[link.handled++]!;
    const reply = (extra: Json) => link.outgoing.push({ id: packet.id, from: 0, ...extra });
    if (packet.type === "P") reply({ type: "P", msg: "pong" });
    else if (packet.type === "H") {
      const after = "after" in packet.msg ? Number(packet.msg.after) : packet.msg.sync;
      const limit = 3; // small pages: many of them
      const rest = this.stream.filter((p) => (p.pos as number) > after);
      const page = rest.slice(0, limit);
      const more = rest.length > limit;
      reply({ type: "H", msg: page, more, ...(more ? { next: String(page[page.length - 1]!.pos) } : {}) });
    } else if (packet.type === "t") {
      const known = this.stored.get(packet.id);
      if (known !== undefined) reply({ type: "A", msg: "success", pos: known, dup: true });
      else if (this.random() < 0.1) reply({ type: "E", msg: "try again", code: "unavailable" });
      else {
        const pos = this.nextPos++;
        this.stored.set(packet.id, pos);
        this.stream.push({ id: packet.id, from: 1, to: 2, type: "t", msg: packet.msg, ts: pos, pos });
        reply({ type: "A", msg: "success", pos });
      }
    } else reply({ type: "E", msg: "not in this model", code: "unknown_type" });
  }

  /** Hands one server packet to the client. */
  flushOne(): void {
    const link = this.link;
    if (!link || link.outgoing.length === 0) return;
    if (link.socket.closedByClient !== null) {
      this.link = null; // the client gave up on it (ping or login timeout)
      return;
    }
    link.socket.receive(link.outgoing.shift()!);
  }

  cut(): void {
    if (!this.link) return;
    this.cuts++;
    const socket = this.link.socket;
    this.link = null;
    if (socket.closedByClient === null) socket.serverClose(1006);
  }
}

async function run(seed: number): Promise<{ messages: number; sends: number; cuts: number }> {
  const random = generator(seed);
  const server = new ModelServer(random);
  const h: Harness = setup({ random, reconnect: { minDelayMs: 50, maxDelayMs: 2000 } });
  const acks = new Map<string, AckPacket>();
  const sends: Array<Promise<void>> = [];
  let sent = 0;
  const send = () => {
    const text = `mine ${++sent}`;
    sends.push(h.client.send({ to: 2, type: "t", msg: text }).then((ack) => void acks.set(text, ack)));
  };
  const attachNew = () => {
    const socket = h.sockets[h.sockets.length - 1];
    if (socket && socket !== server.link?.socket && socket.readyState === 0) server.attach(socket);
  };

  void h.client.connect();
  await flush();
  for (let step = 0; step < 600; step++) {
    attachNew();
    const r = random();
    if (r < 0.3) server.flushOne();
    else if (r < 0.55) server.handleOne();
    else if (r < 0.7) server.receive();
    else if (r < 0.8) send();
    else if (r < 0.83) server.cut();
    else await h.clock.tick(Math.floor(random() * 1500));
    await flush();
  }
  // Heal: no more cuts or refusals-to-come; run until everything settled.
  const settled = () => {
    const link = server.link;
    return h.client.outboxSize === 0 && h.client.state === "connected" && !!link && link.handled === link.socket.sent.length && link.outgoing.length === 0;
  };
  for (let round = 0; round < 500 && !settled(); round++) {
    attachNew();
    while (server.link && (server.link.handled < server.link.socket.sent.length || server.link.outgoing.length > 0)) {
      server.handleOne();
      server.flushOne();
      await flush();
    }
    if (!settled()) await h.clock.tick(500);
  }
  assert.ok(settled(), "the client settled once the cuts stopped");
  await Promise.all(sends);

  const others = server.stream.filter((p) => p.from !== 1);
  assert.deepEqual(
    h.messages.map((m) => m.id),
    others.map((p) => p.id),
    "every message of the others exactly once, in pos order",
  );
  const mine = server.stream.filter((p) => p.from === 1).map((p) => p.msg);
  assert.deepEqual(
    mine,
    Array.from({ length: sent }, (_, i) => `mine ${i + 1}`),
    "each send stored once, in the order sent",
  );
  for (const p of server.stream.filter((q) => q.from === 1)) {
    assert.equal(acks.get(p.msg as string)?.pos, p.pos, "the A carries the stored pos");
  }
  assert.ok(h.client.position >= ((others[others.length - 1]?.pos as number | undefined) ?? 0));
  h.client.close();
  return { messages: others.length, sends: sent, cuts: server.cuts };
}

describe("simulation", () => {
  it("delivers every message once and in order and stores every send once, through random cuts, for 20 seeds", async () => {
    const seeds = Number(process.env.IMD_SDK_SEEDS ?? 20);
    const totals = { messages: 0, sends: 0, cuts: 0 };
    for (let seed = 1; seed <= seeds; seed++) {
      try {
        const figures = await run(seed);
        totals.messages += figures.messages;
        totals.sends += figures.sends;
        totals.cuts += figures.cuts;
      } catch (err) {
        throw new Error(`seed ${seed}: ${(err as Error).message}`, { cause: err });
      }
    }
    assert.ok(totals.cuts > seeds * 5, `few cuts: ${totals.cuts}`);
    console.log(`simulation: ${seeds} seeds, ${totals.messages} messages received, ${totals.sends} sent, ${totals.cuts} cuts`);
  });
});
