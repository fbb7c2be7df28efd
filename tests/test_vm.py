"""kernel_daemon/vm.py in process: faults, eviction, write-back and verified page-in.

The real kernel on the simulated seam (tests/kernel_harness.py); a sealed process and fake
pagers speak frames to it, and kernel state is read only through STATS and PS.
"""
from __future__ import annotations

from collections.abc import Callable

import pytest
from kernel_harness import ZERO_PAGE, App, FakePager, Msg, Rig, page, swapped_page

from kernel_daemon.vm import SHOOTDOWN_TIMEOUT_MS
from wire.protocol import PAGE_SIZE, PROT_R, PROT_W


def evict(rig: Rig, app: App, vpn: int, fillers: list[int]) -> None:
    """Touch `fillers` until vpn is shot down, then let its write-back settle."""
    for i in range(len(fillers) * 4):
        if vpn not in app.resident:
            break
        app.read(fillers[i % len(fillers)])
    assert vpn not in app.resident, f"page {vpn:#x} was never evicted"
    rig.run(0.05)


def test_first_touch_is_a_demand_zero_minor_fault() -> None:
    rig = Rig(nframes=4)
    app = rig.app()
    vpn = app.map(2)
    reply = app.fault(vpn, "r")
    assert reply["fill"] == "zero" and "data" not in reply
    assert reply["prot"] == PROT_R | PROT_W
    again = app.fault(vpn, "w")                    # the TLB entry only: the page is resident
    assert again["fill"] == "keep" and again["frame"] == reply["frame"]
    st = rig.stats()
    assert (st["minor_faults"], st["major_faults"], st["page_ins"]) == (2, 0, 0)
    assert st["free_frames"] == 3 and st["resident_pages"] == 1
    assert rig.ps(app.spid)["minor_faults"] == 2


def test_a_forbidden_access_is_eprot_and_an_unmapped_one_esegv_and_the_process_goes_on() -> None:
    rig = Rig(nframes=4)
    app = rig.app()
    ro = app.map(1, PROT_R)
    assert app.fault(ro, "w")["err"] == "EPROT"
    assert app.fault(ro, "x")["err"] == "EPROT"
    assert app.fault(ro + 1, "r")["err"] == "ESEGV"
    assert app.fault(0, "r")["err"] == "ESEGV"
    assert app.fault(ro, "r")["fill"] == "zero"       # the process is unharmed
    st = rig.stats()
    assert (st["protection_faults"], st["segfaults"], st["minor_faults"]) == (2, 2, 1)
    assert rig.ps(app.spid)["state"] == "running"


def test_with_no_free_frame_the_oldest_page_is_shot_down_sealed_and_paged_out() -> None:
    rig = Rig(nframes=2)
    pager = rig.pager()
    app = rig.app()
    v = app.map(3)
    a, b = page("secret-A"), page("B")
    app.write(v, a)
    app.write(v + 1, b)
    assert app.shootdowns == []
    app.write(v + 2, page("C"))                   # no frame free: fifo names page v
    assert [(s["vpn"], s["want"]) for s in app.shootdowns] == [(v, False)]
    rig.run(0.05)
    outs = pager.ops("page_out")
    assert len(outs) == 1
    sealed = outs[0]["data"]
    assert len(sealed) == PAGE_SIZE and sealed != a and b"secret-A" not in sealed
    st = rig.stats()
    assert (st["evictions"], st["page_outs"], st["swapped_pages"]) == (1, 1, 1)
    assert st["free_frames"] == 0


def test_a_major_fault_reads_the_page_back_and_a_clean_copy_is_dropped_without_io() -> None:
    rig = Rig(nframes=2)
    pager = rig.pager()
    app = rig.app()
    v = app.map(3)
    for i in range(3):
        app.write(v + i, page(f"page{i}"))
    rig.run(0.05)
    assert v not in app.resident
    assert app.read(v) == page("page0")           # v was swapped: a major fault
    st = rig.stats()
    assert (st["major_faults"], st["page_ins"]) == (1, 1)
    assert len(pager.ops("page_in")) == 1
    v_slot = pager.ops("page_out")[0]["slot"]
    drops = rig.stats()["clean_drops"]
    evict(rig, app, v, [v + 1, v + 2])            # v is clean and its swap copy current
    assert rig.stats()["clean_drops"] == drops + 1
    assert [m["slot"] for m in pager.ops("page_out")].count(v_slot) == 1   # not written again
    assert app.read(v) == page("page0")           # and it still reads back, verified
    assert [m["slot"] for m in pager.ops("page_in")].count(v_slot) == 2


