"""The sealedos wire protocol: every message kind, field and error code, declared once.

Every component (kernel, pager, disk, the sealed-process runtime, the CLI) imports this
module and nothing else to speak to the others.  It is the system's ABI, the way a kernel's
uapi headers are: the kernel owns it, user space includes it.

Framing
-------
One ZeroMQ frame carries one message: a msgpack map with short string keys.

* A **request** has ``op`` (an :class:`Op`) and ``rid`` (an int chosen by the sender,
  unique among its outstanding requests), plus the op's fields (see :data:`REQUEST_FIELDS`).
* A **reply** has ``re`` (the rid it answers) and either result fields, or ``err`` (an
  :class:`Err` code) and ``msg`` (a human-readable sentence).

A message with ``re`` is a reply, anything else is a request.  Requests may flow in both
directions over one connection (the kernel asks a process to shoot down a TLB entry over
the process's control connection, the process asks the kernel for a page over its call
connection), so the server skeleton (:mod:`wire.server`) handles both.
"""
from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Any, Final

import msgpack

PAGE_SIZE: Final[int] = 4096
PAGE_SHIFT: Final[int] = 12
BLOCK_SIZE: Final[int] = PAGE_SIZE

#: A frame larger than this is refused before it is decoded (EMSGSIZE).
MAX_FRAME_BYTES: Final[int] = 1 << 20
#: Default cap on one IPC message's payload (configurable on the kernel).
IPC_MAX_PAYLOAD_BYTES: Final[int] = 64 * 1024
#: Most bytes init may STASH for its successor.
STASH_MAX_BYTES: Final[int] = 256 * 1024
#: Hard transport guard (ZMQ_MAXMSGSIZE): a peer sending more is disconnected by libzmq.
TRANSPORT_MAX_BYTES: Final[int] = 16 << 20


class Op(StrEnum):
    """Every request kind on every connection."""
    # -- sealed process -> kernel (call connection) ---------------------------------
    REGISTER = "register"          # bind this connection to the process a credential admits
    MAP = "map"                    # create a region
    UNMAP = "unmap"                # remove a region
    PROTECT = "protect"            # change a region's permissions
    FAULT = "fault"                # TLB miss: give me this page
    REPORT = "report"              # app-level results (checksum verdict, progress)
    EXIT = "exit"                  # orderly exit
    # IPC (issue: synchronous IPC)
    ENDPOINT = "endpoint"          # create an endpoint with a contract -> handle
    CALL = "call"                  # send and block until the reply
    RECEIVE = "receive"            # block until a call arrives on an endpoint
    REPLY = "reply"                # answer a received call
    CAP_CLOSE = "cap_close"        # drop a capability handle
    STASH = "stash"                # init only: what its successor inherits (its name table)
    # -- sealed process -> kernel (control connection) --------------------------------
    ATTACH = "attach"              # bind the control connection (needs the secret)
    HEARTBEAT = "heartbeat"        # liveness + harvested reference bits
    # -- kernel -> sealed process (control connection) --------------------------------
    SHOOTDOWN = "shootdown"        # drop a TLB entry, hand back the page if asked
    KILL = "kill"                  # stop now, with a reason
    # -- launcher -> kernel --------------------------------------------------------------
    ADMIT = "admit"                # admit one process about to start: -> one-time credential
    PAGER_INSTANCE = "pager_instance"  # the host process it started for a pager slot
    # -- pager -> kernel --------------------------------------------------------------
    PAGER_HELLO = "pager_hello"    # a pager instance (re)joins a mirror slot
    # -- kernel -> pager, and pager -> disk -------------------------------------------
    OPEN = "open"                  # create the kernel-minted handle (idempotent) -> {created?}
    CLOSE = "close"                # close a handle, freeing its blocks
    WRITE = "write"                # (handle, slot, data)
    READ = "read"                  # (handle, slot) -> data
    FREE = "free"                  # (handle, slots) release blocks
    PAGE_OUT = "page_out"          # kernel -> pager: write a (sealed) page
    PAGE_IN = "page_in"            # kernel -> pager: read a (sealed) page
    # -- anyone -> any service ---------------------------------------------------------
    PING = "ping"
    STATS = "stats"                # counters as one map
    PS = "ps"                      # kernel: per-process table
    FAULT_LOG = "fault_log"        # kernel: recent faults since a cursor (faultlog.py)


