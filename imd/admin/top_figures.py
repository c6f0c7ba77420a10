"""The figures of ``imd-admin top``, worked out from ``/metrics`` texts and
the queue's status: no I/O here.

Rates and the ack p99 are taken over the last ``WINDOW`` seconds of samples
(a 1 s window would be noise), as Prometheus' ``rate()`` and
``histogram_quantile()`` would.
"""

import time
from collections import deque, namedtuple
from typing import TYPE_CHECKING, Any, Deque, Dict, List, Optional, Sequence, Tuple

from prometheus_client.parser import text_string_to_metric_families

if TYPE_CHECKING:
    from imd.stores.deadletter import QueueStatus

WINDOW = 5.0          # seconds of samples rates are taken over
MESSAGE_TYPES = ("t", "i")

Sample = namedtuple("Sample", "at connections packets messages acks errors buckets lag")
Row = namedtuple("Row", "node roles connections in_rate msg_rate ack_p99 err_rate url state")
Frame = namedtuple("Frame", "at redis queued in_flight dead lag leader nodes_up rows total problem")

# A histogram as cumulative ``[(le, count)]``, bounds ascending.
Buckets = Sequence[Tuple[float, float]]
# ``(in/s, messages/s, errors/s, ack-latency bucket delta)``
Rates = Tuple[Optional[float], Optional[float], Optional[float], Optional[List[Tuple[float, float]]]]


def parse_metrics(text: str, at: float) -> Sample:
    """The figures ``top`` shows, from one process's Prometheus text."""
    connections, packets, acks, errors, lag = None, 0.0, 0.0, 0.0, None
    messages = 0.0
    buckets = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, value = sample.name, sample.value
            if name == "imd_connections_open":
                connections = value
            elif name == "imd_packets_in_total":
                packets += value
                if sample.labels.get("type") in MESSAGE_TYPES:
                    messages += value
            elif name == "imd_acks_total":
                acks = value
            elif name == "imd_errors_total":
                errors += value
            elif name == "imd_ack_latency_seconds_bucket":
                buckets[float(sample.labels["le"])] = value
            elif name == "imd_migrator_lag_seconds":
                lag = value
    return Sample(at, connections, packets, messages, acks, errors, tuple(sorted(buckets.items())), lag)