def flip(p: FakePager, m: Msg) -> Msg:
    """A pager that flips one bit of the ciphertext."""
    data = bytearray(p.honest(m)["data"])
    data[100] ^= 1
    return {"data": bytes(data)}


def replay(p: FakePager, m: Msg) -> Msg:
    """A pager that returns the previous version of the slot."""
    return {"data": p.disk.writes[(m["handle"], m["slot"])][-2]}


def swap(p: FakePager, m: Msg) -> Msg:
    """A pager that returns another page's ciphertext."""
    other = next(v for (h, s), v in p.disk.blocks().items() if s != m["slot"])
    return {"data": other}


def zeros(p: FakePager, m: Msg) -> Msg:
    return {"data": ZERO_PAGE}


def short(p: FakePager, m: Msg) -> Msg:
    return {"data": b"\x00" * 100}


def not_bytes(p: FakePager, m: Msg) -> Msg:
    return {"data": "a string"}


LIES: list[tuple[Callable[[FakePager, Msg], Msg], str]] = [
    (flip, "tag"), (replay, "tag"), (swap, "tag"), (zeros, "tag"), (short, "size"),
    (not_bytes, "malformed")]


def two_versions_swapped(rig: Rig, app: App) -> int:
    """Page v written out twice (two versions on swap), page v+1 once; returns v."""
    v = app.map(4)
    for i in range(4):
        app.write(v + i, page(f"old{i}"))
    evict(rig, app, v, [v + 2, v + 3])
    app.write(v, page("new0"))                    # faults it back in, then dirties it
    evict(rig, app, v, [v + 2, v + 3])
    evict(rig, app, v + 1, [v + 2, v + 3])
    return v


@pytest.mark.parametrize("lie,kind", LIES, ids=[f.__name__ for f, _ in LIES])
def test_a_lying_mirror_is_caught_counted_by_kind_and_the_other_mirror_serves(
        lie: Callable[[FakePager, Msg], Msg], kind: str) -> None:
    rig = Rig(nframes=2, mirrors=2)
    bad, good = rig.pager(0), rig.pager(1)
    app = rig.app()
    v = two_versions_swapped(rig, app)
    assert rig.stats()["integrity_failures"] == {}
    asked = len(bad.ops("page_in")), len(good.ops("page_in"))
    written = len(bad.ops("page_out"))
    bad.behaviour["page_in"] = lie
    assert app.read(v) == page("new0")            # never the old, swapped or altered bytes
    st = rig.stats()
    assert st["integrity_failures"] == {kind: 1}
    assert (len(bad.ops("page_in")), len(good.ops("page_in"))) == (asked[0] + 1, asked[1] + 1)
    assert rig.ps(app.spid)["integrity_failures"] == 1
    rig.run(0.1)                                  # the bad mirror is rewritten the verified copy
    assert rig.stats()["repairs"] == 1
    read = good.ops("page_in")[-1]
    assert len(bad.ops("page_out")) == written + 1
    assert bad.ops("page_out")[-1]["data"] == good.disk.current(read["handle"], read["slot"])


def test_when_no_mirror_verifies_only_the_faulting_process_is_stopped() -> None:
    rig = Rig(nframes=2)
    pager = rig.pager()
    victim, bystander = rig.app("victim"), rig.app("bystander")
    v = victim.map(3)
    victim.write(v, page("victim"))
    evict(rig, victim, v, [v + 1, v + 2])
    victim_handle = pager.ops("page_out")[-1]["handle"]
    b = bystander.map(3)
    bystander.write(b, page("bystander"))
    evict(rig, bystander, b, [b + 1, b + 2])
    assert pager.ops("page_out")[-1]["handle"] != victim_handle

    def lie_to_victim(p: FakePager, m: Msg) -> Msg:
        return flip(p, m) if m["handle"] == victim_handle else p.honest(m)
    pager.behaviour["page_in"] = lie_to_victim
    reply = victim.fault(v, "r")
    assert reply["err"] == "EINTEGRITY"
    assert reply["msg"].startswith(f"page integrity lost: page {v:#x}")
    rec = rig.ps(victim.spid)
    assert rec["state"] == "killed" and "page integrity lost" in rec["exit_reason"]
    assert bystander.read(b) == page("bystander")  # the other process is served as before
    st = rig.stats()
    assert st["integrity_failures"] == {"tag": 1} and st["live_processes"] == 1
    assert rig.ps(bystander.spid)["state"] == "running"