class Err(StrEnum):
    """Every error code a reply may carry."""
    BADMSG = "EBADMSG"             # not msgpack, not a map, or no op
    MSGSIZE = "EMSGSIZE"           # frame or payload too large
    NOSYS = "ENOSYS"               # unknown op
    INVAL = "EINVAL"               # wrong type or value of a field
    PERM = "EPERM"                 # the caller may not do this
    NOTREG = "ENOTREG"             # the connection never registered
    SEGV = "ESEGV"                 # address outside every region
    PROT = "EPROT"                 # access forbidden by the page's permissions
    NOMEM = "ENOMEM"               # no frames / no blocks / no space
    NOSPC = "ENOSPC"               # device full
    BADHANDLE = "EBADHANDLE"       # forged, stale or foreign handle
    NOENT = "ENOENT"               # no such block / slot / name
    INTEGRITY = "EINTEGRITY"       # a page failed verification: page integrity lost
    TIMEDOUT = "ETIMEDOUT"         # a service did not answer in time
    PEERDIED = "EPEERDIED"         # the other end of a call is gone
    CONTRACT = "ECONTRACT"         # an IPC message broke its channel's contract
    KILLED = "EKILLED"             # the process was stopped by the kernel
    BUSY = "EBUSY"
    IO = "EIO"                     # the device failed
    QUOTA = "EQUOTA"               # over the process's quota; the message names the resource


# Permissions, as a bit set.  W^X: no region or page may have W and X together.
PROT_R: Final[int] = 1
PROT_W: Final[int] = 2
PROT_X: Final[int] = 4

# Access kinds of a fault.
ACCESS_READ: Final[str] = "r"
ACCESS_WRITE: Final[str] = "w"
ACCESS_EXEC: Final[str] = "x"
ACCESS_PROT: Final[dict[str, int]] = {"r": PROT_R, "w": PROT_W, "x": PROT_X}

# How a FAULT reply tells the runtime to fill the frame in its bank.
FILL_ZERO: Final[str] = "zero"     # demand-zero: clear the frame
FILL_DATA: Final[str] = "data"     # copy the reply's data into the frame
FILL_KEEP: Final[str] = "keep"     # the bank still holds the page (TLB refill only)

# Hostile pager modes (issue: the untrusted pager).
HOSTILE_MODES: Final[tuple[str, ...]] = (
    "snoop", "flip", "swap", "replay", "zero", "drop", "stall", "garbage")

Fields = dict[str, type | tuple[type, ...]]
_INT = int
_BYTES = (bytes,)
_OPT_BYTES = (bytes, type(None))

#: The fields each request must carry, with their types (checked by the server skeleton
#: before any handler runs; a handler checks ranges).  Optional fields: OPTIONAL_FIELDS.
REQUEST_FIELDS: Final[dict[Op, Fields]] = {
    Op.REGISTER: {},
    Op.ADMIT: {"name": str, "program": str, "digest": str, "role": str, "manifest": list,
               "provides": list, "quota": dict, "hostpid": int, "started": float},
    Op.MAP: {"npages": int, "prot": int},
    Op.UNMAP: {"addr": int, "npages": int},
    Op.PROTECT: {"addr": int, "npages": int, "prot": int},
    Op.FAULT: {"vpn": int, "access": str, "refs": list},
    Op.REPORT: {"data": dict},
    Op.EXIT: {"status": int},
    Op.ENDPOINT: {"contract": dict},
    Op.CALL: {"handle": int, "msg": bytes},
    Op.RECEIVE: {"handle": int},
    Op.REPLY: {"call": int, "msg": bytes},
    Op.CAP_CLOSE: {"handle": int},
    Op.STASH: {"data": bytes},
    Op.ATTACH: {"spid": int, "secret": bytes},
    Op.HEARTBEAT: {"refs": list},
    Op.SHOOTDOWN: {"vpn": int, "frame": int, "want": bool},
    Op.KILL: {"reason": str},
    Op.PAGER_INSTANCE: {"mirror": int, "hostpid": int, "started": float},
    Op.PAGER_HELLO: {"mirror": int, "host": str, "hostpid": int},
    Op.OPEN: {"handle": bytes, "label": str},
    Op.CLOSE: {"handle": bytes},
    Op.WRITE: {"handle": bytes, "slot": int, "data": bytes},
    Op.READ: {"handle": bytes, "slot": int},
    Op.FREE: {"handle": bytes, "slots": list},
    Op.PAGE_OUT: {"handle": bytes, "slot": int, "data": bytes},
    Op.PAGE_IN: {"handle": bytes, "slot": int},
    Op.PING: {},
    Op.STATS: {},
    Op.PS: {},
    Op.FAULT_LOG: {"cursor": int},
}

