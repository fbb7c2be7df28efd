"""The external pager: user-space paging mechanism between the kernel and its disk service.

The kernel keeps VM policy (what to evict, when to fetch); the pager only moves pages.
It connects one DEALER to the kernel and one to its disk service, and serves the kernel's
requests by asking the disk, without ever blocking the loop:

    kernel --page_out{handle,slot,data,more?}--> pager --write (per page)--> disk
    kernel --page_in{handle,slot}-------> pager --read---> disk
    open / close / free are forwarded as they are; ping / stats are answered locally.

Every page it sees is sealed by the kernel, so the pager is untrusted and needs no secret.
It holds no state that a restart would lose: pages live on the disk, requests in flight
are retried by the kernel.  It pings its disk service every DISK_PING_MS; when the answer
comes from a new instance (another pid: the old one died and was restarted), every disk
request sent before that ping and still unanswered went to the dead instance and never
will be answered -- the disk serves one connection in order, so anything the new instance
received before the ping was answered before it.  Those requests fail at once with EIO
(transient: the kernel asks again) instead of waiting out the disk timeout.  It announces
itself with PAGER_HELLO (admission + heartbeat) every HELLO_INTERVAL_MS.

An honest pager answers a page-in itself ({data, disk_us, pager_us}).  Only ``--hostile
MODE`` builds a behaviour (see :mod:`pager_service.hostile`) that sees page-outs and
answers page-ins in its place.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeGuard

import zmq

from pager_service.hostile import (
    BATCH_ATTACKS,
    HONEST,
    HostileCounts,
    HostileOptions,
    PageRead,
    make_behaviour,
)
from pager_service.loop import PollingServer
from wire import host
from wire import keys as wkeys
from wire.protocol import HOSTILE_MODES, PAGE_SIZE, Err, Op, ServiceError, err_code
from wire.server import SUSPEND, Answer, Handler, Request
from wire.transport import Clock, Transport

#: How often the pager (re)announces itself to the kernel.
HELLO_INTERVAL_MS: float = 500.0
#: How soon to look again when the kernel is not connected yet (nothing is sent meanwhile).
HELLO_RETRY_MS: float = 50.0
#: Default wait for the disk service's answer before replying ETIMEDOUT.  Kept well below
#: the kernel's pager timeout (2000 ms by default): a dead disk must reach the kernel as a
#: transient error from a live pager, which it retries, not as silence, for which it would
#: kill this (healthy) pager as hung.
DISK_TIMEOUT_MS: float = 1000.0
#: How often the pager pings its disk service (to notice a restarted instance at once).
DISK_PING_MS: float = 200.0
#: Default delay of the `stall` hostile mode.
STALL_MS: float = 10000.0
#: Size of a disk handle (an opaque capability minted by the disk service).
HANDLE_BYTES: int = 16
#: Longest label forwarded to the disk on open.
MAX_LABEL_CHARS: int = 256
#: Most slots one free request may name.
MAX_FREE_SLOTS: int = 1 << 16
#: Most pages one page-out request may carry (the kernel sends at most its --cluster, <= 64;
#: 128 pages stay well inside a frame's MAX_FRAME_BYTES).
MAX_CLUSTER_PAGES: int = 128

DiskDone = Callable[[dict[str, Any]], None]
DiskFailed = Callable[[Err, str], None]


@dataclass(slots=True)
class PagerConfig:
    """Everything main() parses: where to connect, which mirror slot, which behaviour."""
    kernel_addr: str
    disk_addr: str
    mirror: int = 0
    hostile: str = HONEST
    stall_ms: float = STALL_MS
    disk_timeout_ms: float = DISK_TIMEOUT_MS
    snoop_path: Path | None = None
    #: With --hostile: how to falsify answers to clustered page-outs (hostile.BATCH_ATTACKS).
    batch_attack: str | None = None
    #: Keys directory (this pager's secret, the kernel's and its disk's publics); None with
    #: insecure=True only.
    keys_dir: str | None = None
    insecure: bool = False


@dataclass(slots=True)
class PagerCounters:
    """What the pager did since it started (reported by stats)."""
    page_ins: int = 0
    page_outs: int = 0
    page_out_requests: int = 0
    opens: int = 0
    closes: int = 0
    frees: int = 0
    disk_errors: int = 0
    disk_timeouts: int = 0
    disk_restarts_seen: int = 0
    disk_requests_lost: int = 0
    hellos_sent: int = 0
    hellos_answered: int = 0


@dataclass(slots=True)
class PagerStatus:
    """Who the pager is and how it stands: the first fields of its stats reply (the
    counters of PagerCounters and of the hostile behaviour, if any, follow)."""
    mirror: int
    hostile: str
    admitted: bool
    in_flight: int
    bad_messages: int
    uptime_ms: int


# -- field checks (ranges; the skeleton already checked the types) ----------------------
def check_handle(msg: dict[str, Any]) -> bytes:
    """The request's handle; ServiceError(EINVAL) unless it is HANDLE_BYTES long."""
    handle: bytes = msg["handle"]
    if len(handle) != HANDLE_BYTES:
        raise ServiceError(Err.INVAL, f"a handle is {HANDLE_BYTES} bytes, got {len(handle)}")
    return handle


