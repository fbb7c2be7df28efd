"""Hostile pager behaviours: what an untrusted pager can try against the kernel's sealed pages.

The kernel seals (AES-GCM) every page before the pager sees it, so a pager only ever holds
ciphertext.  These behaviours exist to *demonstrate* that: each one misbehaves on page-in
replies the way a compromised pager could, and the kernel must catch every attempt (a bad
tag, a wrong binding, a timeout).  Page-outs are ALWAYS stored honestly: a hostile pager's
only real power is to withhold pages, and the modes below try to disguise that.

An honest pager has no behaviour object at all: it answers page-ins on its own direct path.
Only a pager started with ``--hostile MODE`` builds one (:func:`make_behaviour`), one class
per mode, and calls exactly these hooks:

* ``on_page_out(handle, slot, data)`` when a page-out request arrives (before it is stored);
* ``on_page_out_answer(req, fields)`` with the honest answer to a page-out (``more``: the
  further pages' of a clustered one); with ``--batch-attack KIND`` a share of the clustered
  ones are answered falsely (BATCH_ATTACKS, :func:`falsify_batch`), else honestly;
* ``on_page_in(page, data)`` with the honest page read back from the disk; the behaviour
  answers the kernel (honestly or not) through the :class:`PagerPort` it was built with.
  ``on_page_in_error(page, code, msg)`` handles the disk-failure path (honest by default).

Every mode counts what it did in a typed record, ``counts`` (``tampered`` is the number of
page-in replies it falsified, withheld or delayed), merged into the pager's stats reply.
"""
from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from wire.protocol import HOSTILE_MODES, Err
from wire.server import Request

#: The mode name of an honest pager.
HONEST: str = "none"
#: How many bits `flip` (and every fallback to it) inverts in one page.
FLIP_BITS: int = 3
#: How many past versions of one (handle, slot) `replay` keeps in memory.
REPLAY_DEPTH: int = 8
#: A frame no msgpack decoder accepts (0xc1 is the one byte msgpack never uses).
GARBAGE_FRAME: bytes = b"\xc1\xc1 not msgpack, just garbage \xff\xfe"
#: The wrong-size payload of `garbage`'s second malformed reply (a page is 4096 bytes).
GARBAGE_SHORT_BYTES: int = 17

#: What --batch-attack does to the answer of a clustered page-out (the pages themselves are
#: stored honestly): fail a random subset of its pages; add an answer for a page it was not
#: sent; answer twice (the second time failing every page); reverse the further pages'
#: answers; answer one for another slot; or never answer.
BATCH_ATTACKS: tuple[str, ...] = ("ack_some", "unsent", "twice", "reorder", "other_slot",
                                  "withhold")
#: The share of clustered page-outs a batch attack falsifies (the others are answered
#: honestly, so that with one pager every page gets through in the end).
BATCH_ATTACK_SHARE: float = 0.5

PageKey = tuple[bytes, int]
Reply = dict[str, Any]


@dataclass(slots=True)
class PageRead:
    """One PAGE_IN this pager is answering: the request, the page it names, and its timing
    (the kernel's side of a page-in is kernel_daemon/vm.PageIn)."""
    req: Request
    handle: bytes
    slot: int
    #: When the request arrived (the pager's clock, seconds).
    t_recv: float
    #: How long the disk read took (microseconds), once it answered.
    disk_us: float | None = None


class PagerPort(Protocol):
    """What a behaviour may ask of the pager: answer the kernel, read the disk, wait."""

    def reply_page(self, page: PageRead, data: object) -> None:
        """Answer `page`'s request with a reply map {re, data} (data of any type)."""

    def fail(self, req: Request, code: Err, msg: str) -> None:
        """Answer `req` with an error."""

    def answer(self, req: Request, fields: dict[str, Any]) -> None:
        """Answer `req` with the reply map `fields` as it is."""

    def send_raw(self, req: Request, frame: bytes) -> None:
        """Send `frame` as it is on the connection `req` came from."""

    def read_page(self, handle: bytes, slot: int,
                  callback: Callable[[bytes | None], None]) -> None:
        """Read one page from the disk; callback(data), or callback(None) on any failure."""

    def call_later(self, delay_ms: float, fn: Callable[[], None]) -> object:
        """Run fn once after delay_ms, on the loop."""


