"""A Redis master, its replicas and three sentinels of the test's own.

Every process is a ``redis-server`` (sentinels: ``redis-server <conf>
--sentinel``, Debian's package) on a free 127.0.0.1 port, in a temporary
directory, stopped by its pid.  Replication starts diskless with no delay
and the sentinels declare a master down after ``down_after`` ms, so a
failover takes a few seconds.  Small blocking calls on loopback
(``redis_call``) read their state; each is bounded by a socket timeout.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile

from tests.support import PrivateRedis, free_port, wait_until

MASTER_NAME = "imdtest"


def _encode(args):
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        arg = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


def _read(stream):
    line = stream.readline()
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b":":
        return int(rest)
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b"$":
        n = int(rest)
        return None if n < 0 else stream.read(n + 2)[:-2].decode()
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_read(stream) for _ in range(n)]
    raise ConnectionError("bad or no reply: %r" % (line,))


def redis_call(port, *args, timeout=1.0):
    """One command to 127.0.0.1:``port``; its reply (blocking, bounded)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(_encode(args))
        return _read(s.makefile("rb"))


def redis_calls(port, *commands, timeout=5.0):
    """Several commands on one connection; their replies."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"".join(_encode(args) for args in commands))
        stream = s.makefile("rb")
        return [_read(stream) for _ in commands]


def _pairs(flat):
    return dict(zip(flat[0::2], flat[1::2]))


def info(port, section):
    text = redis_call(port, "INFO", section)
    return dict(line.split(":", 1) for line in text.split("\r\n") if ":" in line)


class Sentinel:
    """``redis-server <conf> --sentinel`` on a free port."""

    def __init__(self, directory, master_port, down_after, failover_timeout):
        self.port = free_port()
        self.dir = directory
        self.conf = os.path.join(directory, "sentinel-%d.conf" % self.port)
        with open(self.conf, "w") as f:
            f.write("port %d\nbind 127.0.0.1\ndir %s\n" % (self.port, directory))
            f.write("sentinel monitor %s 127.0.0.1 %d 2\n" % (MASTER_NAME, master_port))
            f.write("sentinel down-after-milliseconds %s %d\n" % (MASTER_NAME, down_after))
            f.write("sentinel failover-timeout %s %d\n" % (MASTER_NAME, failover_timeout))
            f.write("sentinel parallel-syncs %s 1\n" % MASTER_NAME)
        self.process = None

    def start(self):
        self.process = subprocess.Popen(["redis-server", self.conf, "--sentinel"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def master(self):
        """What this sentinel says of the master: a dict (SENTINEL MASTER)."""
        return _pairs(redis_call(self.port, "SENTINEL", "MASTER", MASTER_NAME))

    def master_port(self):
        reply = redis_call(self.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
        return int(reply[1]) if reply else None

    def replicas(self):
        return [_pairs(r) for r in redis_call(self.port, "SENTINEL", "REPLICAS", MASTER_NAME)]

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None


class SentinelGroup:
    """A master, ``replicas`` replicas and three sentinels; ``addCleanup`` stops them."""

    def __init__(self, testcase, replicas=1, down_after=1000, failover_timeout=3000):
        self.dir = tempfile.mkdtemp(prefix="imd-sentinel-")
        testcase.addCleanup(shutil.rmtree, self.dir, True)
        testcase.addCleanup(self.stop)
        self.nodes = {}         # port -> PrivateRedis
        self.replica_count = replicas
        self.down_after = down_after
        self.failover_timeout = failover_timeout
        self.sentinels = []
        self.master_port = None

    def _node(self, port=None, replica_of=None):
        # diskless both ways: a replica that writes the sync to disk first
        # may spend most of a second in fsync on a busy machine, acking nothing
        args = ["--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0",
                "--repl-diskless-load", "on-empty-db", "--repl-timeout", "5", "--protected-mode", "no"]
        if replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
        node = PrivateRedis(port=port, extra_args=args)
        node.dir = os.path.join(self.dir, "node-%d" % node.port)   # its own dump file
        os.makedirs(node.dir, exist_ok=True)
        return node

    async def start(self):
        master = await self._node().start()
        self.master_port = master.port
        self.nodes[master.port] = master
        for _ in range(self.replica_count):
            replica = await self._node(replica_of=master.port).start()
            self.nodes[replica.port] = replica
        await self.wait_replicas_in_sync(self.replica_count)
        self.sentinels = [Sentinel(self.dir, master.port, self.down_after, self.failover_timeout)
                          for _ in range(3)]
        for sentinel in self.sentinels:
            sentinel.start()
        await self.wait_sentinels_ready()
        return self

    @property
    def sentinel_list(self):
        """``[redis] sentinels`` for imd."""
        return ", ".join("127.0.0.1:%d" % s.port for s in self.sentinels)

    def settings(self, **more):
        """The ``[redis]`` section for imd."""
        values = {"url": "redis://127.0.0.1:%d/0" % self.master_port, "sentinels": self.sentinel_list,
                  "master_name": MASTER_NAME, "timeout": "1"}
        values.update(more)
        return values

    def replica_ports(self):
        return [port for port in self.nodes if port != self.master_port]

    # --- waiting for the group's state --------------------------------------------

    def _follow_sentinels(self):
        """On a busy machine the sentinels may fail over again by themselves:
        whatever they all agree on is the master."""
        if not self.sentinels:
            return
        try:
            ports = {s.master_port() for s in self.sentinels}
        except (OSError, RuntimeError, ConnectionError):
            return
        if len(ports) == 1 and None not in ports:
            self.master_port = ports.pop()

    def current_master(self):
        self._follow_sentinels()
        return self.master_port

    async def wait_replicas_in_sync(self, count, seconds=30):
        def in_sync():
            self._follow_sentinels()
            try:
                replication = info(self.master_port, "replication")
            except OSError:
                return False
            online = [v for k, v in replication.items() if k.startswith("slave") and "state=online" in v]
            return replication.get("role") == "master" and len(online) >= count
        await wait_until(in_sync, seconds=seconds, what="%d replicas in sync with 127.0.0.1:%d"
                         % (count, self.master_port))

        def acking():
            self._follow_sentinels()
            try:
                _, acked = redis_calls(self.master_port, ("SET", "imd-test-sync", "1"), ("WAIT", count, 200))
            except (OSError, RuntimeError, ConnectionError):
                return False
            return acked >= count
        await wait_until(acking, seconds=seconds, what="%d replicas acknowledging writes" % count)

    async def wait_sentinels_ready(self, seconds=30):
        """Every sentinel knows the master, the two other sentinels and each live replica."""
        def ready():
            self._follow_sentinels()
            try:
                for sentinel in self.sentinels:
                    state = sentinel.master()
                    if int(state["port"]) != self.master_port or "down" in state["flags"]:
                        return False
                    if int(state["num-other-sentinels"]) < 2:
                        return False
                    live = [r for r in sentinel.replicas()
                            if "down" not in r["flags"] and r.get("master-link-status") == "ok"]
                    if len(live) < self.replica_count:
                        return False
                return True
            except (OSError, RuntimeError, KeyError, ConnectionError):
                return False
        await wait_until(ready, seconds=seconds, what="three sentinels agreeing on the master and its replicas",
                         step=0.1)

    # --- faults --------------------------------------------------------------------

    def kill_master(self):
        """SIGKILL to the master; returns its port."""
        port = self.master_port
        node = self.nodes[port]
        node.process.send_signal(signal.SIGKILL)
        node.process.wait(10)
        node.process = None
        return port

    async def wait_promoted(self, old_port, seconds=40):
        """A replica promoted by the sentinels (every sentinel says so); its port."""
        def promoted():
            try:
                ports = {s.master_port() for s in self.sentinels}
            except (OSError, RuntimeError, ConnectionError):
                return False
            if len(ports) != 1 or old_port in ports or None in ports:
                return False
            port = ports.pop()
            try:
                return port if info(port, "replication").get("role") == "master" else False
            except OSError:
                return False
        self.master_port = await wait_until(promoted, seconds=seconds, what="a failover by the sentinels",
                                            step=0.05)
        return self.master_port

    async def restart_as_replica(self, port):
        """Start the killed node again on its port, replicating the current master."""
        node = self._node(port=port, replica_of=self.master_port)
        self.nodes[port] = await node.start()

    def failover(self):
        """``SENTINEL FAILOVER``: the master is demoted while it stays up."""
        return redis_call(self.sentinels[0].port, "SENTINEL", "FAILOVER", MASTER_NAME)

    async def wait_master_changed(self, old_port, seconds=40):
        return await self.wait_promoted(old_port, seconds)

    def stop(self):
        for sentinel in self.sentinels:
            sentinel.stop()
        for node in self.nodes.values():
            if node.process is not None and node.process.poll() is None:
                node.process.send_signal(signal.SIGCONT)   # a test may have stopped it
            node.stop()
