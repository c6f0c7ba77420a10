// The outbox: sends wait in order, one in flight, kept in the store until
// their A; resent with their original ids after a reconnect or a restart;
// unavailable/rate_limited retried, other E codes reject.
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { ImdError } from "../dist/index.js";
import { connectAndSync, flush, nextSocket, RecordingStore, setup } from "./helpers.js";

describe("outbox", () => {
  it("sends one packet at a time, in order, each after the A of the one before", async () => {
    const h = setup();
    const a = h.client.send({ to: 2, type: "t", msg: "a" });
    const b = h.client.send({ room: "order:42", type: "t", msg: "b" });
    const c = h.client.send({ to: "2", type: "i", msg: 77 });
    const socket = await connectAndSync(h);
    assert.deepEqual(socket.ofType("t").map((p) => p.msg), ["a"]);
    socket.ack(socket.last("t"), { pos: 1, masked: true });
    await flush();
    const sentB = socket.last("t");
    assert.equal(sentB.msg, "b");
    assert.equal(sentB.room, "order:42");
    assert.equal(sentB.to, undefined);
    socket.ack(sentB, { seq: 17, pos: 2 });
    await flush();
    const sentC = socket.last("i");
    assert.deepEqual({ to: sentC.to, msg: sentC.msg }, { to: "2", msg: 77 });
    socket.ack(sentC, { pos: 3 });

    const [ackA, ackB, ackC] = await Promise.all([a, b, c]);
    assert.deepEqual([ackA.type, ackA.pos, ackA.masked], ["A", 1, true]);
    assert.deepEqual([ackB.seq, ackB.pos], [17, 2]);
    assert.equal(ackC.pos, 3);
    assert.equal(h.client.outboxSize, 0);
    assert.deepEqual(h.outbox.map((o) => o.ack?.pos), [1, 2, 3]);
  });

  it("resends unacknowledged packets after a reconnect with their original ids, in order, and takes dup: true as an A", async () => {
    const h = setup();
    const socket = await connectAndSync(h);
    const first = h.client.send({ to: 2, type: "t", msg: "one" });
    const second = h.client.send({ to: 2, type: "t", msg: "two" });
    await flush();
    const one = socket.last("t");
    socket.serverClose(1006); // the A of "one" never came
    await flush();

    const again = await nextSocket(h);
    const resent = again.ofType("t");
    assert.deepEqual(resent.map((p) => [p.id, p.msg]), [[one.id, "one"]], "the same id, and only the head");
    again.ack(resent[0]!, { pos: 5, dup: true });
    await flush();
    const two = again.last("t");
    assert.equal(two.msg, "two");
    again.ack(two, { pos: 6 });
    const [ackOne, ackTwo] = await Promise.all([first, second]);
    assert.deepEqual([ackOne.dup, ackOne.pos], [true, 5]);
    assert.equal(ackTwo.pos, 6);
    // every client packet had an id of its own
    const ids = [...socket.sent, ...again.sent].map((p) => p.id);
    assert.equal(new Set(ids).size, ids.length - 1, "only the resent packet repeats an id");
  });

  it("keeps the outbox through several reconnects and sends new packets after the old ones", async () => {
    const h = setup();
    let socket = await connectAndSync(h);
    const sends = [h.client.send({ to: 2, type: "t", msg: "1" }), h.client.send({ to: 2, type: "t", msg: "2" })];
    await flush();
    const firstId = socket.last("t").id;
    for (let i = 0; i < 3; i++) {
      socket.serverClose(i % 2 ? 1001 : 4008);
      await flush();
      socket = await nextSocket(h);
      assert.deepEqual(socket.ofType("t").map((p) => p.id), [firstId]);
    }
    sends.push(h.client.send({ to: 2, type: "t", msg: "3" }));
    let n = 1;
    for (const text of ["1", "2", "3"]) {
      await flush();
      const p = socket.last("t");
      assert.equal(p.msg, text);
      socket.ack(p, { pos: n++ });
    }
    assert.deepEqual((await Promise.all(sends)).map((a) => a.pos), [1, 2, 3]);
  });

  it("retries unavailable and rate_limited with the same id after a backoff between the bounds", async () => {
    const h = setup({ random: () => 0.5 });
    const socket = await connectAndSync(h);
    const sending = h.client.send({ to: 2, type: "t", msg: "x" });
    const later = h.client.send({ to: 2, type: "t", msg: "y" });
    await flush();
    const p = socket.last("t");
    socket.error(p, "unavailable");
    await flush();
    assert.equal(socket.ofType("t").length, 1, "not resent at once, and the next one waits");
    await h.clock.tick(749);
    assert.equal(socket.ofType("t").length, 1);
    await h.clock.tick(1); // attempt 1: 500 + 0.5 * (1000 - 500)
    assert.equal(socket.ofType("t").length, 2);
    assert.equal(socket.last("t").id, p.id);
    socket.error(socket.last("t"), "rate_limited");
    await h.clock.tick(1249);
    assert.equal(socket.ofType("t").length, 2);
    await h.clock.tick(1); // attempt 2: 500 + 0.5 * (2000 - 500)
    assert.equal(socket.ofType("t").length, 3);
    assert.equal(socket.last("t").id, p.id);
    socket.ack(socket.last("t"), { pos: 9 });
    assert.equal((await sending).pos, 9);
    await flush();
    assert.equal(socket.last("t").msg, "y", "order kept: the next packet only after the retried one");
    socket.ack(socket.last("t"), { pos: 10 });
    await later;
  });

  it("rejects with an ImdError carrying the E code for any other refusal, and goes on with the next packet", async () => {
    const h = setup();
    const socket = await connectAndSync(h);
    const refused = h.client.send({ to: 3, type: "t", msg: "stranger" });
    const ok = h.client.send({ to: 2, type: "t", msg: "friend" });
    const rejected = assert.rejects(refused, (err: unknown) => {
      assert.ok(err instanceof ImdError);
      assert.equal(err.code, "not_friend");
      assert.equal(err.packet?.type, "E");
      return true;
    });
    await flush();
    socket.error(socket.last("t"), "not_friend");
    await rejected;
    await flush();
    assert.equal(socket.last("t").msg, "friend");
    socket.ack(socket.last("t"), { pos: 1 });
    await ok;
    assert.equal(h.outbox[0]!.error instanceof ImdError, true);
    for (const code of ["forbidden", "blocked", "too_long", "not_found", "bad_packet"]) {
      const p = h.client.send({ to: 2, type: "t", msg: code });
      await flush();
      socket.error(socket.last("t"), code);
      await assert.rejects(p, (err: unknown) => err instanceof ImdError && err.code === code);
    }
  });

  it("keeps unacknowledged packets in the store and a restarted client resends them with their original ids", async () => {
    const store = new RecordingStore();
    const h1 = setup({}, store);
    const socket = await connectAndSync(h1);
    const a = h1.client.send({ to: 2, type: "t", msg: "a" });
    const b = h1.client.send({ room: "r1", type: "t", msg: "b" });
    await flush();
    const sentA = socket.last("t");
    assert.deepEqual(store.outbox().pending.map((p) => p.msg), ["a", "b"]);
    h1.client.close(); // e.g. the app is killed: the promises end, the packets stay
    await assert.rejects(a, (err: unknown) => err instanceof ImdError && err.code === "closed");
    await assert.rejects(b, (err: unknown) => err instanceof ImdError && err.code === "closed");
    await flush();
    const pendingIds = store.outbox().pending.map((p) => p.id);
    assert.equal(pendingIds[0], sentA.id);

    const h2 = setup({}, store);
    const later = h2.client.send({ to: 2, type: "t", msg: "c" });
    const again = await connectAndSync(h2);
    assert.deepEqual(again.ofType("t").map((p) => [p.id, p.msg]), [[sentA.id, "a"]]);
    again.ack(again.last("t"), { pos: 1, dup: true });
    await flush();
    assert.deepEqual([again.last("t").id, again.last("t").msg], [pendingIds[1], "b"]);
    again.ack(again.last("t"), { pos: 2 });
    await flush();
    assert.equal(again.last("t").msg, "c");
    again.ack(again.last("t"), { pos: 3 });
    await later;
    assert.deepEqual(
      h2.outbox.map((o) => [o.packet.msg, o.ack?.dup ?? false]),
      [
        ["a", true],
        ["b", false],
        ["c", false],
      ],
    );
    await flush();
    assert.deepEqual(store.outbox().pending, []);
  });

  it("a restarted client does not deliver its acked packets as messages when the sync brings them", async () => {
    const store = new RecordingStore();
    const h1 = setup({}, store);
    const s1 = await connectAndSync(h1);
    const sent = h1.client.send({ to: 2, type: "t", msg: "mine" });
    await flush();
    const p = s1.last("t");
    s1.ack(p, { pos: 4 });
    await sent;
    await flush();
    h1.client.close();

    const h2 = setup({}, store);
    const s2 = h2.client.connect();
    await flush();
    h2.socket().login(1);
    await flush();
    assert.deepEqual(h2.socket().lastSync().msg, { sync: 0, limit: 200 });
    h2.socket().syncPage([{ id: p.id, from: 1, to: 2, type: "t", msg: "mine", ts: 1, pos: 4 }, { id: "m5", from: 2, to: 1, type: "t", msg: "re", ts: 2, pos: 5 }]);
    await s2;
    assert.deepEqual(h2.messages.map((m) => m.id), ["m5"]);
    await flush();
    assert.deepEqual(store.outbox().acked, [], "forgotten once the position passed them");
  });

  it("sends queued recalls in the same order as messages", async () => {
    const h = setup();
    const socket = await connectAndSync(h);
    const sent = h.client.send({ to: 2, type: "t", msg: "oops" });
    const recalled = h.client.recall({ to: 2, id: "will-be-set" });
    await flush();
    assert.deepEqual(socket.sent.filter((p) => p.type !== "H").map((p) => p.type), ["t"]);
    socket.ack(socket.last("t"), { pos: 1 });
    await sent;
    await flush();
    const d = socket.last("D");
    assert.deepEqual({ to: d.to, msg: d.msg }, { to: 2, msg: "will-be-set" });
    socket.ack(d, { pos: 2 });
    assert.equal((await recalled).pos, 2);
  });
});