@dataclass(frozen=True, slots=True)
class HostileOptions:
    """Knobs of the hostile modes that take any."""
    snoop_path: Path | None = None
    stall_ms: float = 10000.0
    seed: int | None = None
    batch_attack: str | None = None


def falsify_batch(kind: str, fields: Reply, rng: random.Random) -> list[Reply]:
    """The replies (none, one or two) batch attack `kind` sends instead of the honest answer
    `fields` to a clustered page-out (`more`: one {slot, ...} per further page)."""
    more: list[Reply] = list(fields["more"])
    first = {k: v for k, v in fields.items() if k != "more"}
    not_acked = {"err": str(Err.IO), "msg": "hostile pager: not acknowledged"}
    if kind == "ack_some":
        first = first if rng.random() < 0.5 else not_acked
        more = [m if rng.random() < 0.5 else dict(not_acked, slot=m["slot"]) for m in more]
    elif kind == "unsent":
        more.append({"slot": rng.randrange(1 << 20)})
    elif kind == "twice":
        return [fields, dict(not_acked, more=[dict(not_acked, slot=m["slot"]) for m in more])]
    elif kind == "reorder":
        more.reverse()
    elif kind == "other_slot":
        i = rng.randrange(len(more))
        more[i] = dict(more[i], slot=more[i]["slot"] + 1)
    elif kind == "withhold":
        return []
    return [dict(first, more=more)]


def flip_bits(data: bytes, rng: random.Random, nbits: int = FLIP_BITS) -> bytes:
    """Return `data` with `nbits` distinct bits inverted; never equal to `data` (if non-empty)."""
    if not data:
        return b"\x01"
    buf = bytearray(data)
    for bit in rng.sample(range(len(buf) * 8), min(nbits, len(buf) * 8)):
        buf[bit >> 3] ^= 1 << (bit & 7)
    return bytes(buf)


# -- what each mode counts (merged into the pager's stats reply) ----------------------------
@dataclass(slots=True)
class HostileCounts:
    """What every mode counts."""
    #: Page-in replies falsified, withheld or delayed.
    tampered: int = 0
    #: Answers to clustered page-outs falsified or withheld (--batch-attack).
    batches_falsified: int = 0


@dataclass(slots=True)
class SnoopCounts(HostileCounts):
    """What snoop counts: the pages it recorded, and where."""
    snooped_pages: int = 0
    snoop_file: str = ""


@dataclass(slots=True)
class SwapCounts(HostileCounts):
    """What swap counts: answers with another page, and bit-flip fallbacks."""
    swapped: int = 0
    flipped: int = 0


@dataclass(slots=True)
class ReplayCounts(HostileCounts):
    """What replay counts: answers with an older version, and bit-flip fallbacks."""
    replayed: int = 0
    flipped: int = 0