def check_slot(value: Any) -> int:
    """A slot number; ServiceError(EINVAL) unless it is a non-negative int."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ServiceError(Err.INVAL, f"a slot is a non-negative integer, got {value!r:.40}")
    return value


def check_page(msg: dict[str, Any]) -> bytes:
    """The request's page data: a page, or a smaller record (an erasure-code fragment; the
    disk checks it is its handle's block size); ServiceError(EINVAL) unless 1..PAGE_SIZE bytes."""
    data: bytes = msg["data"]
    if not is_record(data):
        raise ServiceError(Err.INVAL, f"a page is at most {PAGE_SIZE} bytes, got {len(data)}")
    return data


def check_more(more: Any) -> list[tuple[bytes, int, bytes]]:
    """A page-out's further pages ([handle, slot, data] each); ServiceError(EINVAL) if there
    are too many or any is malformed."""
    if more is None:
        return []
    if len(more) >= MAX_CLUSTER_PAGES:
        raise ServiceError(Err.INVAL, f"at most {MAX_CLUSTER_PAGES} pages per page-out")
    pages = []
    for entry in more:
        if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], bytes)):
            raise ServiceError(Err.INVAL, "a page-out's `more` holds [handle, slot, data] each")
        pages.append((check_handle({"handle": entry[0]}), check_slot(entry[1]),
                      check_page({"data": entry[2]})))
    return pages


def is_record(data: object) -> TypeGuard[bytes]:
    """Is `data` something a disk slot can hold: 1..PAGE_SIZE bytes?"""
    return isinstance(data, bytes) and 0 < len(data) <= PAGE_SIZE


def check_slots(msg: dict[str, Any]) -> list[int]:
    """The request's slot list; ServiceError(EINVAL) if too long or any slot is bad."""
    slots = msg["slots"]
    if len(slots) > MAX_FREE_SLOTS:
        raise ServiceError(Err.INVAL, f"at most {MAX_FREE_SLOTS} slots per free, got {len(slots)}")
    return [check_slot(s) for s in slots]


def disk_error(reply: dict[str, Any]) -> tuple[Err, str]:
    """The (code, message) of a disk error reply; an unknown code becomes EIO."""
    raw, msg = reply.get("err"), reply.get("msg")
    code = err_code(raw) or Err.IO
    return code, msg if isinstance(msg, str) else f"disk error {raw!r:.40}"