#: Fields a request may carry, with their types when present (checked like REQUEST_FIELDS).
#:
#: * REGISTER ``cred``: the one-time credential the launcher handed the process (on an
#:   insecure transport; on CURVE the connection's authenticated key is the credential).
#:   The process's name, program, digest, manifest, provides, quota and role come from the
#:   ADMIT the launcher sent for that credential, never from the process.  Reply: ``spid``,
#:   ``secret`` (for ATTACH), ``name``, ``role``, ``nframes``, ``page_size``; for init also
#:   ``stash``: what the previous init STASHed (its capabilities keep their handles).
#: * STASH (init only) ``data``: at most STASH_MAX_BYTES the next init receives if this one
#:   dies (init's name table: a restarted init gets its registered names back).
#: * ADMIT (launcher only; ``cred``: the launcher's own secret on an insecure transport):
#:   ``name``, ``program`` and ``digest`` (sha256 of the code the launcher starts),
#:   ``role`` ("app" or "init"), ``manifest`` (names it may look up), ``provides`` (names it
#:   may register), ``quota`` (resource -> limit), ``hostpid`` and ``started`` (the host
#:   process and its start time, when it runs on the kernel's host; else 0 and 0.0);
#:   ``host``: the launcher's host name (shown; never acted on).
#:   Reply: ``cred`` (32 bytes), valid for one REGISTER within ADMIT_TTL_MS.
#: * ENDPOINT ``nameservice``: (init only) this endpoint is handle 0 of every process.
#:   Reply: ``handle``.
#: * CALL ``caps``: handles whose capabilities the receiver gets; ``grant``: ``{addr,
#:   npages}``, pages moved into the receiver (page flip).  ``msg`` is the msgpack map of
#:   the message, checked against the endpoint's contract.  Reply (when the server
#:   answers): ``msg``, ``caps`` (new handles in the caller's table).
#: * RECEIVE reply: ``call`` (the id to REPLY to), ``msg``, ``sender`` (``spid``, ``name``,
#:   ``program``, ``digest``, ``manifest``: stamped by the kernel), ``caps`` (new handles),
#:   and with a grant ``grant_addr``, ``grant_npages``.
#: * REPLY ``caps``; ``receive``: a handle to RECEIVE on right after (reply-and-wait: the
#:   REPLY's own reply is then the next call, as for RECEIVE).
#: * FAULT reply: ``vpn``, ``frame``, ``prot``, ``fill`` (FILL_*), ``data`` (FILL_DATA);
#:   ``around``: [vpn, frame, prot, data] per prefetched page installed beside it
#:   (fault-around, kernel_daemon/vm.py), each filled from data, clean.
#: * SHOOTDOWN ``more``: [vpn, frame, want] per further page of the same process taken back
#:   in the same message.  Reply: ``dirty``, ``data`` (bytes or None) for the first page;
#:   ``more``: one {``dirty``, ``data``} per entry of the request's ``more``, in order.
#: * PAGE_OUT ``more``: [handle, slot, data] per further page written in the same request
#:   (a clustered page-out; each page sealed on its own).  Reply: the first page's answer
#:   ({} or an error) and ``more``: one {``slot``} or {``slot``, ``err``, ``msg``} per entry
#:   of the request's ``more``, in order; an error reply without ``more`` is every page's.
#: * FAULT_LOG (kernel) reply: ``records`` ([t_s, kind, latency_us, spid] per served fault,
#:   oldest first), ``cursor`` (ask with it next time), ``dropped`` (records gone from the
#:   ring before they were asked for), ``now`` (the kernel's monotonic clock).
#: * PS ``processes``: False asks for the pager slots alone (the supervisor's watchdog, twice
#:   a second: with hundreds of processes their records are most of the reply's cost).
OPTIONAL_FIELDS: Final[dict[Op, Fields]] = {
    Op.REGISTER: {"cred": bytes},
    Op.ADMIT: {"cred": bytes, "host": str},
    Op.OPEN: {"block_size": int},
    Op.PAGER_INSTANCE: {"cred": bytes},
    Op.ENDPOINT: {"nameservice": bool},
    Op.CALL: {"caps": list, "grant": dict},
    Op.REPLY: {"caps": list, "receive": int},
    Op.PS: {"processes": bool},
    Op.SHOOTDOWN: {"more": list},
    Op.PAGE_OUT: {"more": list},
}


