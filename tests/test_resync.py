"""kernel_daemon/resync.py in process: a mirror that was away gets every page it missed.

The real kernel on the simulated seam (tests/kernel_harness.py) with two mirror slots; page-outs
happen while mirror 1 is away, then it joins, and what it is sent is checked against what the
other mirror holds.
"""
from __future__ import annotations

from kernel_harness import App, FakePager, Msg, Rig, page


def pages_out_while_mirror_1_is_away(rig: Rig, app: App) -> tuple[int, FakePager]:
    """Three pages written, two of them paged out to mirror 0 only (nframes=1); returns the
    first vpn and mirror 0's pager."""
    p0 = rig.pager(0)
    v = app.map(3)
    for i in range(3):
        app.write(v + i, page(f"page{i}"))
    rig.run(1.0)                                   # a pass could run; mirror 1 is not there
    assert rig.stats()["swapped_pages"] == 2 and len(p0.ops("page_out")) == 2
    return v, p0


def settled(rig: Rig, copies: int) -> bool:
    """Has the resync finished `copies` page copies (done or failed), none pending?"""
    st = rig.stats()
    return bool(st["resynced"] + st["resync_failed"] == copies and st["resync_pending"] == 0)


def test_a_returning_mirror_is_sent_every_page_it_missed_verified() -> None:
    rig = Rig(nframes=1, mirrors=2)
    app = rig.app()
    v, p0 = pages_out_while_mirror_1_is_away(rig, app)
    assert rig.stats()["resynced"] == 0
    p1 = rig.pager(1)
    rig.run_until("the resync pass", lambda: settled(rig, 2))
    st = rig.stats()
    assert (st["resynced"], st["resync_failed"]) == (2, 0)
    assert len(p0.ops("page_in")) == 2             # read from the mirror that has them
    copies = {m["slot"]: m["data"] for m in p1.ops("page_out")}
    originals = {m["slot"]: m["data"] for m in p0.ops("page_out")}
    assert copies == originals                     # the same ciphertext, not resealed
    passes = rig.stats()["resync_passes"]
    p1.crash()                                     # a restart: it lacks nothing now
    p1 = rig.pager(1)
    rig.run_until("another pass", lambda: rig.stats()["resync_passes"] == passes + 1)
    rig.run(0.5)
    assert rig.stats()["resynced"] == 2 and p1.ops("page_out") == []
    p0.crash()                                     # mirror 0 gone: mirror 1 serves alone
    rig.run_until("mirror 0 down", lambda: not rig.pager_slots()[0]["up"])
    assert app.read(v) == page("page0") and app.read(v + 1) == page("page1")
    assert len(p1.ops("page_in")) == 2 and rig.stats()["integrity_failures"] == {}


def test_nothing_that_fails_verification_is_copied() -> None:
    rig = Rig(nframes=1, mirrors=2)
    app = rig.app()
    v, p0 = pages_out_while_mirror_1_is_away(rig, app)

    def flip(p: FakePager, m: Msg) -> Msg:
        data = bytearray(p.honest(m)["data"])
        data[0] ^= 1
        return {"data": bytes(data)}
    p0.behaviour["page_in"] = flip
    p1 = rig.pager(1)
    rig.run_until("the resync pass", lambda: settled(rig, 2))
    st = rig.stats()
    assert (st["resynced"], st["resync_failed"]) == (0, 2)
    assert st["integrity_failures"] == {"tag": 2}
    assert p1.ops("page_out") == []
    del p0.behaviour["page_in"]
    assert app.read(v) == page("page0")            # the page itself is fine on mirror 0
    assert rig.ps(app.spid)["state"] == "running"