def silent_holder(rig: Rig, name: str) -> tuple[App, App, int]:
    """`name` holds the only frame (dirty) and will not answer SHOOTDOWNs; another process
    faults (a write), so the kernel asks `name` for the frame.  Returns (name's App, the
    other, the other's FAULT rid)."""
    rig.pager()
    holder, other = rig.app(name), rig.app("other")
    holder.write(holder.map(1), page(name))
    holder.answers_shootdowns = False
    rid = other.send("fault", vpn=other.map(1), access="w", refs=[])
    return holder, other, rid


def test_a_process_that_does_not_answer_a_shootdown_is_killed_and_its_frame_reused() -> None:
    rig = Rig(nframes=1)
    hung, other, rid = silent_holder(rig, "hung")
    rig.run(SHOOTDOWN_TIMEOUT_MS / 1000 - 0.1)
    assert len(hung.shootdowns) == 1 and not other.answered(rid)
    reply = other.answer(rid)
    assert reply["fill"] == "zero"
    assert hung.killed is not None and "TLB shootdown" in hung.killed
    assert rig.ps(hung.spid)["state"] == "killed"


def test_a_page_unmapped_while_its_page_in_is_in_flight_is_never_installed() -> None:
    rig = Rig(nframes=1)
    pager = rig.pager()
    app = rig.app()
    v = swapped_page(rig, app, "gone")
    held: list[Msg] = []

    def later(p: FakePager, m: Msg) -> None:
        held.append(m)                             # answered by hand, below
    pager.behaviour["page_in"] = later
    rid = app.send("fault", vpn=v, access="r", refs=[])
    rig.run(0.05)
    assert len(held) == 1
    assert "err" not in app.ask("unmap", addr=v << 12, npages=1)
    pager.peer.send(dict(pager.honest(held[0]), re=held[0]["rid"]))
    reply = app.answer(rid)
    assert reply["err"] == "ESEGV" and "unmapped" in reply["msg"]
    st = rig.stats()                               # the frame it was read into is free again
    assert (st["page_ins"], st["swapped_pages"], st["free_frames"]) == (0, 0, 1)
    assert app.fault(v + 1, "r")["fill"] == "zero"
    assert app.fault(v, "r")["err"] == "ESEGV"


def test_a_page_remapped_and_touched_while_the_old_page_in_is_in_flight_is_not_confused() -> None:
    rig = Rig(nframes=1)
    pager = rig.pager()
    app = rig.app()
    v = swapped_page(rig, app, "old")
    held: list[Msg] = []
    pager.behaviour["page_in"] = lambda p, m: held.append(m)   # answered by hand, below
    rid = app.send("fault", vpn=v, access="r", refs=[])
    rig.run(0.05)
    assert len(held) == 1
    assert "err" not in app.ask("unmap", addr=v << 12, npages=2)
    app.resident.pop(v + 1, None)
    app.tlb.pop(v + 1, None)
    assert app.ask("map", addr=v << 12, npages=1, prot=PROT_R | PROT_W)["addr"] == v << 12
    touch = app.send("fault", vpn=v, access="w", refs=[])   # a new page in the same row
    rig.run(0.05)
    pager.peer.send(dict(pager.honest(held[0]), re=held[0]["rid"]))
    assert app.answer(rid)["err"] == "ESEGV"       # the old fault ends: its page went
    reply = app.answer(touch)
    assert reply["fill"] == "zero"                 # the new page is zero, not the old bytes
    app.install(v, "w", reply)
    app.write(v, page("new"))
    st = rig.stats()
    assert (st["page_ins"], st["resident_pages"], st["swapped_pages"]) == (0, 1, 0)
    assert app.read(v) == page("new")


def test_everything_a_finished_process_held_is_given_back() -> None:
    rig = Rig(nframes=2)
    pager = rig.pager()
    app, other = rig.app(), rig.app()
    v = app.map(4)
    for i in range(4):
        app.write(v + i, page(f"p{i}"))
    rig.run(0.05)
    assert rig.stats()["swapped_pages"] == 2
    handle = pager.ops("page_out")[0]["handle"]
    assert "err" not in app.exit()
    rig.run(0.1)
    st = rig.stats()
    assert (st["free_frames"], st["resident_pages"], st["swapped_pages"]) == (2, 0, 0)
    freed = sorted(s for m in pager.ops("free") if m["handle"] == handle for s in m["slots"])
    assert freed == sorted({m["slot"] for m in pager.ops("page_out")})
    assert [m["handle"] for m in pager.ops("close")] == [handle]
    o = other.map(2)                               # and the frames serve someone else
    assert other.fault(o, "w")["fill"] == "zero" and other.fault(o + 1, "w")["fill"] == "zero"
    assert rig.stats()["evictions"] == 2           # only app's two, none for other's pages