class Hostile:
    """The base of every mode: stores honestly, answers honestly unless a mode overrides."""
    name: str = ""

    def __init__(self, port: PagerPort, options: HostileOptions) -> None:
        self.port = port
        self.options = options
        self.rng = random.Random(options.seed)
        self.counts: HostileCounts = HostileCounts()

    def on_page_out(self, handle: bytes, slot: int, data: bytes) -> None:
        """Hook: a page-out of `data` to (handle, slot) arrived (it is stored honestly)."""

    def on_page_out_answer(self, req: Request, fields: Reply) -> None:
        """Hook: answer page-out `req`, whose honest answer is `fields` (see the module
        docstring: --batch-attack falsifies a share of the clustered ones)."""
        kind = self.options.batch_attack
        if kind is None or "more" not in fields or self.rng.random() >= BATCH_ATTACK_SHARE:
            self.port.answer(req, fields)
            return
        self.counts.batches_falsified += 1
        for reply in falsify_batch(kind, fields, self.rng):
            self.port.answer(req, reply)

    def on_page_in(self, page: PageRead, data: bytes) -> None:
        """Hook: answer `page`, whose honest answer is `data`."""
        self.port.reply_page(page, data)

    def on_page_in_error(self, page: PageRead, code: Err, msg: str) -> None:
        """Hook: answer `page`, which failed on the disk with `code`."""
        self.port.fail(page.req, code, msg)

    def close(self) -> None:
        """Release whatever the behaviour holds open."""

    def _tamper(self, page: PageRead, data: object) -> None:
        """Answer `page` with `data`, counted as a falsified reply."""
        self.counts.tampered += 1
        self.port.reply_page(page, data)


class Snoop(Hostile):
    """Correct, but appends every page it sees (out and in) to the snoop file."""
    name = "snoop"

    def __init__(self, port: PagerPort, options: HostileOptions) -> None:
        super().__init__(port, options)
        if options.snoop_path is None:
            raise ValueError("snoop mode needs a snoop file")
        options.snoop_path.parent.mkdir(parents=True, exist_ok=True)
        self.file: BinaryIO = open(options.snoop_path, "ab")
        self.counts = self.snoop = SnoopCounts(snoop_file=str(options.snoop_path))

    def _record(self, data: bytes) -> None:
        """Append one page to the snoop file and flush it (so a reader sees it at once)."""
        self.file.write(data)
        self.file.flush()
        self.snoop.snooped_pages += 1

    def on_page_out(self, handle: bytes, slot: int, data: bytes) -> None:
        self._record(data)

    def on_page_in(self, page: PageRead, data: bytes) -> None:
        self._record(data)
        self.port.reply_page(page, data)

    def close(self) -> None:
        self.file.close()


class Flip(Hostile):
    """Answers page-ins with a few bits inverted."""
    name = "flip"

    def on_page_in(self, page: PageRead, data: bytes) -> None:
        self._tamper(page, flip_bits(data, self.rng))


class Swap(Hostile):
    """Answers a page-in with another stored page: same handle if it can, else another's."""
    name = "swap"

    def __init__(self, port: PagerPort, options: HostileOptions) -> None:
        super().__init__(port, options)
        self.slots: dict[bytes, list[int]] = {}     # handle -> slots seen, in arrival order
        self.known: set[PageKey] = set()
        self.counts = self.swap = SwapCounts()

    def on_page_out(self, handle: bytes, slot: int, data: bytes) -> None:
        if (handle, slot) not in self.known:
            self.known.add((handle, slot))
            self.slots.setdefault(handle, []).append(slot)

    def pick_other(self, handle: bytes, slot: int) -> PageKey | None:
        """A seen page other than (handle, slot): same handle preferred; None if none."""
        own = [s for s in self.slots.get(handle, ()) if s != slot]
        if own:
            return handle, self.rng.choice(own)
        others = [h for h, slots in self.slots.items() if h != handle and slots]
        if others:
            other = self.rng.choice(others)
            return other, self.rng.choice(self.slots[other])
        return None

    def on_page_in(self, page: PageRead, data: bytes) -> None:
        other = self.pick_other(page.handle, page.slot)
        if other is None:
            self._flip(page, data)
            return

        def got(other_data: bytes | None) -> None:
            if other_data is None or other_data == data:
                self._flip(page, data)        # freed meanwhile, or identical: still attack
            else:
                self.swap.swapped += 1
                self._tamper(page, other_data)
        self.port.read_page(other[0], other[1], got)

    def _flip(self, page: PageRead, data: bytes) -> None:
        """The fallback attack: flip bits of the honest page."""
        self.swap.flipped += 1
        self._tamper(page, flip_bits(data, self.rng))