class ServiceError(Exception):
    """A caller's mistake or a refused request: carries the error code and sentence to reply.

    Handlers raise it, the server skeleton turns it into an error reply; clients raise it
    when a reply carries ``err``."""

    def __init__(self, code: Err, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


_unpackb = msgpack.unpackb


def encode(msg: dict[str, Any]) -> bytes:
    """Pack one message into one frame."""
    frame: bytes = msgpack.packb(msg, use_bin_type=True)
    return frame


def encoder() -> Callable[[Any], bytes]:
    """An encode for one thread: the same frames, from a packer whose buffer is kept between
    messages (packb makes and frees a packer per call, over a microsecond of a server's
    per-message work); it packs any value, as the parts of a frame a server builds itself
    (kernel_daemon/ipc.py).  Not thread-safe: one per server loop."""
    pack: Callable[[Any], bytes] = msgpack.Packer(use_bin_type=True).pack
    return pack


def decode(frame: bytes, limit: int = MAX_FRAME_BYTES) -> dict[str, Any]:
    """Unpack one frame into a message map; raise ServiceError on any malformation."""
    if len(frame) > limit:
        raise ServiceError(Err.MSGSIZE,
                           f"message of {len(frame)} bytes exceeds the {limit}-byte limit")
    try:
        msg = _unpackb(frame)      # msgpack >= 1.0's defaults: raw=False, strict_map_key=True
    except Exception as exc:  # msgpack raises several unrelated types
        raise ServiceError(Err.BADMSG, f"not a msgpack message: {type(exc).__name__}") from None
    if not isinstance(msg, dict):
        raise ServiceError(Err.BADMSG, f"a message must be a map, got {type(msg).__name__}")
    return msg


# The same tables, precomputed for the hot path (every request of every service).
_OPS: Final[dict[str, Op]] = {op.value: op for op in Op}
_ERRS: Final[dict[str, Err]] = {err.value: err for err in Err}
_REQUIRED: Final[dict[Op, tuple[tuple[str, Any], ...]]] = {
    op: tuple(f.items()) for op, f in REQUEST_FIELDS.items()}
_OPTIONAL: Final[dict[Op, tuple[tuple[str, Any], ...]]] = {
    op: tuple(f.items()) for op, f in OPTIONAL_FIELDS.items()}
#: How many keys a request of each op has with no optional field (op, rid, the required).
_BARE_KEYS: Final[dict[Op, int]] = {op: 2 + len(f) for op, f in REQUEST_FIELDS.items()}


def _is_a(value: Any, typ: Any) -> bool:
    """isinstance, except that a bool is not an int."""
    return isinstance(value, typ) and not (typ is int and isinstance(value, bool))


def check_request(msg: dict[str, Any]) -> Op:
    """Return the request's op after checking its rid and field types; raise ServiceError.

    (An exact class match is the fast path; msgpack only ever makes exact ints, strs ...)"""
    rid = msg.get("rid")
    if rid.__class__ is not int and not _is_a(rid, int):
        raise ServiceError(Err.BADMSG, "a request needs an integer 'rid'")
    raw = msg.get("op")
    if not isinstance(raw, str):
        raise ServiceError(Err.BADMSG, "a request needs a string 'op'")
    op = _OPS.get(raw)
    if op is None:
        raise ServiceError(Err.NOSYS, f"unknown operation {raw[:40]!r}")
    for name, typ in _REQUIRED[op]:
        value = msg.get(name)
        if value.__class__ is not typ and not _is_a(value, typ):
            if value is None and name not in msg:
                raise ServiceError(Err.INVAL, f"{op}: missing field {name!r}")
            raise ServiceError(Err.INVAL, f"{op}: field {name!r} has the wrong type "
                                           f"({type(value).__name__})")
    if len(msg) == _BARE_KEYS[op]:    # op, rid and the required fields (all there): no more
        return op
    for name, typ in _OPTIONAL.get(op, ()):
        value = msg.get(name)
        if value is not None and value.__class__ is not typ and not _is_a(value, typ):
            raise ServiceError(Err.INVAL, f"{op}: field {name!r} has the wrong type "
                                           f"({type(value).__name__})")
    return op


def request(op: Op | str, rid: int, /, **fields: Any) -> dict[str, Any]:
    """Request `rid` of kind `op` carrying `fields` (the one place a request is framed)."""
    fields["op"] = str(op)
    fields["rid"] = rid
    return fields


def ok(rid: int | None, **fields: Any) -> dict[str, Any]:
    """A success reply to request `rid`."""
    fields["re"] = rid
    return fields


def error(rid: int | None, code: Err, msg: str, **fields: Any) -> dict[str, Any]:
    """An error reply to request `rid`."""
    fields.update(re=rid, err=str(code), msg=msg)
    return fields


def err_code(raw: object) -> Err | None:
    """The Err an error reply's 'err' names, or None when it names none we know."""
    return _ERRS.get(raw) if isinstance(raw, str) else None
