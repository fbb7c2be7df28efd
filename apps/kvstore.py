"""kvstore: a key-value server whose table lives in its paged address space, and a client.

    sealedos run kvstore [--slots 1024] [--register kv]                 # server
    sealedos run kvstore --client [--target kv] [--ops 200] [--seed 1]  # client

The table is an open-addressing hash table of ``--slots`` fixed 512-byte slots in one mapped
region, read and written only through the runtime's read/write (so it faults, is evicted,
sealed and paged back like any memory; with few frames most of it lives on the pager)::

    slot = state u8 (0 free, 1 used, 2 deleted) | key length u8 | value length u16 LE
           | key (64 bytes) | value (444 bytes)

Keys hash with blake2b to a home slot; collisions probe linearly; a delete leaves a
tombstone.  The protocol is KV_CONTRACT (put/get/delete/stats); the kernel refuses a key
longer than 64 bytes or a value longer than 444 before this server ever sees it.

The client puts ``--ops`` deterministic pairs, reads every one back, deletes every third and
checks that exactly those are gone, then REPORTs ``checksum: verified`` (or ``failed``).
"""
from __future__ import annotations

import argparse
import hashlib
import struct
import sys
from typing import Any

from apps.runtime import PAGE_SIZE, SealedProcess
from apps.runtime.app import app_parser, run_reporting

SLOT_BYTES: int = 512
KEY_MAX: int = 64
VALUE_MAX: int = SLOT_BYTES - 4 - KEY_MAX
_HDR = struct.Struct("<BBH")
FREE, USED, DELETED = 0, 1, 2

_KEY = {"type": "str", "max_len": KEY_MAX}
KV_CONTRACT: dict[str, Any] = {
    "name": "kv",
    "calls": {
        "put": {"fields": {"key": _KEY, "value": {"type": "bytes", "max_len": VALUE_MAX}}},
        "get": {"fields": {"key": _KEY}},
        "delete": {"fields": {"key": _KEY}},
        "stats": {},
    },
    "replies": {
        "ok": {}, "missing": {}, "full": {},
        "value": {"fields": {"value": {"type": "bytes", "max_len": VALUE_MAX}}},
        "stats": {"fields": {"count": {"type": "int", "min": 0},
                             "slots": {"type": "int", "min": 0}}},
    },
    "states": {"ready": {"put": {"ok": "ready", "full": "ready"},
                         "get": {"value": "ready", "missing": "ready"},
                         "delete": {"ok": "ready", "missing": "ready"},
                         "stats": {"stats": "ready"}}},
}
#: How long a client waits for the server to register (it may start after the client).
LOOKUP_WAIT_S: float = 10.0


