// The calls of the public API and the packets they put on the wire.
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { ImdClient, ImdError, MemoryStore, newId } from "../dist/index.js";
import type { SendInput } from "../dist/index.js";
import { connectAndSync, flush, msg, nextSocket, setup } from "./helpers.js";

const isCode = (code: string) => (err: unknown) => err instanceof ImdError && err.code === code;

describe("api", () => {
  it("markRead sends R in its one-to-one and room forms and resolves with the A", async () => {
    const h = setup();
    const socket = await connectAndSync(h);
    const one = h.client.markRead({ to: 2, ids: ["m1", "m2"] });
    const room = h.client.markRead({ room: "order:42", seq: 17 });
    const delivered = h.client.markDelivered({ to: 2, ids: ["m3"] });
    await flush();
    const [r1, r2, r3] = socket.ofType("R");
    assert.deepEqual({ to: r1!.to, room: r1!.room, msg: r1!.msg }, { to: 2, room: undefined, msg: { state: "read", ids: ["m1", "m2"] } });
    assert.deepEqual({ to: r2!.to, room: r2!.room, msg: r2!.msg }, { to: undefined, room: "order:42", msg: { state: "read", seq: 17 } });
    assert.deepEqual(r3!.msg, { state: "delivered", ids: ["m3"] });
    socket.ack(r2!);
    socket.ack(r1!);
    socket.ack(r3!);
    await Promise.all([one, room, delivered]);
  });

  it("retries markRead through a reconnect and after unavailable, with the same id", async () => {
    const h = setup();
    const socket = await connectAndSync(h);
    const read = h.client.markRead({ to: 2, ids: ["m1"] });
    await flush();
    const r = socket.last("R");
    socket.serverClose(1006);
    await flush();
    const again = await nextSocket(h);
    assert.equal(again.last("R").id, r.id);
    again.error(again.last("R"), "unavailable");
    await h.clock.tick(1000);
    assert.equal(again.ofType("R").length, 2);
    assert.equal(again.last("R").id, r.id);
    again.ack(again.last("R"));
    await read;
  });

  it("typing sends Y while connected and is dropped, without an error, otherwise", async () => {
    const h = setup();
    h.client.typing({ to: 2 }, true); // not connected yet: nothing
    const socket = await connectAndSync(h);
    h.client.typing({ to: 2 }, true);
    h.client.typing({ room: "order:42" }, false);
    const ys = socket.ofType("Y");
    assert.deepEqual(ys.map((y) => [y.to, y.room, y.msg]), [[2, undefined, true], [undefined, "order:42", false]]);
    socket.ack(ys[0]!);
    socket.serverClose(1006);
    await flush();
    const again = await nextSocket(h);
    again.syncPage([]);
    await flush();
    assert.equal(again.ofType("Y").length, 0, "typing is not resent after a reconnect");
  });

  it("raw sends a packet as given, once, and settles with its reply", async () => {
    const h = setup();
    await assert.rejects(h.client.raw({ type: "P", msg: "ping" }), isCode("not_connected"));
    const socket = await connectAndSync(h);
    const take = h.client.raw({ type: "T", msg: 42 });
    const site = h.client.raw({ type: "S", msg: { longitude: 1.5, latitude: 2 }, id: "site-1" });
    const wrong = h.client.raw({ type: "t", to: "abc", msg: "x" });
    const [t] = socket.ofType("T");
    assert.deepEqual({ to: t!.to, msg: t!.msg }, { to: 0, msg: 42 });
    const [s] = socket.ofType("S");
    assert.equal(s!.id, "site-1");
    assert.equal(socket.last("t").to, "abc", "nothing is checked: the server says what is wrong");
    socket.ack(t!, { msg: { order: 42, uid: 7 } });
    assert.deepEqual((await take).msg, { order: 42, uid: 7 });
    socket.error(socket.last("t"), "bad_packet");
    await assert.rejects(wrong, isCode("bad_packet"));
    await assert.rejects(h.client.raw({ type: "P", msg: 1, id: "site-1" }), isCode("bad_packet"));
    socket.error(s!, "unavailable"); // not retried: the caller sees it
    await assert.rejects(site, isCode("unavailable"));
    await h.clock.tick(2000); // longer than any retry's backoff, shorter than the ping interval
    assert.equal(socket.ofType("S").length, 1);
    const lost = h.client.raw({ type: "O", msg: 2 });
    socket.serverClose(1006);
    await assert.rejects(lost, isCode("not_connected"));
    const again = await nextSocket(h);
    again.syncPage([]);
    await flush();
    assert.equal(again.ofType("O").length, 0, "raw packets are not sent again after a reconnect");
  });

  it("history pages with {after: next} until more is false", async () => {
    const h = setup();
    const socket = await connectAndSync(h);
    const seen: string[][] = [];
    const done = (async () => {
      for await (const page of h.client.history({ room: "order:42", after_seq: 0, limit: 2 })) {
        seen.push(page.messages.map((m) => String(m.id)));
        if (page.read) assert.deepEqual(page.read, { "1": 3, "2": 0 });
      }
    })();
    await flush();
    const first = socket.ofType("H").at(-1)!;
    assert.deepEqual(first.msg, { room: "order:42", after_seq: 0, limit: 2 });
    socket.reply(first, { type: "H", msg: [msg(1), msg(2)], more: true, next: "c1", read: { "1": 3, "2": 0 } });
    await flush();
    const second = socket.ofType("H").at(-1)!;
    assert.deepEqual(second.msg, { after: "c1" });
    socket.reply(second, { type: "H", msg: [msg(3)], more: false, read: { "1": 3, "2": 0 } });
    await done;
    assert.deepEqual(seen, [["m1", "m2"], ["m3"]]);
  });

  it("history rejects with the E code when the server refuses", async () => {
    const h = setup();
    const socket = await connectAndSync(h);
    const pages = h.client.history({ room: "secret" });
    const refused = assert.rejects(pages.next(), isCode("forbidden"));
    await flush();
    socket.error(socket.ofType("H").at(-1)!, "forbidden");
    await refused;
  });

  it("history and conversations asked before connect() are sent once logged in", async () => {
    const h = setup();
    const convs = h.client.conversations();
    const socket = await connectAndSync(h);
    const asked = socket.ofType("H").find((p) => p.msg.conversations === true)!;
    assert.deepEqual(asked.msg, { conversations: true });
    socket.reply(asked, { type: "H", msg: [{ room: "order:42", last: msg(1), unread: 0 }], more: true, next: "n" });
    assert.deepEqual((await convs).map((c) => c.room), ["order:42"]);
  });

  it("conversationPages pages the whole list", async () => {
    const h = setup();
    const socket = await connectAndSync(h);
    const all: unknown[] = [];
    const done = (async () => {
      for await (const page of h.client.conversationPages({ limit: 1 })) all.push(...page);
    })();
    await flush();
    socket.reply(socket.ofType("H").at(-1)!, { type: "H", msg: [{ with: 2, last: msg(2), unread: 1 }], more: true, next: "n1" });
    await flush();
    assert.deepEqual(socket.ofType("H").at(-1)!.msg, { after: "n1" });
    socket.reply(socket.ofType("H").at(-1)!, { type: "H", msg: [{ with: 3, last: msg(1), unread: 0 }], more: false });
    await done;
    assert.equal(all.length, 2);
  });

  it("refuses bad input before sending anything", async () => {
    const h = setup();
    const socket = await connectAndSync(h);
    const bad: unknown[] = [
      { type: "t", msg: "no target" },
      { to: 2, room: "r", type: "t", msg: "both" },
      { to: 0, type: "t", msg: "zero" },
      { to: -1, type: "t", msg: "negative" },
      { to: "2a", type: "t", msg: "not digits" },
      { room: "has space", type: "t", msg: "x" },
      { room: "x".repeat(65), type: "t", msg: "x" },
      { room: ".", type: "t", msg: "x" },
      { room: "..", type: "t", msg: "x" },
      { to: 2, type: "s", msg: { a: 1 } },
      { to: 2, type: "t", msg: "" },
      { to: 2, type: "t", msg: 5 },
      { to: 2, type: "i", msg: null },
      { to: 2, type: "t", msg: "x", id: "" },
      { to: 2, type: "t", msg: "x", id: "y".repeat(65) },
    ];
    for (const input of bad) await assert.rejects(h.client.send(input as SendInput), isCode("bad_packet"), JSON.stringify(input));
    await assert.rejects(h.client.send({ to: 2, type: "t", msg: "é".repeat(33000) }), isCode("too_long"));
    await assert.rejects(h.client.markRead({ to: 2, ids: [] }), isCode("bad_packet"));
    await assert.rejects(h.client.markRead({ to: 2, ids: Array.from({ length: 101 }, (_, i) => String(i)) }), isCode("bad_packet"));
    await assert.rejects(h.client.markRead({ room: "r", seq: 0 }), isCode("bad_packet"));
    await assert.rejects(h.client.recall({ to: 2, id: "" }), isCode("bad_packet"));
    assert.deepEqual(socket.sent.filter((p) => p.type !== "H"), []);
    assert.equal(h.client.outboxSize, 0);
  });

  it("sends with the caller's id when given one, and refuses a second packet with an id still waiting", async () => {
    const h = setup();
    const socket = await connectAndSync(h);
    const first = h.client.send({ to: 2, type: "t", msg: "x", id: "app-42" });
    await assert.rejects(h.client.send({ to: 2, type: "t", msg: "x", id: "app-42" }), isCode("bad_packet"));
    await flush();
    assert.equal(socket.last("t").id, "app-42");
    socket.ack(socket.last("t"), { pos: 1 });
    await first;
  });

  it("makes ids of the form <timestamp>-<random>, unique and at most 64 characters", () => {
    const ids = new Set(Array.from({ length: 10000 }, () => newId()));
    assert.equal(ids.size, 10000);
    for (const id of [...ids].slice(0, 100)) {
      assert.match(id, /^\d{13}-[0-9a-f]{16}$/);
      assert.ok(id.length <= 64);
    }
  });

  it("needs a WebSocket: the global one, or one passed in", () => {
    const hadGlobal = "WebSocket" in globalThis;
    if (!hadGlobal) {
      assert.throws(() => new ImdClient({ token: () => "t" }), /WebSocket/);
    }
    assert.throws(() => new ImdClient({ token: () => "t", WebSocket: class {} as never, reconnect: { minDelayMs: 10, maxDelayMs: 5 } }), /minDelayMs/);
    assert.throws(() => new ImdClient({ token: () => "t", WebSocket: class {} as never, syncPageSize: 501 }), /syncPageSize/);
    assert.ok(new ImdClient({ token: () => "t", WebSocket: class {} as never, store: new MemoryStore() }));
  });

  it("keeps delivering to other handlers when one throws, and reports the error", async () => {
    const thrown: Array<[unknown, string]> = [];
    const h = setup({ onHandlerError: (err, event) => thrown.push([err, event]) });
    const socket = await connectAndSync(h);
    const off = h.client.on("message", () => {
      throw new Error("app bug");
    });
    socket.receive(msg(1));
    socket.receive(msg(2));
    off();
    socket.receive(msg(3));
    assert.deepEqual(h.messages.map((m) => m.pos), [1, 2, 3]);
    assert.deepEqual(thrown.map(([err, event]) => [(err as Error).message, event]), [["app bug", "message"], ["app bug", "message"]]);
    assert.equal(h.client.position, 3);
  });
});