def wiped_and_rejoined(rig: Rig, pagers: list[FakePager], npages: int) -> tuple[App, int]:
    """An app's pages all swapped out to every pager; then pager 0's disk is wiped and a new
    instance of it joins (a new host).  Returns the app and its first vpn, once the resync
    says nothing is short any more."""
    app = rig.app()
    v = app.map(npages)
    for i in range(npages):
        app.write(v + i, page(f"wiped{i}"))
    rig.run_until("pages swapped to every pager", lambda: rig.stats()["swapped_pages"] >=
                  npages - rig.stats()["nframes"] and rig.stats()["pages_short"] == 0)
    assert rig.stats()["handles_lost"] == 0
    pagers[0].crash()
    rig.disks[0].wipe()
    pagers[0] = rig.pager(0)
    rig.run_until("the wipe noticed", lambda: rig.stats()["handles_lost"] >= 1)
    rig.run_until("pager 0 rebuilt", lambda: rig.stats()["pages_short"] == 0 and
                  rig.stats()["resync_pending"] == 0)
    return app, v


def test_a_mirror_back_with_a_wiped_disk_is_sent_every_page() -> None:
    rig = Rig(nframes=1, mirrors=2)
    pagers = [rig.pager(0), rig.pager(1)]
    app, v = wiped_and_rejoined(rig, pagers, 4)
    st = rig.stats()
    swapped = st["swapped_pages"]
    assert st["resynced"] >= swapped and st["resync_failed"] == 0
    assert len(rig.disks[0].blocks()) >= swapped    # every swapped page is on the new disk
    pagers[1].crash()                               # only the rebuilt mirror is left
    rig.run_until("mirror 1 down", lambda: not rig.pager_slots()[1]["up"])
    for i in range(4):
        assert app.read(v + i) == page(f"wiped{i}")
    assert rig.ps(app.spid)["state"] == "running" and rig.stats()["integrity_failures"] == {}


def test_an_ec_pager_back_with_a_wiped_disk_is_rebuilt_before_two_others_die() -> None:
    rig = Rig(nframes=2, mirrors=6, code=(4, 2))
    pagers = [rig.pager(m) for m in range(6)]
    app, v = wiped_and_rejoined(rig, pagers, 8)
    st = rig.stats()
    assert st["resynced"] >= st["swapped_pages"] and st["resync_failed"] == 0
    assert len(rig.disks[0].blocks()) >= st["swapped_pages"]
    for m in (1, 2):                                # R more losses: pager 0's fragments count
        pagers[m].crash()
    rig.run_until("pagers 1, 2 down", lambda: not any(s["up"] for s in rig.pager_slots()[1:3]))
    for i in range(8):
        assert app.read(v + i) == page(f"wiped{i}")
    assert rig.ps(app.spid)["state"] == "running" and rig.stats()["ec_unrecoverable"] == 0


def test_a_pager_that_claims_every_handle_lost_costs_copies_not_pages() -> None:
    """A hostile pager answers every OPEN with `created` (a wipe it did not have): the kernel
    re-copies what it holds there, once per rejoin (no churn), and loses nothing."""
    rig = Rig(nframes=1, mirrors=2)
    pagers = [rig.pager(0), rig.pager(1)]
    app = rig.app()
    v = app.map(4)
    for i in range(4):
        app.write(v + i, page(f"claim{i}"))
    rig.run_until("pages on both mirrors", lambda: rig.stats()["swapped_pages"] >= 3
                  and rig.stats()["pages_short"] == 0)
    pagers[1].crash()
    pagers[1] = rig.pager(1)
    pagers[1].behaviour["open"] = lambda p, m: {**p.honest(m), "created": True}
    rig.run_until("the claimed loss", lambda: rig.stats()["handles_lost"] >= 1)
    rig.run_until("the re-copy", lambda: rig.stats()["pages_short"] == 0
                  and rig.stats()["resync_pending"] == 0)
    st = rig.stats()
    rig.run(5.0)                                     # no pass of its own kicks another
    assert (rig.stats()["handles_lost"], rig.stats()["resynced"]) == (st["handles_lost"],
                                                                       st["resynced"])
    pagers[0].crash()                                # the liar's copies are all that is left
    rig.run_until("mirror 0 down", lambda: not rig.pager_slots()[0]["up"])
    for i in range(4):
        assert app.read(v + i) == page(f"claim{i}")
    assert rig.ps(app.spid)["state"] == "running" and rig.stats()["integrity_failures"] == {}
    assert rig.stats()["callback_errors"] == 0
