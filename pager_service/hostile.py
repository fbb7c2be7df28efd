"""Hostile pager behaviours: what an untrusted pager can try against the kernel's sealed pages.

The kernel seals (AES-GCM) every page before the pager sees it, so a pager only ever holds
ciphertext.  These behaviours exist to *demonstrate* that: each one misbehaves on page-in
replies the way a compromised pager could, and the kernel must catch every attempt (a bad
tag, a wrong binding, a timeout).  Page-outs are ALWAYS stored honestly: a hostile pager's
only real power is to withhold pages, and the modes below try to disguise that.

One class per mode; the pager calls exactly two hooks:

* ``on_page_out(handle, slot, data)`` when a page-out request arrives (before it is stored);
* ``on_page_in(req, data)`` with the honest page read back from the disk; the behaviour
  answers the kernel (honestly or not) through the :class:`PagerPort` it was built with.
  ``on_page_in_error(req, code, msg)`` handles the disk-failure path (honest by default).

Every mode counts what it did in ``counters()`` (``tampered`` is the number of page-in
replies it falsified, withheld or delayed).
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

PageKey = tuple[bytes, int]


class PagerPort(Protocol):
    """What a behaviour may ask of the pager: answer the kernel, read the disk, wait."""

    def reply_page(self, req: Request, data: Any) -> None:
        """Answer page_in `req` with a reply map {re, data} (data of any type)."""

    def fail(self, req: Request, code: Err, msg: str) -> None:
        """Answer `req` with an error."""

    def send_raw(self, req: Request, frame: bytes) -> None:
        """Send `frame` as it is on the connection `req` came from."""

    def read_page(self, handle: bytes, slot: int,
                  callback: Callable[[bytes | None], None]) -> None:
        """Read one page from the disk; callback(data), or callback(None) on any failure."""

    def call_later(self, delay_ms: float, fn: Callable[[], None]) -> Any:
        """Run fn once after delay_ms, on the loop."""


@dataclass(frozen=True, slots=True)
class HostileOptions:
    """Knobs of the hostile modes that take any."""
    snoop_path: Path | None = None
    stall_ms: float = 10000.0
    seed: int | None = None


def flip_bits(data: bytes, rng: random.Random, nbits: int = FLIP_BITS) -> bytes:
    """Return `data` with `nbits` distinct bits inverted; never equal to `data` (if non-empty)."""
    if not data:
        return b"\x01"
    buf = bytearray(data)
    for bit in rng.sample(range(len(buf) * 8), min(nbits, len(buf) * 8)):
        buf[bit >> 3] ^= 1 << (bit & 7)
    return bytes(buf)


class Honest:
    """The behaviour of a correct pager: store honestly, answer honestly."""
    name: str = HONEST

    def __init__(self, port: PagerPort, options: HostileOptions) -> None:
        self.port = port
        self.options = options
        self.rng = random.Random(options.seed)
        self.tampered = 0

    def on_page_out(self, handle: bytes, slot: int, data: bytes) -> None:
        """Hook: a page-out of `data` to (handle, slot) arrived (it is stored honestly)."""

    def on_page_in(self, req: Request, data: bytes) -> None:
        """Hook: answer page_in `req`, whose honest answer is `data`."""
        self.port.reply_page(req, data)

    def on_page_in_error(self, req: Request, code: Err, msg: str) -> None:
        """Hook: answer page_in `req`, which failed on the disk with `code`."""
        self.port.fail(req, code, msg)

    def counters(self) -> dict[str, Any]:
        """This behaviour's counters, merged into the pager's stats reply."""
        return {"tampered": self.tampered}

    def close(self) -> None:
        """Release whatever the behaviour holds open."""

    def _tamper(self, req: Request, data: bytes) -> None:
        """Answer `req` with `data`, counted as a falsified reply."""
        self.tampered += 1
        self.port.reply_page(req, data)


class Snoop(Honest):
    """Correct, but appends every page it sees (out and in) to the snoop file."""
    name = "snoop"

    def __init__(self, port: PagerPort, options: HostileOptions) -> None:
        super().__init__(port, options)
        if options.snoop_path is None:
            raise ValueError("snoop mode needs a snoop file")
        options.snoop_path.parent.mkdir(parents=True, exist_ok=True)
        self.file: BinaryIO = open(options.snoop_path, "ab")
        self.snooped_pages = 0

    def _record(self, data: bytes) -> None:
        """Append one page to the snoop file and flush it (so a reader sees it at once)."""
        self.file.write(data)
        self.file.flush()
        self.snooped_pages += 1

    def on_page_out(self, handle: bytes, slot: int, data: bytes) -> None:
        self._record(data)

    def on_page_in(self, req: Request, data: bytes) -> None:
        self._record(data)
        self.port.reply_page(req, data)

    def counters(self) -> dict[str, Any]:
        return {"tampered": self.tampered, "snooped_pages": self.snooped_pages,
                "snoop_file": str(self.options.snoop_path)}

    def close(self) -> None:
        self.file.close()


class Flip(Honest):
    """Answers page-ins with a few bits inverted."""
    name = "flip"

    def on_page_in(self, req: Request, data: bytes) -> None:
        self._tamper(req, flip_bits(data, self.rng))


class Swap(Honest):
    """Answers a page-in with another stored page: same handle if it can, else another's."""
    name = "swap"

    def __init__(self, port: PagerPort, options: HostileOptions) -> None:
        super().__init__(port, options)
        self.slots: dict[bytes, list[int]] = {}     # handle -> slots seen, in arrival order
        self.known: set[PageKey] = set()
        self.swapped = 0
        self.flipped = 0

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

    def on_page_in(self, req: Request, data: bytes) -> None:
        other = self.pick_other(req.msg["handle"], req.msg["slot"])
        if other is None:
            self._flip(req, data)
            return

        def got(other_data: bytes | None) -> None:
            if other_data is None or other_data == data:
                self._flip(req, data)         # freed meanwhile, or identical: still attack
            else:
                self.swapped += 1
                self._tamper(req, other_data)
        self.port.read_page(other[0], other[1], got)

    def _flip(self, req: Request, data: bytes) -> None:
        """The fallback attack: flip bits of the honest page."""
        self.flipped += 1
        self._tamper(req, flip_bits(data, self.rng))

    def counters(self) -> dict[str, Any]:
        return {"tampered": self.tampered, "swapped": self.swapped, "flipped": self.flipped}


