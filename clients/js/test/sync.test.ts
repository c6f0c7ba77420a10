// After every (re)connect: L, then H {"sync": P} from the highest pos
// processed, paged with {"after": next}; synced packets before the live ones
// that came meanwhile; nothing at or below the highest pos delivered again.
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { connectAndSync, flush, msg, nextSocket, pos, RecordingStore, setup } from "./helpers.js";

describe("sync", () => {
  it("sends nothing before L, then syncs from 0 and resolves connect() only when the sync is done", async () => {
    const h = setup();
    let resolved = false;
    const connected = h.client.connect().then(() => (resolved = true));
    await flush();
    const socket = h.socket();
    assert.equal(socket.url, "ws://imd.test:8765/token-1");
    socket.open();
    const early = h.client.send({ to: 2, type: "t", msg: "early" });
    await flush();
    assert.equal(socket.sent.length, 0, "nothing goes out before L");
    assert.equal(h.client.state, "connecting");

    socket.receive({ id: "srv-1", from: 0, type: "L", msg: "login in", uid: 1 });
    await flush();
    const sync = socket.lastSync();
    assert.deepEqual(sync.msg, { sync: 0, limit: 200 });
    assert.equal(sync.to, 0);
    assert.equal(h.client.state, "syncing");
    assert.equal(resolved, false);
    assert.deepEqual(socket.sent.map((p) => p.type), ["H", "t"], "the sync, then the outbox");
    socket.ack(socket.last("t"), { pos: 1 });
    assert.equal((await early).pos, 1);

    socket.syncPage([]);
    await connected;
    assert.equal(resolved, true);
    assert.equal(h.client.state, "connected");
    assert.equal(h.client.uid, 1);
  });

  it("pages with {after: next} while more, delivering every message once in pos order", async () => {
    const h = setup({ syncPageSize: 2 });
    const connected = h.client.connect();
    await flush();
    const socket = h.socket();
    socket.login(1);
    await flush();
    assert.deepEqual(socket.lastSync().msg, { sync: 0, limit: 2 });
    socket.syncPage([msg(1), msg(2)], true);
    await flush();
    assert.deepEqual(socket.lastSync().msg, { after: "cursor-2" });
    socket.syncPage([msg(4), msg(7)], true);
    await flush();
    assert.deepEqual(socket.lastSync().msg, { after: "cursor-7" });
    socket.syncPage([msg(9)]);
    await connected;
    assert.deepEqual(pos(h.messages), [1, 2, 4, 7, 9]);
    assert.equal(h.client.position, 9);
    assert.equal(socket.ofType("H").length, 3);
  });

  it("buffers live packets during the sync and delivers them after the synced ones, dropping those already seen", async () => {
    const h = setup();
    const connected = h.client.connect();
    await flush();
    const socket = h.socket();
    socket.login(1);
    await flush();
    // live packets while the sync is under way
    socket.receive(msg(5));
    socket.receive({ id: "r1", from: 2, to: 1, type: "R", msg: { state: "read", ids: ["x"], ts: 1 } });
    socket.receive(msg(6));
    assert.equal(h.events.length, 0, "nothing is delivered before the sync is done");
    socket.syncPage([msg(3), msg(4), msg(5)], true);
    await flush();
    socket.receive(msg(7));
    assert.deepEqual(pos(h.messages), [3, 4, 5], "the synced packets come first");
    socket.syncPage([msg(6)]);
    await connected;
    assert.deepEqual(
      h.events.map(([kind, p]) => (kind === "message" ? p.pos : kind)),
      [3, 4, 5, 6, "receipt", 7],
    );
    // live from now on
    socket.receive(msg(7));
    socket.receive(msg(8));
    assert.deepEqual(pos(h.messages), [3, 4, 5, 6, 7, 8]);
  });

  it("after a reconnect syncs from the highest pos processed and drops what it already delivered", async () => {
    const h = setup();
    const first = await connectAndSync(h, 1, [[msg(1), msg(2)]]);
    first.receive(msg(3));
    first.serverClose(1006);
    await flush();
    const second = await nextSocket(h);
    assert.deepEqual(second.lastSync().msg, { sync: 3, limit: 200 });
    second.receive(msg(4)); // live, during the sync
    second.receive(msg(5));
    second.syncPage([msg(3), msg(4)]); // 3 again: dropped
    await flush();
    second.receive(msg(5)); // again: dropped
    second.receive(msg(2)); // older: dropped
    second.receive(msg(6));
    assert.deepEqual(pos(h.messages), [1, 2, 3, 4, 5, 6]);
    assert.deepEqual(
      h.messages.map((m) => m.id),
      ["m1", "m2", "m3", "m4", "m5", "m6"],
    );
  });

  it("delivers a live packet that comes after a higher one (two nodes), dropping only the positions it has seen", async () => {
    const h = setup();
    const socket = await connectAndSync(h, 1, [[msg(1), msg(2)]]);
    // stored 10 on another node, 11 on this one: 11 reached the client first
    socket.receive(msg(11));
    socket.receive(msg(10));
    socket.receive(msg(11)); // seen: dropped
    socket.receive(msg(10)); // seen: dropped
    socket.receive(msg(2)); // came through the sync: seen
    assert.deepEqual(pos(h.messages), [1, 2, 11, 10]);
    assert.equal(h.client.position, 11);
  });

  it("keeps the highest pos in the store, so the next client starts its sync there", async () => {
    const store = new RecordingStore();
    const h1 = setup({}, store);
    const socket = await connectAndSync(h1, 1, [[msg(3), msg(5)]]);
    socket.receive(msg(8));
    await flush();
    assert.equal(store.values.get("imd:1:pos"), "8");
    h1.client.close();

    const h2 = setup({}, store);
    const connected = h2.client.connect();
    await flush();
    h2.socket().login(1);
    await flush();
    assert.deepEqual(h2.socket().lastSync().msg, { sync: 8, limit: 200 });
    h2.socket().syncPage([msg(8), msg(9)]);
    await connected;
    assert.deepEqual(pos(h2.messages), [9]);
  });

  it("writes the position to the store only after the message handler ran", async () => {
    const values = new Map<string, string>();
    const seenInHandler: Array<string | undefined> = [];
    const h = setup({ store: { get: (k) => values.get(k), set: (k, v) => void values.set(k, v) } });
    h.client.on("message", () => seenInHandler.push(values.get("imd:1:pos")));
    const socket = await connectAndSync(h, 1, [[msg(1)]]);
    socket.receive(msg(2));
    await flush();
    assert.deepEqual(seenInHandler, ["0", "1"]);
    assert.equal(values.get("imd:1:pos"), "2");
  });

  it("keeps each user's position under its own key", async () => {
    const store = new RecordingStore();
    store.values.set("imd:1:pos", "40");
    store.values.set("imd:7:pos", "12");
    const h = setup({}, store);
    const connected = h.client.connect();
    await flush();
    h.socket().login(7);
    await flush();
    assert.deepEqual(h.socket().lastSync().msg, { sync: 12, limit: 200 });
    h.socket().syncPage([]);
    await connected;
  });

  it("reports a truncated sync as a state warning, not an error", async () => {
    const h = setup();
    const connected = h.client.connect();
    await flush();
    h.socket().login(1);
    await flush();
    h.socket().syncPage([msg(50), msg(51)], false, { truncated: true });
    await connected;
    const warnings = h.states.filter((s) => s.warning !== undefined);
    assert.deepEqual(warnings.map((s) => s.warning), ["truncated"]);
    assert.deepEqual(pos(h.messages), [50, 51]);
    assert.equal(h.client.state, "connected");
  });

  it("retries the sync after unavailable, and goes live with a warning when the server refuses it", async () => {
    const h = setup();
    const connected = h.client.connect();
    await flush();
    const socket = h.socket();
    socket.login(1);
    await flush();
    socket.error(socket.lastSync(), "unavailable");
    await flush();
    assert.equal(socket.ofType("H").length, 1, "not resent at once");
    assert.deepEqual(h.clock.pending().filter((d) => d >= 500 && d <= 1000).length, 1);
    await h.clock.tick(1000);
    assert.equal(socket.ofType("H").length, 2);
    assert.deepEqual(socket.lastSync().msg, { sync: 0, limit: 200 });
    socket.receive(msg(4)); // live
    socket.error(socket.lastSync(), "bad_packet");
    await connected;
    assert.deepEqual(h.states.filter((s) => s.warning).map((s) => s.warning), ["sync_failed"]);
    assert.deepEqual(pos(h.messages), [4]);
  });

  it("does not deliver as messages the packets this client sent itself, but does deliver those of the user's other devices", async () => {
    const h = setup();
    const socket = await connectAndSync(h, 1, [[msg(1)]]);
    const sending = h.client.send({ to: 2, type: "t", msg: "mine" });
    await flush();
    const sent = socket.last("t");
    socket.ack(sent, { pos: 2 });
    const ack = await sending;
    assert.equal(ack.pos, 2);
    socket.serverClose(1006);
    await flush();
    const again = await nextSocket(h);
    assert.deepEqual(again.lastSync().msg, { sync: 1, limit: 200 });
    again.syncPage([
      { id: sent.id, from: 1, to: 2, type: "t", msg: "mine", ts: 2, pos: 2 },
      { id: "other-device", from: 1, to: 2, type: "t", msg: "from my phone", ts: 3, pos: 3 },
      msg(4),
    ]);
    await flush();
    assert.deepEqual(
      h.messages.map((m) => m.id),
      ["m1", "other-device", "m4"],
    );
    assert.equal(h.client.position, 4);
  });

  it("does not deliver its own stored packet whose A is still pending (it arrives through the sync first)", async () => {
    const h = setup();
    const socket = await connectAndSync(h);
    const sending = h.client.send({ to: 2, type: "t", msg: "in flight" });
    await flush();
    const sent = socket.last("t");
    socket.serverClose(1006); // stored, but the A was lost
    await flush();
    const again = await nextSocket(h);
    again.syncPage([{ id: sent.id, from: 1, to: 2, type: "t", msg: "in flight", ts: 2, pos: 2 }]);
    await flush();
    assert.deepEqual(h.messages, []);
    const resent = again.last("t");
    assert.equal(resent.id, sent.id);
    again.ack(resent, { pos: 2, dup: true });
    assert.equal((await sending).dup, true);
    assert.deepEqual(h.messages, []);
  });

  it("delivers recalls (D) and room and system messages of the stream as messages", async () => {
    const h = setup();
    await connectAndSync(h, 1, [
      [
        msg(1),
        { id: "r1", from: 3, room: "order:42", type: "t", msg: "hi all", ts: 2, seq: 1, pos: 2 },
        { id: "closed-42", from: 0, to: 1, type: "s", msg: { order: 42, event: "closed" }, ts: 3, pos: 3 },
        { id: "d1", from: 2, to: 1, type: "D", msg: "m1", ts: 4, pos: 4 },
      ],
    ]);
    assert.deepEqual(
      h.messages.map((m) => m.type),
      ["t", "t", "s", "D"],
    );
    assert.equal(h.messages[1]!.room, "order:42");
  });

  it("goes on without the store when it cannot be read, saying so", async () => {
    const h = setup({
      store: {
        get: () => Promise.reject(new Error("disk gone")),
        set: () => Promise.reject(new Error("disk gone")),
      },
    });
    const connected = h.client.connect();
    await flush();
    h.socket().login(1);
    await flush();
    h.socket().syncPage([msg(1)]);
    await connected;
    assert.deepEqual(pos(h.messages), [1]);
    assert.ok(h.states.some((s) => s.warning === "store_failed"));
  });
});