def histogram_quantile(q: float, buckets: Buckets) -> Optional[float]:
    """``histogram_quantile`` of cumulative ``[(le, count)]``; None without observations."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def bucket_delta(new: Buckets, old: Buckets) -> Optional[List[Tuple[float, float]]]:
    """Observations between two samples of one histogram (same bounds), or None."""
    if not new or [b for b, _ in new] != [b for b, _ in old]:
        return None
    delta = [(bound, n - o) for (bound, n), (_, o) in zip(new, old)]
    return None if any(count < 0 for _, count in delta) else delta   # a restart


def merge_buckets(histograms: Sequence[Buckets]) -> Optional[List[Tuple[float, float]]]:
    """The sum of several ``[(le, count)]`` with the same bounds."""
    histograms = [h for h in histograms if h]
    if not histograms:
        return None
    merged = dict(histograms[0])
    for histogram in histograms[1:]:
        if [b for b, _ in histogram] != sorted(merged):
            continue
        for bound, count in histogram:
            merged[bound] += count
    return sorted(merged.items())


class NodeHistory:
    """The recent samples of one process; the rates over ``WINDOW``."""

    def __init__(self) -> None:
        self.samples: Deque[Sample] = deque(maxlen=64)

    def add(self, sample: Sample) -> None:
        self.samples.append(sample)
        while len(self.samples) > 2 and sample.at - self.samples[1].at >= WINDOW:
            self.samples.popleft()

    def rates(self) -> Rates:
        """``(in/s, messages/s, errors/s, ack-latency bucket delta)``, Nones until two samples."""
        if len(self.samples) < 2:
            return None, None, None, None
        new, old = self.samples[-1], self.samples[0]
        elapsed = new.at - old.at
        if elapsed <= 0:
            return None, None, None, None

        def rate(field: str) -> Optional[float]:
            delta = getattr(new, field) - getattr(old, field)
            return delta / elapsed if delta >= 0 else None
        return rate("packets"), rate("messages"), rate("errors"), bucket_delta(new.buckets, old.buckets)


def build_frame(at: float, redis: str, status: Optional["QueueStatus"], processes: List[Dict[str, Any]],
                nodes_up: Optional[int], histories: Dict[str, NodeHistory], states: Dict[str, str],
                problem: Optional[str] = None) -> Frame:
    """One screen's worth: the queue from ``status`` (a QueueStatus, or None
    when Redis did not answer), a row per process, and the total."""
    rows, deltas = [], []
    totals: Dict[str, Optional[float]] = {"connections": None, "in_rate": None, "msg_rate": None, "err_rate": None}
    for info in processes:
        url = info.get("metrics") or ""
        history = histories.get(url) if url else None
        latest = history.samples[-1] if history and history.samples else None
        in_rate, msg_rate, err_rate, delta = history.rates() if history else (None,) * 4
        connections = latest.connections if latest else None
        if delta:
            deltas.append(delta)
        row = Row(str(info.get("node", "?")), str(info.get("roles", "?")), connections, in_rate, msg_rate,
                  histogram_quantile(0.99, delta) if delta else None, err_rate, url,
                  states.get(url, "no metrics endpoint" if not url else ""))
        rows.append(row)
        for field in totals:
            value = getattr(row, field)
            if value is not None:
                totals[field] = (totals[field] or 0) + value
    merged = merge_buckets(deltas)
    total = Row("TOTAL", "", totals["connections"], totals["in_rate"], totals["msg_rate"],
                histogram_quantile(0.99, merged) if merged else None, totals["err_rate"], "", "")
    if status is None:
        return Frame(at, redis, None, None, None, None, None, nodes_up, rows, total, problem)
    lag: Optional[float] = 0.0   # None: the oldest entry is unreadable
    oldest = status.oldest_in_flight or status.oldest_queued
    if oldest is not None:
        lag = _age(oldest, at)
    return Frame(at, redis, status.queued, status.in_flight, status.dead, lag, status.leader, nodes_up, rows,
                 total, problem)


def _age(entry: str, now: float) -> Optional[float]:
    from imd.messagelog.entry import parse_entry
    try:
        return max(0.0, now - parse_entry(entry).ts / 1000.0)
    except ValueError:
        return None


# --- words -------------------------------------------------------------------

def _number(value: Optional[float], digits: int = 1) -> str:
    if value is None:
        return "-"
    if digits == 0:
        return "%d" % round(value)
    return "%.*f" % (digits, value)


def _latency(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return "%.1f ms" % (seconds * 1000)
    return "%.2f s" % seconds


def _seconds(value: Optional[float]) -> str:
    return "-" if value is None else "%.1f s" % value


COLUMNS = (("NODE", 22, "<"), ("ROLES", 16, "<"), ("CONNS", 8, ">"), ("IN/S", 9, ">"), ("MSG/S", 9, ">"),
           ("ACK p99", 9, ">"), ("ERR/S", 7, ">"), ("METRICS", 0, "<"))


def _cells(row: Row) -> Tuple[str, ...]:
    where = row.state or row.url
    return (row.node, row.roles, _number(row.connections, 0), _number(row.in_rate), _number(row.msg_rate),
            _latency(row.ack_p99), _number(row.err_rate), where)


def _line(cells: Sequence[str]) -> str:
    parts = []
    for (title, width, align), cell in zip(COLUMNS, cells):
        parts.append(cell if not width else ("%-*s" if align == "<" else "%*s") % (width, cell[:width]))
    return "  ".join(parts).rstrip()


def queue_line(frame: Frame) -> str:
    if frame.queued is None:
        return "redis: %s" % (frame.problem or "no answer")
    leader = "leader %s" % frame.leader if frame.leader else "NO MIGRATOR LEADS"
    return "MQ %d   in flight %d   dead %d   migrator lag %s   %s   ws nodes up %s" % (
        frame.queued, frame.in_flight, frame.dead, _seconds(frame.lag), leader, _number(frame.nodes_up, 0))


def screen_lines(frame: Frame, interval: float) -> List[Tuple[str, Optional[str]]]:
    """``[(text, emphasis)]`` for the terminal; emphasis is None, "title" or "header"."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(frame.at))
    lines = [("imd top   redis %s   %s   (every %g s, rates over %g s; q quits)"
              % (frame.redis, stamp, interval, WINDOW), "title"),
             (queue_line(frame), None), ("", None),
             (_line([title for title, _, _ in COLUMNS]), "header")]
    lines += [(_line(_cells(row)), None) for row in frame.rows]
    if not frame.rows:
        lines.append(("(no imd process registered in redis)", None))
    lines.append((_line(_cells(frame.total)), "header"))
    return lines


def plain_line(frame: Frame) -> str:
    """One line per refresh, for a pipe or a log file."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(frame.at))
    total = frame.total
    head = "%s processes=%d conns=%s in/s=%s msg/s=%s ack_p99=%s err/s=%s" % (
        stamp, len(frame.rows), _number(total.connections, 0), _number(total.in_rate), _number(total.msg_rate),
        _latency(total.ack_p99).replace(" ", ""), _number(total.err_rate))
    if frame.queued is None:
        return head + " redis=unavailable"
    return head + " mq=%d in_flight=%d dead=%d lag=%s nodes_up=%s" % (
        frame.queued, frame.in_flight, frame.dead, _seconds(frame.lag).replace(" ", ""),
        _number(frame.nodes_up, 0))