class Pager(PollingServer):
    """The external pager: serves the kernel's paging requests through the disk service."""

    def __init__(self, config: PagerConfig, ctx: zmq.Context[zmq.Socket[bytes]] | None = None,
                 transport: Transport | None = None, clock: Clock | None = None) -> None:
        me = f"pager{config.mirror}"
        keys = wkeys.keyring(config.keys_dir, me, config.insecure,
                             ["kernel", f"disk{config.mirror}"])
        super().__init__(me, ctx or (_immediate_context() if transport is None else None), keys,
                         transport=transport, clock=clock)
        self.config = config
        self.counters = PagerCounters()
        self.started = self.now()
        # CURVE: the kernel and the disk must prove their keys; both admit this pager by its key
        self.kernel = self.connect_dealer(config.kernel_addr, keys.publics.get("kernel"))
        self.disk = self.connect_dealer(config.disk_addr, keys.publics.get(f"disk{config.mirror}"))
        self.hostile = make_behaviour(config.hostile, self, HostileOptions(
            snoop_path=config.snoop_path, stall_ms=config.stall_ms,
            batch_attack=config.batch_attack))
        self.admitted = False
        self.disk_inflight: dict[int, DiskFailed] = {}   # rid -> its failure callback
        self.disk_pid: int | None = None                 # the disk instance last heard

    # -- admission / heartbeat -----------------------------------------------------------
    def on_start(self) -> None:
        """Say hello now, and every HELLO_INTERVAL_MS after; ping the disk likewise."""
        self.say_hello()
        self.ping_disk()

    def on_stop(self) -> None:
        """Release the hostile behaviour's resources (the snoop file)."""
        if self.hostile is not None:
            self.hostile.close()

    def say_hello(self) -> None:
        """Send one PAGER_HELLO to the kernel and schedule the next (sooner if not connected)."""
        if not self.kernel.poll(0, zmq.POLLOUT):     # no kernel connection yet: look again soon
            self.admitted = False
            self.call_later(HELLO_RETRY_MS, self.say_hello)
            return
        self.counters.hellos_sent += 1
        self.request(self.kernel, None, Op.PAGER_HELLO,
                     {"mirror": self.config.mirror, "host": self.transport.hostname(),
                      "hostpid": self.pid},
                     self._on_hello_reply, HELLO_INTERVAL_MS)
        self.call_later(HELLO_INTERVAL_MS, self.say_hello)

    def _on_hello_reply(self, rid: int, reply: dict[str, Any] | None) -> None:
        """Note the kernel's answer to a hello (None: no answer yet, keep sending)."""
        if reply is None:
            return
        if "err" in reply:
            self.log.warning("%s: kernel refused hello: %s %s", self.name,
                             reply.get("err"), reply.get("msg"))
            self.admitted = False
            return
        self.counters.hellos_answered += 1
        if not self.admitted:
            self.log.info("%s: admitted by the kernel", self.name)
        self.admitted = True

    # -- caller check --------------------------------------------------------------------
    def check_caller(self, req: Request) -> None:
        """Only the kernel connection may send requests (the disk only answers)."""
        if req.sock is not self.kernel:
            raise ServiceError(Err.PERM, f"{self.name} takes requests from the kernel only")
        req.caller = "kernel"

    # -- talking to the disk -------------------------------------------------------------
    def ping_disk(self) -> None:
        """Ping the disk service now and every DISK_PING_MS (see the module docstring)."""
        self.request(self.disk, None, Op.PING, {}, self._on_disk_ping, DISK_PING_MS)
        self.call_later(DISK_PING_MS, self.ping_disk)

    def _on_disk_ping(self, ping_rid: int, reply: dict[str, Any] | None) -> None:
        """A ping answered by a new disk instance: fail what the dead one was sent."""
        pid = reply.get("pid") if reply is not None and "err" not in reply else None
        if not isinstance(pid, int):
            return
        if self.disk_pid is not None and pid != self.disk_pid:
            self.counters.disk_restarts_seen += 1
            lost = [rid for rid in self.disk_inflight if rid < ping_rid]
            for rid in lost:
                failed = self.disk_inflight.pop(rid)
                self.forget(rid)
                self.counters.disk_requests_lost += 1
                failed(Err.IO, "the disk service restarted before answering; ask again")
        self.disk_pid = pid

    def to_disk(self, op: Op, fields: dict[str, Any], done: DiskDone, failed: DiskFailed) -> None:
        """Send one request to the disk; done(reply) on success, failed(code, msg) otherwise."""
        def on_reply(rid: int, reply: dict[str, Any] | None) -> None:
            self.disk_inflight.pop(rid, None)
            if reply is None:
                self.counters.disk_timeouts += 1
                failed(Err.TIMEDOUT, f"disk did not answer {op} within "
                                     f"{self.config.disk_timeout_ms:g} ms")
            elif "err" in reply:
                self.counters.disk_errors += 1
                failed(*disk_error(reply))
            else:
                done(reply)
        rid = self.request(self.disk, None, op, fields, on_reply, self.config.disk_timeout_ms)
        self.disk_inflight[rid] = failed

    def forward(self, req: Request, op: Op, fields: dict[str, Any]) -> Answer:
        """Forward `req` to the disk as `op`; reply its success fields or its error. SUSPEND."""
        def done(reply: dict[str, Any]) -> None:
            self.reply(req, **{k: v for k, v in reply.items() if k != "re"})
        self.to_disk(op, fields, done, lambda code, msg: self.fail(req, code, msg))
        return SUSPEND

    # -- answering page-ins; with call_later and fail, the PagerPort of hostile behaviours --
    def reply_page(self, page: PageRead, data: object) -> None:
        """Answer `page` with {data} (a hostile mode may pass anything), plus disk_us (the
        disk read's time) and pager_us (time since the request arrived) once the disk answered."""
        if page.disk_us is None:
            self.reply(page.req, data=data)
        else:
            self.reply(page.req, data=data, disk_us=page.disk_us,
                       pager_us=round((self.now() - page.t_recv) * 1e6, 1))

    def answer(self, req: Request, fields: dict[str, Any]) -> None:
        """Answer `req` with the reply map `fields` as it is (a hostile mode may send any)."""
        self.send(req.sock, req.peer, dict(fields, re=req.rid))

    def send_raw(self, req: Request, frame: bytes) -> None:
        """Send `frame` unencoded on the connection `req` came from."""
        self.transport.send(req.sock, req.peer, frame)

    def read_page(self, handle: bytes, slot: int,
                  callback: Callable[[bytes | None], None]) -> None:
        """Read (handle, slot) from the disk; callback(data) or callback(None) on failure."""
        def done(reply: dict[str, Any]) -> None:
            data = reply.get("data")
            callback(data if is_record(data) else None)
        self.to_disk(Op.READ, {"handle": handle, "slot": slot}, done, lambda _c, _m: callback(None))

    # -- handlers ------------------------------------------------------------------------
    def dispatch_table(self) -> dict[Op, Handler]:
        """Every op the pager serves, and its handler."""
        return {Op.OPEN: self.do_open, Op.CLOSE: self.do_close, Op.FREE: self.do_free,
                Op.PAGE_OUT: self.do_page_out, Op.PAGE_IN: self.do_page_in,
                Op.PING: self.do_ping, Op.STATS: self.do_stats}

    def do_open(self, req: Request) -> Answer:
        """open {handle, label, block_size?} -> {}: create the kernel-minted disk handle (one
        per address space; block_size: bytes per slot, for fragments) on the disk; idempotent."""
        label = req.msg["label"]
        if len(label) > MAX_LABEL_CHARS:
            raise ServiceError(Err.INVAL, f"a label is at most {MAX_LABEL_CHARS} characters")
        self.counters.opens += 1
        fields = {"handle": check_handle(req.msg), "label": label}
        if "block_size" in req.msg:
            fields["block_size"] = req.msg["block_size"]
        return self.forward(req, Op.OPEN, fields)

    def do_close(self, req: Request) -> Answer:
        """close {handle}: the disk frees every block of the handle."""
        self.counters.closes += 1
        return self.forward(req, Op.CLOSE, {"handle": check_handle(req.msg)})

    def do_free(self, req: Request) -> Answer:
        """free {handle, slots}: the disk releases those slots' blocks."""
        fields = {"handle": check_handle(req.msg), "slots": check_slots(req.msg)}
        self.counters.frees += 1
        return self.forward(req, Op.FREE, fields)

    def do_page_out(self, req: Request) -> Answer:
        """page_out {handle, slot, data, more?} -> {} and, with more, `more`: one {slot} or
        {slot, err, msg} per further page (wire/protocol.py): store sealed pages, each on its
        own (always honestly), and answer for each once the disk has answered them all."""
        pages = [(check_handle(req.msg), check_slot(req.msg["slot"]), check_page(req.msg)),
                 *check_more(req.msg.get("more"))]
        answers: dict[int, dict[str, Any]] = {}
        self.counters.page_out_requests += 1

        def one(i: int, answer: dict[str, Any]) -> None:
            answers[i] = answer
            if len(answers) == len(pages):
                self.answer_page_out(req, pages, [answers[j] for j in range(len(pages))])
        for i, (handle, slot, data) in enumerate(pages):
            self.counters.page_outs += 1
            if self.hostile is not None:
                self.hostile.on_page_out(handle, slot, data)
            self.to_disk(Op.WRITE, {"handle": handle, "slot": slot, "data": data},
                         functools.partial(lambda i, _reply: one(i, {}), i),
                         functools.partial(lambda i, code, msg: one(i, {"err": str(code),
                                                                         "msg": msg}), i))
        return SUSPEND

    def answer_page_out(self, req: Request, pages: list[tuple[bytes, int, bytes]],
                        answers: list[dict[str, Any]]) -> None:
        """Answer a page-out: the first page's answer, and with `more`, the others' (a
        hostile behaviour, if configured, answers instead)."""
        fields = dict(answers[0])
        if len(pages) > 1:
            fields["more"] = [dict(a, slot=p[1]) for p, a in zip(pages[1:], answers[1:],
                                                                   strict=True)]
        if self.hostile is None:
            self.answer(req, fields)
        else:
            self.hostile.on_page_out_answer(req, fields)

    def do_page_in(self, req: Request) -> Answer:
        """page_in {handle, slot} -> {data, disk_us, pager_us}: fetch a sealed page (a hostile
        behaviour, if configured, answers instead)."""
        page = PageRead(req, check_handle(req.msg), check_slot(req.msg["slot"]), self.now())
        self.counters.page_ins += 1

        def done(reply: dict[str, Any]) -> None:
            page.disk_us = round((self.now() - page.t_recv) * 1e6, 1)
            data = reply.get("data")
            if not is_record(data):
                self.counters.disk_errors += 1
                self.page_in_failed(page, Err.IO, "disk returned a malformed page")
            elif self.hostile is None:
                self.reply_page(page, data)
            else:
                self.hostile.on_page_in(page, data)
        self.to_disk(Op.READ, {"handle": page.handle, "slot": page.slot}, done,
                     lambda code, msg: self.page_in_failed(page, code, msg))
        return SUSPEND

    def page_in_failed(self, page: PageRead, code: Err, msg: str) -> None:
        """Answer a page-in the disk failed: with the error (or as the hostile mode decides)."""
        if self.hostile is None:
            self.fail(page.req, code, msg)
        else:
            self.hostile.on_page_in_error(page, code, msg)

    def do_ping(self, req: Request) -> dict[str, Any]:
        """ping -> {mirror}: liveness, answered without the disk."""
        return {"mirror": self.config.mirror}

    def do_stats(self, req: Request) -> dict[str, Any]:
        """stats -> status and counters: this pager's and its hostile behaviour's (an honest
        pager reports tampered = 0)."""
        status = PagerStatus(mirror=self.config.mirror, hostile=self.config.hostile,
                             admitted=self.admitted, in_flight=len(self._pending),
                             bad_messages=self.bad_messages,
                             uptime_ms=int((self.now() - self.started) * 1000))
        counts = self.hostile.counts if self.hostile is not None else HostileCounts()
        return {**asdict(status), **asdict(self.counters), **asdict(counts)}


