"""The ``rooms`` row of bench/run.py: room fan-out (contract v3 §9).

A room of 4 members, made with ``imd-admin room create`` (the daemon's own
config); one member sends ``t`` packets into it with a window of W in
flight, the other three members are connected (one connection each, a
thread each reading). Deliveries/s counts the packets the three received
(3 per message) from the first send to the last delivery: one store per
message, one bus frame per node, three WebSocket writes.
"""

import os
import subprocess
import threading
import time

from sync_probe import WsClient


def room_row(setup, imd, token, log, messages=20000, window=32):
    uids = setup.pairs(4)
    room = "bench:%d" % uids[0]
    subprocess.run([os.path.join(imd.flavour.bin_dir, "imd-admin"), "--config", imd.flavour.config, "room",
                    "create", room] + [str(u) for u in uids], check=True, stdout=subprocess.DEVNULL)
    sender = WsClient(imd.port, token(uids[0]))
    assert sender.next()["type"] == "L"
    members = []
    for uid in uids[1:]:
        client = WsClient(imd.port, token(uid))
        assert client.next()["type"] == "L"
        members.append(client)
    received = [0] * len(members)
    last = [0.0] * len(members)

    def read(i, client):
        while received[i] < messages:
            packet = client.next()
            if packet.get("room") == room and packet.get("type") == "t":
                received[i] += 1
                last[i] = time.perf_counter()
    readers = [threading.Thread(target=read, args=(i, c), daemon=True) for i, c in enumerate(members)]
    for thread in readers:
        thread.start()
    started = time.perf_counter()
    sent = acked = 0
    while acked < messages:
        while sent < messages and sent - acked < window:
            sender.send({"id": "r%d" % sent, "room": room, "type": "t", "msg": "fan-out %d" % sent})
            sent += 1
        reply = sender.next()
        if reply.get("type") == "A":
            acked += 1
        elif reply.get("type") == "E":
            raise RuntimeError("rooms: %r" % reply)
    acked_s = time.perf_counter() - started
    for thread in readers:
        thread.join(120)
    if sum(received) != messages * len(members):
        raise RuntimeError("rooms: %d deliveries, not %d" % (sum(received), messages * len(members)))
    elapsed = max(last) - started
    for client in [sender] + members:
        client.close()
    result = {"members": len(uids), "messages": messages, "window": window,
              "deliveries_per_s": round(messages * len(members) / elapsed),
              "messages_per_s": round(messages / acked_s),
              "note": "a 4-member room: one sender (W=%d), three members receiving" % window}
    log("  rooms %s: %d deliveries/s (%d messages/s acked, %d messages to a 4-member room)" % (
        imd.name, result["deliveries_per_s"], result["messages_per_s"], messages))
    return result