def test_when_every_mirror_fails_the_stop_names_each_failure() -> None:
    rig = Rig(nframes=1, mirrors=2)
    p0, p1 = rig.pager(0), rig.pager(1)
    app = rig.app()
    v = swapped_page(rig, app, "both lie")
    p0.behaviour["page_in"], p1.behaviour["page_in"] = flip, short
    reply = app.fault(v, "r")
    assert reply["err"] == "EINTEGRITY"
    assert "pager 0: tag:" in reply["msg"] and "pager 1: size:" in reply["msg"]
    assert rig.stats()["integrity_failures"] == {"tag": 1, "size": 1}


def test_a_wrong_answer_to_a_shootdown_stops_that_process() -> None:
    rig = Rig(nframes=1)
    liar, other, rid = silent_holder(rig, "liar")
    rig.run(0.05)
    [sd] = liar.shootdowns
    other_ctrl_forgery = {"re": sd["rid"], "dirty": True, "data": page("forged")}
    other.control.send(other_ctrl_forgery)             # not the asked connection: ignored
    rig.run(0.05)
    assert not other.answered(rid) and rig.ps(liar.spid)["state"] == "running"
    liar.control.send({"re": sd["rid"], "dirty": True, "data": b"short"})
    assert other.answer(rid)["fill"] == "zero"
    rec = rig.ps(liar.spid)
    assert rec["state"] == "killed" and "answered wrongly" in rec["exit_reason"]
    assert liar.killed is not None


def test_frames_of_pages_unmapped_together_reach_a_waiter_only_once_none_is_a_victim() -> None:
    """An UNMAP of several resident pages frees their frames; a frame waiter served from
    them may reclaim at once (a fault-around batch does: Gather.start).  The policy must by
    then hold none of the unmapped pages' frames: it named one whose page was already gone
    and the kernel stopped (Panic 'policy chose frame ... in state none'; chaos found it)."""
    rig = Rig(nframes=4)
    app = rig.app()
    v = app.map(4)
    for i in range(4):
        app.write(v + i, page(f"page {i}"))
    vm = rig.kernel.vm
    proc = rig.kernel.procs.by_spid[app.spid]
    other = app.map(2)
    got: list[int] = []

    def reclaiming(frame: int) -> None:        # a waiter that asks again, and reclaims
        got.append(frame)
        vm._get_frame(proc, other + 1, got.append)

    vm._get_frame(proc, other, reclaiming, reclaim=False)   # no free frame: it waits
    assert got == []
    assert "err" not in app.ask("unmap", addr=v << 12, npages=4)
    assert len(got) == 2 and len(set(got)) == 2             # both served, from freed frames
    assert rig.stats()["free_frames"] == 2


def test_a_fault_is_counted_logged_and_timed_after_its_reply() -> None:
    """The reply goes before the bookkeeping (vm.Vm._answer): each kind of fault still lands
    in the counters, the process's record, the latency histograms and the fault log."""
    rig = Rig(nframes=2)
    rig.pager()
    app = rig.app()
    v = app.map(3)
    for i in range(3):
        app.write(v + i, page(f"page{i}"))        # 3 minor (zero) faults; v is evicted
    rig.run(0.05)
    assert app.read(v) == page("page0")           # a major fault
    app.read(v)                                   # resident: no fault at all
    st, rec = rig.stats(), rig.ps(app.spid)
    assert (st["minor_faults"], st["major_faults"]) == (3, 1)
    assert (rec["minor_faults"], rec["major_faults"]) == (3, 1)
    hist = rig.ask(rig.observer, "stats")["histograms"]["vm"]
    assert (sum(hist["minor"]["counts"]), sum(hist["major"]["counts"])) == (3, 1)
    log = rig.ask(rig.observer, "fault_log", cursor=0)["records"]
    assert [r[1] for r in log] == ["minor"] * 3 + ["major"]
    assert all(r[3] == app.spid and r[2] >= 0 for r in log)
