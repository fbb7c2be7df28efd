"""Erasure-coded page I/O across K+R pagers: fragment page-out, late-binding page-in, repair.

With `--pagers N --code K+R` (N = K+R) pager i stores fragment i of every page (erasure.py).
The kernel's pager plumbing (pagers.py: slots, windows, retry budgets, backlogs while a
pager is down) carries the fragments unchanged; this module only decides what to send where
and what an answer is worth.

* **Page-out.** The sealed page is split into N blocks, block i sent to pager i with the full
  retry budget (a pager that is down gets its block when it returns).  done(mask, why)
  reports which pagers acknowledged.  The durability rule is the caller's (vm.py): the page
  goes HELD -> SWAPPED only with all N acknowledged, so it survives any R further losses;
  with fewer the kernel keeps the bytes (HELD, counted in `ec_short_writes`) and tries again.
* **Page-in, late binding.** Ask K + delta of the pagers holding a current fragment (up and
  not lately bad first); decode from the first K fragments whose MACs verify; every missing
  or bad fragment (timeout, error reply, failed check) makes the kernel ask the next pager;
  when none is left, pagers that only failed to answer are asked once more with the full
  budget.  The decoded ciphertext is then opened with the AES-GCM tag the kernel kept.
* **Repair.** Fragments that failed are rewritten in the background from the verified
  ciphertext (re-encoded); repaired(ok_mask, lost_mask) lets the caller keep the page's
  fragment mask true, so a pager whose fragment could not be rewritten is resynced when it
  rejoins (resync.py reads the page through page_in here and writes the pager its block).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kernel_daemon.erasure import Coder
from kernel_daemon.pagers import BAD_MIRROR_MS, Pagers, ReadDone, Repaired
from kernel_daemon.seal import IntegrityError
from kernel_daemon.stats import KernelStats
from wire.protocol import Op

Binding = tuple[bytes, int, int]                      # (swap id, vpn, version)
Failure = tuple[int, str, str]                        # (pager, kind, text)


class EcPages:
    """Fragment I/O of sealed pages over the kernel's pager slots."""

    def __init__(self, pagers: Pagers, k: int, r: int, delta: int, stats: KernelStats) -> None:
        if pagers.nmirrors != k + r:
            raise ValueError(f"--code {k}+{r} needs exactly {k + r} pagers, "
                             f"got {pagers.nmirrors}")
        self.pagers = pagers
        self.coder = Coder(k, r)
        pagers.open_fields = {"block_size": self.coder.block_bytes}     # disks pack fragments
        self.k, self.r, self.delta = k, r, max(0, delta)
        self.stats = stats

    @property
    def full_mask(self) -> int:
        """The fragment mask of a page every pager holds."""
        return (1 << self.coder.n) - 1

    # -- page-out ------------------------------------------------------------------------------
    def page_out(self, handles: list[bytes], slot: int, bind: Binding, sealed: bytes,
                 done: Callable[[int, str], None]) -> None:
        """Write fragment i of `sealed` to pager i (each with the full retry budget);
        done(mask of pagers that acknowledged, why) once every pager has answered or given up."""
        self.stats.ec_page_outs += 1
        self._write(handles, slot, self.coder.split(sealed, *bind), done)

    def _write(self, handles: list[bytes], slot: int, blocks: dict[int, bytes],
               done: Callable[[int, str], None]) -> None:
        """PAGE_OUT blocks[m] to each pager m in blocks; done(mask acknowledged, why)."""
        # A pager that is down while others are up is not waited for (as mirrored page-outs
        # do): the page stays HELD (durability rule) and the resync brings it its fragment.
        targets = [m for m in blocks if self.pagers.worth_asking(m)]
        self.pagers.write_all(targets, lambda m: {"handle": handles[m], "slot": slot,
                                                  "data": blocks[m]}, done)

    # -- page-in -------------------------------------------------------------------------------
    def page_in(self, handles: list[bytes], slot: int, mask: int, bind: Binding,
                verify: Callable[[object], bytes], done: ReadDone, repaired: Repaired,
                answered: Callable[[int, dict[str, Any]], None] | None,
                late_failure: Callable[[int, str, str], None]) -> None:
        """Late-binding read: decode from the first K verified fragments, then verify the
        whole page with `verify` (the kernel's AES-GCM open) and done(plaintext, ciphertext,
        failures); done(None, b"", failures) if fewer than K fragments verify.  Bad fragments
        are rewritten afterwards; repaired(ok_mask, lost_mask) then.  late_failure(pager,
        kind, text) hears of a fragment that failed after the page was decoded (it is
        repaired as well)."""
        now = self.pagers.server.now()
        slots = self.pagers.slots
        order = sorted((m for m in range(self.coder.n) if mask >> m & 1),
                       key=lambda m: (not slots[m].up, slots[m].bad_until > now, m))
        good: dict[int, bytes] = {}
        failures: list[Failure] = []
        st: dict[str, Any] = {"next": 0, "out": 0, "done": False, "again": []}

        def ask(m: int, full: bool) -> None:
            st["out"] += 1
            spare = st["next"] < len(order)
            self.pagers.submit(m, Op.PAGE_IN, {"handle": handles[m], "slot": slot},
                               lambda reply, why: on(m, reply, why),
                               retries=None if full or not spare else 0)

        def more() -> None:
            while not st["done"] and len(good) + st["out"] < self.k + self.delta:
                if st["next"] < len(order):
                    st["next"] += 1
                    ask(order[st["next"] - 1], False)
                elif st["again"]:
                    ask(st["again"].pop(0), True)
                else:
                    break
            if not st["done"] and st["out"] == 0 and len(good) < self.k:
                st["done"] = True
                self.stats.ec_unrecoverable += 1
                done(None, b"", failures)

        def on(m: int, reply: dict[str, Any] | None, why: str) -> None:
            st["out"] -= 1
            if st["done"]:
                late(m, reply, why)
                return
            slots[m].bad_until = self.pagers.server.now() + BAD_MIRROR_MS / 1000
            if reply is None or "err" in reply:
                failures.append((m, *_failure(reply, why)))
                if not any(f[0] == m for f in failures[:-1]):
                    st["again"].append(m)        # it may only be slow: ask once more at the end
            else:
                if answered is not None:
                    answered(m, reply)
                try:
                    good[m] = self.coder.check(reply.get("data"), *bind, m)
                    slots[m].bad_until = 0.0
                    self.stats.ec_fragments_read += 1
                except IntegrityError as exc:
                    failures.append((m, exc.kind, str(exc)))
            if len(good) >= self.k:
                finish()
            else:
                more()

        def late(m: int, reply: dict[str, Any] | None, why: str) -> None:
            """An answer after the page was decoded is still checked: a pager that lies or
            fails more slowly than K others is caught, counted and repaired too."""
            sealed = st.get("sealed")
            if sealed is None:
                return                          # the read failed: nothing to repair from
            if reply is None or "err" in reply:
                kind, text = _failure(reply, why)
            else:
                try:
                    self.coder.check(reply.get("data"), *bind, m)
                    return
                except IntegrityError as exc:
                    kind, text = exc.kind, str(exc)
            self.stats.ec_late_failures += 1
            late_failure(m, kind, text)
            self.repair(handles, slot, bind, sealed, [m], repaired)

        def finish() -> None:
            st["done"] = True
            sealed = self.coder.join(good)
            try:
                plain = verify(sealed)
            except IntegrityError as exc:       # K fragments with valid MACs but a bad page
                failures.append((-1, exc.kind, f"decoded page: {exc}"))
                self.stats.ec_unrecoverable += 1
                done(None, b"", failures)
                return
            self.stats.ec_page_ins += 1
            st["sealed"] = sealed
            if failures:
                self.stats.ec_degraded_reads += 1
            done(plain, sealed, failures)
            bad = sorted({f[0] for f in failures if f[0] >= 0} - set(good))
            if bad:
                self.repair(handles, slot, bind, sealed, bad, repaired)

        more()

    def repair(self, handles: list[bytes], slot: int, bind: Binding, sealed: bytes,
               bad: list[int], repaired: Repaired) -> None:
        """Rewrite the fragments of pagers `bad` from the verified ciphertext;
        repaired(ok_mask, lost_mask) after."""
        lost = sum(1 << m for m in bad)

        def on(mask: int, _why: str) -> None:
            self.stats.ec_repairs += mask.bit_count()
            self.stats.ec_fragments_lost += (lost & ~mask).bit_count()
            repaired(mask, lost & ~mask)
        self._write(handles, slot, self.coder.split(sealed, *bind, bad), on)


def _failure(reply: dict[str, Any] | None, why: str) -> tuple[str, str]:
    """(kind, text) of a page-in answer that brought no fragment: no reply, or an error."""
    return ("timeout", why) if reply is None else ("error", f"{reply['err']}: {reply.get('msg')}")