class Replay(Hostile):
    """Remembers past versions of each page; answers with an older one (else flips bits)."""
    name = "replay"

    def __init__(self, port: PagerPort, options: HostileOptions) -> None:
        super().__init__(port, options)
        self.history: dict[PageKey, list[bytes]] = {}
        self.counts = self.replay = ReplayCounts()

    def on_page_out(self, handle: bytes, slot: int, data: bytes) -> None:
        versions = self.history.setdefault((handle, slot), [])
        versions.append(data)
        del versions[:-REPLAY_DEPTH]

    def older_version(self, key: PageKey, current: bytes) -> bytes | None:
        """The most recent remembered version of `key` that differs from `current`."""
        for old in reversed(self.history.get(key, ())):
            if old != current:
                return old
        return None

    def on_page_in(self, page: PageRead, data: bytes) -> None:
        old = self.older_version((page.handle, page.slot), data)
        if old is not None:
            self.replay.replayed += 1
            self._tamper(page, old)
        else:
            self.replay.flipped += 1
            self._tamper(page, flip_bits(data, self.rng))


class Zero(Hostile):
    """Answers page-ins with a page of zeros, as a dead userfaultfd handler would."""
    name = "zero"

    def on_page_in(self, page: PageRead, data: bytes) -> None:
        self._tamper(page, bytes(len(data)))


class Drop(Hostile):
    """Never answers a page-in (not even with an error); everything else is answered."""
    name = "drop"

    def on_page_in(self, page: PageRead, data: bytes) -> None:
        self.counts.tampered += 1

    def on_page_in_error(self, page: PageRead, code: Err, msg: str) -> None:
        self.counts.tampered += 1


class Stall(Hostile):
    """Answers page-ins honestly, but only after stall_ms (on a timer; the loop never blocks)."""
    name = "stall"

    def on_page_in(self, page: PageRead, data: bytes) -> None:
        self.counts.tampered += 1
        self.port.call_later(self.options.stall_ms, lambda: self.port.reply_page(page, data))

    def on_page_in_error(self, page: PageRead, code: Err, msg: str) -> None:
        self.counts.tampered += 1
        self.port.call_later(self.options.stall_ms, lambda: self.port.fail(page.req, code, msg))


class Garbage(Hostile):
    """Answers page-ins with malformed replies: raw bytes, an int, a 17-byte page, in turn."""
    name = "garbage"

    def __init__(self, port: PagerPort, options: HostileOptions) -> None:
        super().__init__(port, options)
        self.turn = 0

    def on_page_in(self, page: PageRead, data: bytes) -> None:
        kind, self.turn = self.turn % 3, self.turn + 1
        self.counts.tampered += 1
        if kind == 0:
            self.port.send_raw(page.req, GARBAGE_FRAME)
        elif kind == 1:
            self.port.reply_page(page, self.rng.randrange(1 << 32))
        else:
            self.port.reply_page(page, data[:GARBAGE_SHORT_BYTES])


#: hostile mode name -> behaviour class (an honest pager, mode "none", has none).
BEHAVIOURS: dict[str, type[Hostile]] = {
    cls.name: cls for cls in (Snoop, Flip, Swap, Replay, Zero, Drop, Stall, Garbage)}
assert set(BEHAVIOURS) == set(HOSTILE_MODES), "hostile.py and protocol.HOSTILE_MODES disagree"


def make_behaviour(mode: str, port: PagerPort, options: HostileOptions) -> Hostile | None:
    """The behaviour for `mode`: None for "none" (honest), else one of HOSTILE_MODES';
    ValueError if unknown."""
    if mode == HONEST:
        return None
    try:
        cls = BEHAVIOURS[mode]
    except KeyError:
        raise ValueError(f"unknown hostile mode {mode!r}; expected one of "
                         f"{', '.join((HONEST, *HOSTILE_MODES))}") from None
    return cls(port, options)