class Replay(Honest):
    """Remembers past versions of each page; answers with an older one (else flips bits)."""
    name = "replay"

    def __init__(self, port: PagerPort, options: HostileOptions) -> None:
        super().__init__(port, options)
        self.history: dict[PageKey, list[bytes]] = {}
        self.replayed = 0
        self.flipped = 0

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

    def on_page_in(self, req: Request, data: bytes) -> None:
        old = self.older_version((req.msg["handle"], req.msg["slot"]), data)
        if old is not None:
            self.replayed += 1
            self._tamper(req, old)
        else:
            self.flipped += 1
            self._tamper(req, flip_bits(data, self.rng))

    def counters(self) -> dict[str, Any]:
        return {"tampered": self.tampered, "replayed": self.replayed, "flipped": self.flipped}


class Zero(Honest):
    """Answers page-ins with a page of zeros, as a dead userfaultfd handler would."""
    name = "zero"

    def on_page_in(self, req: Request, data: bytes) -> None:
        self._tamper(req, bytes(len(data)))


class Drop(Honest):
    """Never answers a page-in (not even with an error); everything else is answered."""
    name = "drop"

    def on_page_in(self, req: Request, data: bytes) -> None:
        self.tampered += 1

    def on_page_in_error(self, req: Request, code: Err, msg: str) -> None:
        self.tampered += 1


class Stall(Honest):
    """Answers page-ins honestly, but only after stall_ms (on a timer; the loop never blocks)."""
    name = "stall"

    def on_page_in(self, req: Request, data: bytes) -> None:
        self.tampered += 1
        self.port.call_later(self.options.stall_ms, lambda: self.port.reply_page(req, data))

    def on_page_in_error(self, req: Request, code: Err, msg: str) -> None:
        self.tampered += 1
        self.port.call_later(self.options.stall_ms, lambda: self.port.fail(req, code, msg))


class Garbage(Honest):
    """Answers page-ins with malformed replies: raw bytes, an int, a 17-byte page, in turn."""
    name = "garbage"

    def __init__(self, port: PagerPort, options: HostileOptions) -> None:
        super().__init__(port, options)
        self.turn = 0

    def on_page_in(self, req: Request, data: bytes) -> None:
        kind, self.turn = self.turn % 3, self.turn + 1
        self.tampered += 1
        if kind == 0:
            self.port.send_raw(req, GARBAGE_FRAME)
        elif kind == 1:
            self.port.reply_page(req, self.rng.randrange(1 << 32))
        else:
            self.port.reply_page(req, data[:GARBAGE_SHORT_BYTES])


#: mode name -> behaviour class; "none" is the honest pager.
BEHAVIOURS: dict[str, type[Honest]] = {
    cls.name: cls for cls in (Honest, Snoop, Flip, Swap, Replay, Zero, Drop, Stall, Garbage)}
assert set(BEHAVIOURS) == {HONEST, *HOSTILE_MODES}, "hostile.py and protocol.HOSTILE_MODES disagree"


def make_behaviour(mode: str, port: PagerPort, options: HostileOptions) -> Honest:
    """The behaviour for `mode` ("none" or one of HOSTILE_MODES); ValueError if unknown."""
    try:
        cls = BEHAVIOURS[mode]
    except KeyError:
        raise ValueError(f"unknown hostile mode {mode!r}; expected one of "
                         f"{', '.join((HONEST, *HOSTILE_MODES))}") from None
    return cls(port, options)