def _immediate_context() -> zmq.Context[zmq.Socket[bytes]]:
    """A context whose sockets queue nothing for absent peers (no stale writes on reconnect)."""
    ctx = zmq.Context()
    ctx.setsockopt(zmq.IMMEDIATE, 1)
    return ctx


# -- command line ------------------------------------------------------------------------
def parse_args(argv: list[str]) -> PagerConfig:
    """Parse `sealedos pager` flags (each with an environment default) into a PagerConfig."""
    env = os.environ
    p = argparse.ArgumentParser(prog="sealedos pager", description="run an external pager")
    p.add_argument("--kernel", default=env.get("SEALEDOS_KERNEL_ADDR"),
                   help="kernel address (env SEALEDOS_KERNEL_ADDR)")
    p.add_argument("--disk", default=env.get("SEALEDOS_DISK_ADDR"),
                   help="disk service address (env SEALEDOS_DISK_ADDR)")
    p.add_argument("--mirror", type=int, default=env.get("SEALEDOS_PAGER_MIRROR", "0"),
                   help="mirror slot served (env SEALEDOS_PAGER_MIRROR, default 0)")
    p.add_argument("--hostile", default=env.get("SEALEDOS_HOSTILE", HONEST),
                   choices=(HONEST, *HOSTILE_MODES),
                   help="misbehave on page-in (env SEALEDOS_HOSTILE)")
    p.add_argument("--batch-attack", default=env.get("SEALEDOS_BATCH_ATTACK"),
                   choices=BATCH_ATTACKS, help="with --hostile: falsify answers to clustered "
                                               "page-outs (env SEALEDOS_BATCH_ATTACK)")
    p.add_argument("--stall-ms", type=float, default=STALL_MS, help="delay of the stall mode")
    p.add_argument("--disk-timeout-ms", type=float, default=DISK_TIMEOUT_MS,
                   help="wait for the disk before answering ETIMEDOUT")
    p.add_argument("--rundir", default=env.get("SEALEDOS_RUNDIR"),
                   help="runtime directory (env SEALEDOS_RUNDIR)")
    p.add_argument("--keys", default=env.get(wkeys.KEYS_ENV),
                   help=f"keys directory (env {wkeys.KEYS_ENV}): pagerN's secret, "
                        "kernel and diskN publics")
    p.add_argument("--insecure", action="store_true", default=wkeys.insecure_from_env(),
                   help="no authentication or encryption "
                        f"(measurement only; env {wkeys.INSECURE_ENV}=1)")
    p.add_argument("--snoop-file", default=None,
                   help="where snoop mode appends pages (default RUNDIR/pager{mirror}-snoop.bin)")
    args = p.parse_args(argv)
    if not args.kernel or not args.disk:
        p.error("--kernel and --disk (or SEALEDOS_KERNEL_ADDR and SEALEDOS_DISK_ADDR) are required")
    if args.mirror < 0:
        p.error("--mirror must be >= 0")
    if args.hostile not in (HONEST, *HOSTILE_MODES):     # an environment default is unchecked
        p.error(f"unknown hostile mode {args.hostile!r}")
    if args.batch_attack not in (None, *BATCH_ATTACKS):
        p.error(f"unknown batch attack {args.batch_attack!r}")
    rundir = Path(args.rundir) if args.rundir else Path(tempfile.gettempdir())
    snoop = Path(args.snoop_file) if args.snoop_file else rundir / f"pager{args.mirror}-snoop.bin"
    return PagerConfig(kernel_addr=args.kernel, disk_addr=args.disk, mirror=args.mirror,
                       hostile=args.hostile, stall_ms=args.stall_ms,
                       disk_timeout_ms=args.disk_timeout_ms, snoop_path=snoop,
                       keys_dir=args.keys, insecure=args.insecure,
                       batch_attack=args.batch_attack)


def main(argv: list[str] | None = None) -> int:
    """`sealedos pager`: serve until SIGTERM or SIGINT; return the exit status."""
    host.make_nondumpable("pager")
    config = parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        pager = Pager(config)
    except wkeys.KeysMissing as exc:
        print(f"pager[{config.mirror}]: {exc}", file=sys.stderr)
        return 2
    print(f"pager[{config.mirror}]: kernel={config.kernel_addr} disk={config.disk_addr} "
          f"hostile={config.hostile}"
          f"{' batch_attack=' + config.batch_attack if config.batch_attack else ''}",
          file=sys.stderr, flush=True)
    try:
        pager.serve_until_signalled()
    finally:
        pager.ctx.destroy(linger=0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
