"""``imd-admin``: the operator's console (keys, tokens, friends, orders, kick,
schema, TLS, the migration queue, the live view, the audit, exports and
retention)."""

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any, Dict, Generator, List, Optional, Sequence, TextIO, Union, cast

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorCore
from twisted.python.failure import Failure

from imd.auth import generate_key_pair, issue_token
from imd.config import ConfigError, load_settings
from imd.errors import AdminError, StoreUnavailable
from imd.protocol import parse_uid

if TYPE_CHECKING:
    from imd.app import App


def _uid(text: str) -> int:
    try:
        return parse_uid(text, "uid")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imd-admin", description="Operate an imd installation.")
    parser.add_argument("--config", default="etc/imd.ini", help="the imd.ini to use (default: %(default)s)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    keys = commands.add_parser("keys", help="the RSA key pair that signs wstokens")
    keys_cmd = keys.add_subparsers(dest="action", metavar="ACTION")
    keys_cmd.required = True
    init = keys_cmd.add_parser("init", help="generate a 2048-bit RSA pair and SET publicKey/privateKey")
    init.add_argument("--force", action="store_true", help="replace a key pair that is already set")
    init.set_defaults(run=keys_init)

    token = commands.add_parser("token", help="wstokens")
    token_cmd = token.add_subparsers(dest="action", metavar="ACTION")
    token_cmd.required = True
    issue = token_cmd.add_parser("issue", help="print a wstoken for UID")
    issue.add_argument("uid", type=_uid)
    issue.set_defaults(run=token_issue)

    friend = commands.add_parser("friend", help="friend sets (URS:<uid>)")
    friend_cmd = friend.add_subparsers(dest="action", metavar="ACTION")
    friend_cmd.required = True
    for name, run, text in (("add", friend_add, "make A and B friends (both directions)"),
                            ("rm", friend_rm, "end the friendship of A and B (both directions)")):
        sub = friend_cmd.add_parser(name, help=text)
        sub.add_argument("a", type=_uid)
        sub.add_argument("b", type=_uid)
        sub.set_defaults(run=run)
    listing = friend_cmd.add_parser("list", help="print A's friends, one per line")
    listing.add_argument("a", type=_uid)
    listing.set_defaults(run=friend_list)

    order = commands.add_parser("order", help="the reference orders table (sql/)")
    order_cmd = order.add_subparsers(dest="action", metavar="ACTION")
    order_cmd.required = True
    create = order_cmd.add_parser("create", help="create (or update) ORDER for CUSTOMER, optionally with its courier")
    create.add_argument("order", type=_uid, metavar="ORDER")
    create.add_argument("customer", type=_uid, metavar="CUSTOMER")
    create.add_argument("--courier", type=_uid, metavar="UID", help="the courier who may take it with T")
    create.set_defaults(run=order_create, needs_mysql=True)
    close = order_cmd.add_parser("close", help="close ORDER: both users get the closed event, and the friendship "
                                               "the order made ends [orders] close_grace seconds later")
    close.add_argument("order", type=_uid, metavar="ORDER")
    close.set_defaults(run=order_close, needs_mysql=True)
    show = order_cmd.add_parser("show", help="ORDER's conversation: its state, its two users, when it closed "
                                             "and when the conversation ends")
    show.add_argument("order", type=_uid, metavar="ORDER")
    show.set_defaults(run=order_show, needs_mysql=True)

    room = commands.add_parser("room", help="rooms: multi-party conversations (contract v3 §9)")
    room_cmd = room.add_subparsers(dest="action", metavar="ACTION")
    room_cmd.required = True
    for name, text in (("create", "create ROOM with these members, or make them its members"),
                       ("add", "add members to ROOM (each gets its joined event)"),
                       ("rm", "remove members from ROOM (each gets its left event, its last from the room)")):
        sub = room_cmd.add_parser(name, help=text)
        sub.add_argument("room", type=_room, metavar="ROOM")
        sub.add_argument("uids", type=_uid, nargs="+" if name != "create" else "*", metavar="UID")
        sub.set_defaults(run=room_members)
    close_room = room_cmd.add_parser("close", help="close ROOM: the closed event; members' sends are refused "
                                                   "[rooms] close_grace seconds later")
    close_room.add_argument("room", type=_room, metavar="ROOM")
    close_room.set_defaults(run=room_close)
    show_room = room_cmd.add_parser("show", help="ROOM's members, meta, last seq, read cursors, close")
    show_room.add_argument("room", type=_room, metavar="ROOM")
    show_room.set_defaults(run=room_show)

    user = commands.add_parser("user", help="a user's data (contract v3 §11)")
    user_cmd = user.add_subparsers(dest="action", metavar="ACTION")
    user_cmd.required = True
    erase = user_cmd.add_parser("erase", help="erase UID: the text of every message it sent (as a recall), its "
                                "friendships, last position and pending push; its connections closed (4003). "
                                "Run it again to finish one cut short")
    erase.add_argument("uid", type=_uid, metavar="UID")
    erase.set_defaults(run=erase_user, needs_mysql=True)

    kick = commands.add_parser("kick", help="close every connection of UID on every node (C + 4003)")
    kick.add_argument("uid", type=_uid, metavar="UID")
    kick.add_argument("--reason", default="kicked by an operator", help="the C packet's msg")
    kick.set_defaults(run=kick_user)

    schema = commands.add_parser("schema", help="the MySQL schema (sql/NNN_*.sql)")
    schema_cmd = schema.add_subparsers(dest="action", metavar="ACTION")
    schema_cmd.required = True
    apply = schema_cmd.add_parser("apply", help="create the database and bring it to the newest version")
    apply.set_defaults(run=schema_apply, needs_redis=False)

    tls = commands.add_parser("tls", help="TLS certificates for tls_listen")
    tls_cmd = tls.add_subparsers(dest="action", metavar="ACTION")
    tls_cmd.required = True
    selfsigned = tls_cmd.add_parser("selfsigned", help="write a self-signed certificate and key (development only)")
    selfsigned.add_argument("--host", action="append", default=[], metavar="NAME",
                            help="a name or IP address clients connect to, beside localhost, 127.0.0.1 and "
                                 "::1 which it always covers (may be given several times)")
    selfsigned.add_argument("--out", default="etc/tls",
                            help="directory for cert.pem and key.pem (default: %(default)s)")
    selfsigned.add_argument("--days", type=int, default=30, help="validity in days (default: %(default)s)")
    selfsigned.add_argument("--force", action="store_true", help="replace existing files")
    # Needs neither the config nor Redis.
    selfsigned.set_defaults(run=tls_selfsigned, offline=True)

    add_mq_commands(commands)
    add_audit_commands(commands)

    top = commands.add_parser("top", help="live view of every node: connections, messages/s, ack p99, MQ, lag")
    top.add_argument("-n", "--iterations", type=_count, default=0, metavar="N",
                     help="stop after N refreshes (default: until q or Ctrl-C)")
    top.add_argument("--interval", type=_seconds, default=1.0, metavar="SECONDS",
                     help="seconds between refreshes (default: %(default)s)")
    top.set_defaults(run=run_top)
    return parser


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError("expected a whole number, 0 or more, got %r" % text)
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0
    if not 0.1 <= value <= 3600:
        raise argparse.ArgumentTypeError("expected seconds between 0.1 and 3600, got %r" % text)
    return value


def add_mq_commands(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    from imd.admin import mq as admin_mq
    mq = commands.add_parser("mq", help="the migration queue: MQ, MQ:processing, MQ:dead")
    mq_cmd = mq.add_subparsers(dest="action", metavar="ACTION")
    mq_cmd.required = True
    status = mq_cmd.add_parser("status", help="entries queued, in flight and dead; the oldest's age; the leader")
    status.set_defaults(run=admin_mq.mq_status)
    dead = mq_cmd.add_parser("dead", help="entries the migrator could not store (MQ:dead)")
    dead_cmd = dead.add_subparsers(dest="dead_action", metavar="ACTION")
    dead_cmd.required = True
    listing = dead_cmd.add_parser("list", help="print them, oldest first")
    listing.add_argument("--limit", type=_count, default=20, metavar="N", help="at most N (default: %(default)s)")
    listing.add_argument("--full", action="store_true", help="whole entries, however long")
    listing.set_defaults(run=admin_mq.mq_dead_list)
    replay = dead_cmd.add_parser("replay", help="move them back to MQ for the migrator, once each")
    replay.add_argument("--limit", type=_count, default=0, metavar="N", help="only the N oldest (default: all)")
    replay.set_defaults(run=admin_mq.mq_dead_replay)
    drop = dead_cmd.add_parser("drop", help="delete them for good (asks first)")
    drop.add_argument("--limit", type=_count, default=0, metavar="N", help="only the N oldest (default: all)")
    drop.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    drop.set_defaults(run=admin_mq.mq_dead_drop)


def add_audit_commands(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    from imd.admin import export as admin_export, reconcile as admin_reconcile, retention as admin_retention
    when = admin_reconcile.time_argument
    reconcile = commands.add_parser(
        "reconcile", help="audit that every message acked in a window is in MySQL exactly once",
        description="Audit that every message imd acked between --since and --until is in MySQL exactly once "
                    "(or still queued). Exit status 0: all there; %d: messages missing or duplicated; "
                    "1: the audit could not run. TIME: %s." % (admin_reconcile.EXIT_DISCREPANCY,
                                                               _timespec_formats()))
    reconcile.add_argument("--since", type=when, required=True, metavar="TIME", help="start of the window")
    reconcile.add_argument("--until", type=when, metavar="TIME", help="end of the window (default: now)")
    reconcile.add_argument("--show", type=_count, default=20, metavar="N",
                           help="list at most N ids of each kind (default: %(default)s)")
    reconcile.set_defaults(run=admin_reconcile.reconcile, needs_mysql=True)

    export = commands.add_parser(
        "export", help="a conversation with each message's receipt state, as H shows it (stdout)",
        description="Write a conversation to stdout, oldest first, each message with its receipt state, "
                    "including the messages not yet migrated. TIME: %s." % _timespec_formats())
    which = export.add_mutually_exclusive_group(required=True)
    which.add_argument("--order", type=_uid, metavar="ORDER", help="the order's conversation (courier and customer)")
    which.add_argument("--user", type=_uid, metavar="UID", help="every message UID sent or received")
    which.add_argument("--room", type=_room, metavar="ROOM", help="a room's messages, by its seq, as H {room} "
                                                                 "pages them (no receipt state)")
    export.add_argument("--with", dest="with_uid", type=_uid, metavar="UID", help="with --user: only with this user")
    export.add_argument("--since", type=when, metavar="TIME", help="from this time on")
    export.add_argument("--until", type=when, metavar="TIME", help="before this time")
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl",
                        help="jsonl: the packets as H delivers them, one a line; csv: ts, time, from, to, id, type, "
                             "state, msg; with --room: ts, time, room, seq, from, id, type, msg (default: "
                             "%(default)s)")
    export.set_defaults(run=admin_export.export)

    retention = commands.add_parser("retention", help="messages older than a number of days")
    retention_cmd = retention.add_subparsers(dest="action", metavar="ACTION")
    retention_cmd.required = True
    purge = retention_cmd.add_parser("purge", help="delete messages older than DAYS days, and their receipts, "
                                                   "in small batches")
    purge.add_argument("--older-than", type=admin_retention.days_argument, required=True, metavar="DAYS")
    purge.add_argument("--dry-run", action="store_true", help="only count them")
    purge.set_defaults(run=admin_retention.retention_purge, needs_redis=False, needs_mysql=True)


def _timespec_formats() -> str:
    from imd.timespec import FORMATS
    return FORMATS.replace("%", "%%")


def run_top(app: "App", args: argparse.Namespace, out: TextIO) -> defer.Deferred:
    from imd.admin.top import run
    return run(app, args, out)


def tls_selfsigned(args: argparse.Namespace, out: TextIO) -> None:
    from imd.tls import LOOPBACK_NAMES, self_signed
    cert_path = os.path.join(args.out, "cert.pem")
    key_path = os.path.join(args.out, "key.pem")
    for path in (cert_path, key_path):
        if os.path.exists(path) and not args.force:
            raise AdminError("%s exists (use --force to replace it)" % path)
    cert_pem, key_pem = self_signed(args.host, days=args.days)
    names = ", ".join(dict.fromkeys(args.host + list(LOOPBACK_NAMES)))
    os.makedirs(args.out, exist_ok=True)
    # A certificate is public (0644); its key is not (0600), whatever the umask.
    fd = os.open(cert_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(cert_pem)
    os.chmod(cert_path, 0o644)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    os.chmod(key_path, 0o600)
    sys.stderr.write("imd-admin: WARNING: a self-signed certificate is for development only: clients do "
                     "not trust it unless told to. Use a certificate from a real CA in production.\n")
    out.write("tls: wrote %s (mode 0644: a certificate is public) and %s (mode 0600) for %s, valid %d days\n"
              % (cert_path, key_path, names, args.days))
    out.write("tls: e.g. [websocket] tls_listen = ssl:8443:interface=127.0.0.1:privateKey=%s:certKey=%s\n"
              % (key_path.replace(":", "\\:"), cert_path.replace(":", "\\:")))


@defer.inlineCallbacks
def schema_apply(app: "App", args: argparse.Namespace, out: TextIO) -> Generator[defer.Deferred, Any, None]:
    from twisted.internet import threads

    from imd.stores.mysql import apply_schema
    mysql = app.settings.mysql
    before, after = yield threads.deferToThread(apply_schema, mysql)
    if before == after:
        out.write("schema: database %s is at version %d; nothing to do\n" % (mysql.database, after))
    else:
        out.write("schema: database %s upgraded from version %d to %d\n" % (mysql.database, before, after))


@defer.inlineCallbacks
def keys_init(app: "App", args: argparse.Namespace, out: TextIO) -> Generator[defer.Deferred, Any, None]:
    public_pem, private_pem = generate_key_pair()
    stored = yield app.tokens.set_key_pair(public_pem, private_pem, force=args.force)
    if stored:
        out.write("keys: a new RSA key pair is set in Redis\n")
    else:
        out.write("keys: a key pair is already set (use --force to replace it)\n")


@defer.inlineCallbacks
def token_issue(app: "App", args: argparse.Namespace, out: TextIO) -> Generator[defer.Deferred, Any, None]:
    private_pem = yield app.tokens.get_private_key()
    if not private_pem:
        raise AdminError("no privateKey in Redis: run 'imd-admin keys init' first")
    out.write(issue_token(private_pem, args.uid, app.clock.seconds(), app.settings.auth.token_ttl) + "\n")


@defer.inlineCallbacks
def friend_add(app: "App", args: argparse.Namespace, out: TextIO) -> Generator[defer.Deferred, Any, None]:
    if args.a == args.b:
        raise AdminError("a user cannot befriend themselves")
    yield app.friends.add_friends(args.a, args.b)
    out.write("friends: %d <-> %d\n" % (args.a, args.b))


@defer.inlineCallbacks
def friend_rm(app: "App", args: argparse.Namespace, out: TextIO) -> Generator[defer.Deferred, Any, None]:
    yield app.friends.remove_friends(args.a, args.b)
    out.write("no longer friends: %d <-> %d\n" % (args.a, args.b))


@defer.inlineCallbacks
def friend_list(app: "App", args: argparse.Namespace, out: TextIO) -> Generator[defer.Deferred, Any, None]:
    friends = yield app.friends.list_friends(args.a)
    for uid in friends:
        out.write("%d\n" % uid)


@defer.inlineCallbacks
def order_create(app: "App", args: argparse.Namespace, out: TextIO) -> Generator[defer.Deferred, Any, None]:
    from imd.errors import ImdError, Refused
    try:
        # the server API's rules: a taken or closed order keeps its users
        yield app.order_lifecycle.put(args.order, args.customer, args.courier)
    except (ImdError, Refused) as e:
        raise AdminError(e.reason)
    courier = "courier %d" % args.courier if args.courier else "no courier yet"
    out.write("order %d: customer %d, %s\n" % (args.order, args.customer, courier))


def _when(ms: int) -> str:
    """Unix ms as an ISO 8601 UTC time."""
    from datetime import datetime, timezone
    stamp = datetime.fromtimestamp(ms / 1000.0, timezone.utc).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def _from_now(ms: int, now: int) -> str:
    seconds = (ms - now) / 1000.0
    return "in %.0fs" % seconds if seconds >= 0 else "%.0fs ago" % -seconds


@defer.inlineCallbacks
def order_close(app: "App", args: argparse.Namespace, out: TextIO) -> Generator[defer.Deferred, Any, None]:
    from imd.errors import ImdError
    try:
        closed = yield app.order_lifecycle.close(args.order)
    except ImdError as e:
        raise AdminError(e.reason)
    # the closed events for users on other nodes leave before Redis is closed
    yield app.node.flush()
    out.write("order %d closed; the conversation ends at %s (ends_at %d)\n"
              % (args.order, _when(closed["ends_at"]), closed["ends_at"]))


def _room(text: str) -> str:
    from imd.protocol import MAX_ROOM_CHARS, valid_room
    if not valid_room(text):
        raise argparse.ArgumentTypeError("a room id is 1-%d characters of A-Z a-z 0-9 _ . : -, but not . or .."
                                         % MAX_ROOM_CHARS)
    return text


@defer.inlineCallbacks
def room_members(app: "App", args: argparse.Namespace, out: TextIO) -> Generator[defer.Deferred, object, None]:
    from imd.errors import ImdError
    admin = app.room_admin
    try:
        if args.action == "create":
            answer = yield admin.create(args.room, args.uids)
        elif args.action == "add":
            answer = yield admin.change(args.room, args.uids, [])
        else:
            answer = yield admin.change(args.room, [], args.uids)
    except ImdError as e:
        raise AdminError(e.reason)
    # the events for members on other nodes leave before Redis is closed
    yield app.node.flush()
    members = cast(Dict[str, List[int]], answer)["members"]
    out.write("room %s: members %s\n" % (args.room, " ".join(str(m) for m in members) or "(none)"))


@defer.inlineCallbacks
def room_close(app: "App", args: argparse.Namespace, out: TextIO) -> Generator[defer.Deferred, object, None]:
    from imd.errors import ImdError
    try:
        closed = cast(Dict[str, int], (yield app.room_admin.close(args.room)))
    except ImdError as e:
        raise AdminError(e.reason)
    yield app.node.flush()
    out.write("room %s closed; members' sends are refused from %s (ends_at %d)\n"
              % (args.room, _when(closed["ends_at"]), closed["ends_at"]))


@defer.inlineCallbacks
def room_show(app: "App", args: argparse.Namespace, out: TextIO) -> Generator[defer.Deferred, object, None]:
    from imd.errors import ImdError
    try:
        state = cast(Dict[str, object], (yield app.room_admin.show(args.room)))
    except ImdError as e:
        raise AdminError(e.reason)
    now = int(app.clock.seconds() * 1000)
    read = cast(Dict[str, int], state["read"])
    lines = [("members", " ".join(str(m) for m in cast(List[int], state["members"])) or "(none)"),
             ("meta", json.dumps(state["meta"], ensure_ascii=False, sort_keys=True)),
             ("last seq", state["last_seq"]),
             ("read", " ".join("%s:%d" % (uid, seq) for uid, seq in read.items()) or "(none)")]
    closed_at, ends_at = state["closed_at"], state["ends_at"]
    if isinstance(closed_at, int) and isinstance(ends_at, int):
        lines += [("closed", _when(closed_at)), ("sends refused from", "%s (%s)" % (_when(ends_at),
                                                                                  _from_now(ends_at, now)))]
    else:
        lines.append(("closed", "no"))
    out.write("room %s\n" % args.room)
    for name, value in lines:
        out.write("  %-20s %s\n" % (name, value))


_BEFORE = {"no": "no", "friends": "yes (kept after the order)", "order": "yes, through another order"}


@defer.inlineCallbacks
def order_show(app: "App", args: argparse.Namespace, out: TextIO) -> Generator[defer.Deferred, Any, None]:
    record = yield app.orders.record(args.order)
    now = int(app.clock.seconds() * 1000)
    kept = (yield app.mysql.order_conversation(args.order)) if record is None else None
    if record is None and kept is not None:
        # the Redis record expired (30 days after the end): what MySQL kept
        if kept.closed_at is None:
            state = "open (no T for 30 days: the next T or the close restores its record)"
        else:
            state = "closed before any T: no conversation" if kept.taken_at is None else "closed; ended"
        lines = [("state", state), ("courier", kept.courier or "none"), ("customer", kept.customer)]
        if kept.taken_at is not None:
            lines += [("friends before", _BEFORE.get(kept.friends_before or "", kept.friends_before)),
                      ("taken", _when(kept.taken_at))]
        if kept.closed_at is not None:
            lines.append(("closed", _when(kept.closed_at)))
        if kept.taken_at is not None and kept.ends_at is not None:
            lines.append(("conversation ends", _when(kept.ends_at)))
    elif record is None:
        parties = yield app.mysql.order_parties(app.settings.orders, args.order)
        if parties is None:
            raise AdminError("no order %d" % args.order)
        customer, courier = parties
        lines = [("state", "not taken (no T yet)"), ("customer", customer),
                 ("courier", courier if courier else "none yet")]
    else:
        if not record.taken:
            state = "closed before any T: no conversation"
        elif record.closed_at is None:
            state = "open"
        elif record.ended_at is None:
            state = "closed; the conversation ends %s" % _from_now(record.ends_at, now)
        elif record.end == "ended":
            state = "ended: no longer friends"
        else:
            state = "closed; they stay friends (%s)" % record.end
        lines = [("state", state), ("courier", record.courier or "none"), ("customer", record.customer)]
        if record.taken:
            lines += [("friends before", _BEFORE.get(record.before, record.before)),
                      ("taken", _when(record.taken_at))]
        if record.closed_at is not None:
            lines.append(("closed", _when(record.closed_at)))
        if record.taken and record.ends_at is not None:
            lines.append(("conversation ends", _when(record.ends_at)))
        if record.ended_at is not None:
            lines.append(("end ran", _when(record.ended_at)))
    out.write("order %d\n" % args.order)
    for name, value in lines:
        out.write("  %-18s %s\n" % (name + ":", value))


@defer.inlineCallbacks
def kick_user(app: "App", args: argparse.Namespace, out: TextIO) -> Generator[defer.Deferred, Any, None]:
    if not args.reason.strip() or len(args.reason.encode("utf-8")) > 100:
        raise AdminError("--reason must be 1-100 bytes of text")
    nodes = yield app.node.kick(args.uid, args.reason)
    out.write("kick: uid %d, told %d node(s)\n" % (args.uid, int(nodes)))


@defer.inlineCallbacks
def erase_user(app: "App", args: argparse.Namespace, out: TextIO) -> Generator[defer.Deferred, object, None]:
    erased = yield app.eraser.erase(args.uid)
    out.write("erase: uid %d, %s message(s) recalled\n" % (args.uid, erased))


@defer.inlineCallbacks
def run_command(reactor: IReactorCore, app: "App", args: argparse.Namespace,
                out: TextIO) -> Generator[defer.Deferred, Any, Any]:
    """Start what the command needs, run it, stop it again.  Fires with the
    command's result (an int is the exit status: reconcile's findings)."""
    redis = getattr(args, "needs_redis", True)
    mysql = getattr(args, "needs_mysql", False)
    if redis:
        app.redis_client.startService()
    if mysql:
        app.mysql.startService()
    try:
        if redis:
            yield app.redis_client.wait_connected()
        result = yield args.run(app, args, out)
    finally:
        if mysql:
            app.mysql.stopService()
        if redis:
            yield app.redis_client.stopService()
    return result


def main(argv: Optional[Sequence[str]] = None, out: Optional[TextIO] = None) -> Union[int, str]:
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    if getattr(args, "offline", False):
        try:
            args.run(args, out)
        except (AdminError, OSError) as e:
            sys.stderr.write("imd-admin: %s\n" % e)
            return 1
        return 0
    try:
        settings = load_settings(args.config)
    except ConfigError as e:
        sys.stderr.write("imd-admin: config error: %s\n" % e)
        return 2

    status: List[int] = []

    def _run(reactor: IReactorCore) -> defer.Deferred:
        from imd.app import App
        app = App(settings, reactor)
        d = run_command(reactor, app, args, out)

        def finished(result: object) -> None:
            if isinstance(result, int) and not isinstance(result, bool):
                status.append(result)

        def failed(failure: Failure) -> None:
            if failure.check(BrokenPipeError):
                # the reader of stdout went away (| head): no traceback, and
                # none either when Python flushes stdout at exit
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            elif failure.check(AdminError, StoreUnavailable):
                sys.stderr.write("imd-admin: %s\n" % failure.getErrorMessage())
            else:
                sys.stderr.write("imd-admin: unexpected error: %s\n" % failure.getTraceback())
            status.append(1)
        return d.addCallbacks(finished, failed)

    try:
        task.react(_run)
    except SystemExit as e:
        if e.code:
            return e.code
    return status[0] if status else 0


if __name__ == "__main__":
    sys.exit(main())
