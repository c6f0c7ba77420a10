"""What the Redis probes (bench/fanout_probe.py, bench/claim_probe.py,
bench/redis_footprint.py) share: a private redis-server on a loopback
port, the RESP encoding of a command, a blocking reader of its replies, and
a process's CPU seconds from /proc."""
import os
import subprocess
import time


def encode(*args):
    """One command in RESP (every argument a bulk string)."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def read_reply(f):
    """The next reply from the binary file ``f`` (a socket's makefile):
    a list, bytes, None, or the line of a status or an integer (without
    its type byte for an integer)."""
    line = f.readline()
    if line[:1] == b"*":
        return [read_reply(f) for _ in range(int(line[1:]))]
    if line[:1] == b"$":
        n = int(line[1:])
        return None if n < 0 else f.read(n + 2)[:-2]
    return line[1:].strip() if line[:1] == b":" else line.strip()


def start_redis(port, *options):
    """A redis-server on 127.0.0.1:``port`` saving nothing, with
    ``options``; the caller stops it (terminate, wait)."""
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
                            + list(options), stdout=subprocess.DEVNULL)
    time.sleep(0.3)
    return proc


def cpu_seconds(pid):
    """User + system CPU seconds of process ``pid``."""
    with open("/proc/%d/stat" % pid) as st:
        parts = st.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")