class Table:
    """The hash table in the process's paged memory (every access through the MMU)."""

    def __init__(self, proc: SealedProcess, slots: int) -> None:
        self.proc = proc
        self.slots = slots
        self.addr = proc.map((slots * SLOT_BYTES + PAGE_SIZE - 1) // PAGE_SIZE)
        self.count = 0

    def _home(self, key: bytes) -> int:
        """The slot where key's probe sequence starts."""
        return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") % self.slots

    def _slot(self, i: int) -> tuple[int, bytes, int]:
        """(state, key, value length) of slot i."""
        base = self.addr + i * SLOT_BYTES
        head = self.proc.read(base, 4 + KEY_MAX)
        state, klen, vlen = _HDR.unpack_from(head)
        return state, head[4:4 + klen], vlen

    def _find(self, key: bytes) -> tuple[int | None, int | None]:
        """(slot holding key or None, first reusable slot on its probe path or None)."""
        i, reusable = self._home(key), None
        for _ in range(self.slots):
            state, k, _ = self._slot(i)
            if state == FREE:
                return None, reusable if reusable is not None else i
            if state == DELETED and reusable is None:
                reusable = i
            elif state == USED and k == key:
                return i, None
            i = (i + 1) % self.slots
        return None, reusable

    def put(self, key: bytes, value: bytes) -> bool:
        """Store key -> value; False when the table is full."""
        at, free = self._find(key)
        slot = at if at is not None else free
        if slot is None:
            return False
        if at is None:
            self.count += 1
        base = self.addr + slot * SLOT_BYTES
        self.proc.write(base, _HDR.pack(USED, len(key), len(value)) + key.ljust(KEY_MAX, b"\0")
                        + value)
        return True

    def get(self, key: bytes) -> bytes | None:
        """The value of key, or None."""
        at, _ = self._find(key)
        if at is None:
            return None
        _, _, vlen = self._slot(at)
        return self.proc.read(self.addr + at * SLOT_BYTES + 4 + KEY_MAX, vlen)

    def delete(self, key: bytes) -> bool:
        """Remove key (a tombstone); False when it was not there."""
        at, _ = self._find(key)
        if at is None:
            return False
        self.proc.write(self.addr + at * SLOT_BYTES, _HDR.pack(DELETED, 0, 0))
        self.count -= 1
        return True


def serve(proc: SealedProcess, slots: int, name: str) -> None:
    """Register `name` and serve the table forever."""
    table = Table(proc, slots)
    h = proc.endpoint(KV_CONTRACT)
    proc.register_name(name, h)
    proc.report(ready=True, slots=slots)
    rcv = proc.receive(h)
    while True:
        m, kind = rcv.msg, rcv.kind
        reply: dict[str, object]
        if kind == "put":
            reply = {"kind": "ok" if table.put(m["key"].encode(), m["value"]) else "full"}
        elif kind == "get":
            value = table.get(m["key"].encode())
            reply = {"kind": "missing"} if value is None else {"kind": "value", "value": value}
        elif kind == "delete":
            reply = {"kind": "ok" if table.delete(m["key"].encode()) else "missing"}
        else:
            reply = {"kind": "stats", "count": table.count, "slots": table.slots}
        rcv = proc.reply(rcv, reply, receive=h)


# -- the client -------------------------------------------------------------------------------
def pair(seed: int, i: int) -> tuple[str, bytes]:
    """The i-th deterministic (key, value) of a client run."""
    digest = hashlib.sha256(b"%d:%d" % (seed, i)).digest()
    return f"key-{seed}-{i}", digest * (1 + digest[0] % 13)


def client(proc: SealedProcess, target: str, ops: int, seed: int) -> int:
    """Put, get, delete, check; REPORT the verdict; return the exit status
    (run_reporting turns a SealedError or a failed check into a REPORT and status 1)."""
    kv = proc.lookup(target, LOOKUP_WAIT_S)

    def call(**m: Any) -> dict[str, Any]:
        """One call to the server; its reply."""
        return proc.call(kv, m)[0]
    for i in range(ops):
        k, v = pair(seed, i)
        if call(kind="put", key=k, value=v)["kind"] != "ok":
            raise AssertionError(f"put {k} refused")
    for i in range(ops):
        k, v = pair(seed, i)
        got = call(kind="get", key=k)
        if got.get("value") != v:
            raise AssertionError(f"get {k}: wrong value")
    for i in range(0, ops, 3):
        if call(kind="delete", key=pair(seed, i)[0])["kind"] != "ok":
            raise AssertionError(f"delete {pair(seed, i)[0]} failed")
    for i in range(ops):
        k, v = pair(seed, i)
        want = "missing" if i % 3 == 0 else "value"
        if call(kind="get", key=k)["kind"] != want:
            raise AssertionError(f"get {k} after deletes: not {want}")
    stats = call(kind="stats")
    proc.report(checksum="verified", ops=ops, server_count=stats["count"])
    return 0


def build_parser() -> argparse.ArgumentParser:
    """`sealedos run kvstore` flags."""
    p = app_parser("kvstore", __doc__)
    p.add_argument("--slots", type=int, default=1024)
    p.add_argument("--register", default="kv")
    p.add_argument("--client", action="store_true")
    p.add_argument("--target", default="kv")
    p.add_argument("--ops", type=int, default=200)
    p.add_argument("--seed", type=int, default=1)
    return p


def main(argv: list[str]) -> int:
    """`sealedos run kvstore ...`"""
    args = build_parser().parse_args(argv)
    if args.slots < 1 or args.ops < 0:
        print("kvstore: --slots must be positive and --ops not negative", file=sys.stderr)
        return 2
    with SealedProcess.connect(args.kernel) as proc:
        if not args.client:
            serve(proc, args.slots, args.register)
            return 0
        return run_reporting(proc, lambda: client(proc, args.target, args.ops, args.seed))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
