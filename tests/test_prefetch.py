"""Prefetching: the trend detector (kernel_daemon/prefetch.py, pure) and the kernel reading
predicted pages ahead of faults (kernel_daemon/vm.py, in process on the simulated seam:
tests/kernel_harness.py; kernel state is read only through STATS and PS)."""
from __future__ import annotations

from typing import Any

import pytest
from kernel_harness import App, FakePager, Msg, Rig, page

from kernel_daemon.prefetch import MAX_DEPTH, Trend, majority

NFRAMES: int = 4


# -- the detector -----------------------------------------------------------------------------
def test_majority_is_the_boyer_moore_vote_checked_by_a_count() -> None:
    assert majority([1, 1, 2, 1]) == 1
    assert majority([3, 1, 3, 2, 3]) == 3
    assert majority([1, 2, 1, 2]) is None            # half is not a majority
    assert majority([1, 2, 3]) is None
    assert majority([]) is None


def faults(trend: Trend, vpns: list[int], hit: bool = False) -> list[int]:
    """Feed faults; return the prediction after the last one."""
    out: list[int] = []
    for v in vpns:
        out = trend.fault(v, hit)
    return out


def test_a_sequential_stream_is_found_after_three_faults() -> None:
    t = Trend("trend")
    assert t.fault(100, False) == [] and t.fault(101, False) == []
    assert t.fault(102, False) == [103]


def test_a_strided_or_descending_stream_is_followed_along_its_delta() -> None:
    assert faults(Trend("trend"), [10, 14, 18]) == [22]
    assert faults(Trend("trend"), [50, 49, 48]) == [47]


def test_random_faults_predict_nothing() -> None:
    t = Trend("trend")
    assert all(t.fault(v, False) == [] for v in [5, 90, 13, 44, 7, 61, 30, 2, 77, 19])


def test_the_same_page_again_is_no_stream() -> None:
    assert faults(Trend("trend"), [7, 7, 7, 7]) == []


def test_an_established_stream_survives_a_stray_fault() -> None:
    t = Trend("trend")
    faults(t, list(range(100, 109)))                 # eight +1 deltas
    t.fault(500, False)
    assert t.fault(109, False) == [110]              # the last 2 and 4 disagree; 8 do not
    assert faults(Trend("trend"), [100, 101, 500, 109]) == []    # no history to outvote


def test_depth_grows_on_hits_and_halves_on_misses() -> None:
    t = Trend("trend")
    faults(t, [0, 1, 2])
    assert len(t.fault(3, True)) == 2
    assert len(faults(t, list(range(4, 4 + 2 * MAX_DEPTH)), hit=True)) == MAX_DEPTH
    assert len(t.fault(100, False)) == MAX_DEPTH // 2    # a major fault: half as deep
    assert t.depth == MAX_DEPTH // 2


def test_readahead_reads_the_next_pages_whatever_came_before_and_off_reads_nothing() -> None:
    assert Trend("readahead").fault(40, False) == [41]
    assert faults(Trend("off"), [1, 2, 3, 4]) == []


# -- the kernel ---------------------------------------------------------------------------
def swapped(prefetch: str, npages: int, quota: dict[str, int] | None = None
            ) -> tuple[Rig, FakePager, App, int]:
    """A rig whose app has npages pages, page i holding page(f"p{i}"), all on swap."""
    rig = Rig(nframes=NFRAMES, prefetch=prefetch)
    pager = rig.pager()
    app = rig.app(quota=quota)
    v = app.map(npages + NFRAMES)
    for i in range(npages + NFRAMES):                # the last NFRAMES push the rest out
        app.write(v + i, page(f"p{i}"))
    rig.run(0.2)
    assert rig.stats()["swapped_pages"] >= npages
    return rig, pager, app, v


def scan(app: App, v: int, order: list[int]) -> None:
    """Read the pages in `order`, checking every byte."""
    for i in order:
        assert app.read(v + i) == page(f"p{i}"), f"page {i}"



def install_all_and_check(rig: Rig, app: App, replies: tuple[tuple[int, int], ...]) -> None:
    """Install each (rid, vpn) fault reply; no callback failed and no frame leaked (32)."""
    for rid, vpn in replies:
        reply = app.answer(rid)
        assert "err" not in reply, reply
        app.install(vpn, "r", reply)
    st = rig.stats()
    assert st["callback_errors"] == 0
    assert st["free_frames"] + rig.ps(app.spid)["resident_pages"] == 32

def test_a_sequential_scan_is_read_ahead_verified_and_mostly_served_without_major_faults(
        ) -> None:
    rig, pager, app, v = swapped("trend", 48)
    majors0, ins0 = rig.stats()["major_faults"], len(pager.ops("page_in"))
    scan(app, v, list(range(48)))
    st = rig.stats()
    assert st["prefetch"] == "trend"
    assert st["major_faults"] - majors0 <= 4          # the three that find the stream, at most
    used = st["prefetch_hits"] + st["fault_around"]  # faulted on, or installed beside one
    assert used >= 44 and used <= st["prefetches"] and st["fault_around"] >= 1
    assert st["integrity_failures"] == {}
    assert len(pager.ops("page_in")) - ins0 == st["prefetches"] + st["major_faults"] - majors0


def test_a_strided_scan_is_read_ahead_and_off_reads_one_page_per_fault() -> None:
    rig, _, app, v = swapped("trend", 48)
    scan(app, v, list(range(0, 48, 3)))
    st = rig.stats()
    assert st["prefetch_hits"] + st["fault_around"] >= 12 and st["prefetch_drops"] == 0
    rig, _, app, v = swapped("off", 48)
    majors0 = rig.stats()["major_faults"]
    scan(app, v, list(range(48)))
    st = rig.stats()
    assert st["major_faults"] - majors0 == 48 and st["prefetches"] == 0


def test_a_lying_pagers_prefetched_page_stops_nothing_until_the_process_really_faults() -> None:
    rig, pager, app, v = swapped("trend", 16)
    asked: list[Msg] = []

    def lie_after_three(p: FakePager, m: Msg) -> Msg:
        asked.append(m)
        reply = p.honest(m)
        if len(asked) > 3:                            # the fourth read is the prefetch of p3
            reply["data"] = bytes(len(reply["data"]))
        return reply
    pager.behaviour["page_in"] = lie_after_three
    scan(app, v, [0, 1, 2])
    rig.run(0.1)
    st = rig.stats()
    assert (st["prefetches"], st["prefetch_failures"]) == (1, 1)
    assert sum(st["integrity_failures"].values()) == 1
    assert rig.ps(app.spid)["state"] == "running"    # nobody is stopped for a prefetch
    assert rig.ps(app.spid)["quota"]["prefetched"][0] == 0
    reply = app.fault(v + 3, "r")                     # the real fault reads again: a lie again
    assert reply["err"] == "EINTEGRITY"
    assert rig.ps(app.spid)["state"] == "killed"


def test_unused_prefetched_pages_stay_within_the_bound_and_are_dropped_without_io() -> None:
    rig, pager, app, v = swapped("trend", 40, quota={"prefetched": 3})
    scan(app, v, list(range(8)))                      # stream one: pages ahead of 7 held
    outs = len(pager.ops("page_out"))
    for i in range(20, 32):                           # stream two pushes them out
        scan(app, v, [i])
        assert rig.ps(app.spid)["quota"]["prefetched"][0] <= 3
    st = rig.stats()
    assert st["prefetch_drops"] >= 1
    assert len(pager.ops("page_out")) == outs         # dropped: the swap copy was current
    scan(app, v, list(range(8, 12)))                  # dropped pages read back, verified


def test_a_fault_on_a_page_being_prefetched_waits_for_that_read_and_no_other() -> None:
    rig, pager, app, v = swapped("trend", 16)
    held: list[Msg] = []

    def hold_after_three(p: FakePager, m: Msg) -> Msg | None:
        if len(pager.ops("page_in")) > 3:
            held.append(m)
            return None                               # answered by hand, below
        return p.honest(m)
    pager.behaviour["page_in"] = hold_after_three
    scan(app, v, [0, 1, 2])
    rig.run(0.05)
    assert len(held) == 1
    rid = app.send("fault", vpn=v + 3, access="r", refs=[])
    rig.run(0.5)
    assert not app.answered(rid) and len(held) == 1   # it waits; nothing is read twice
    pager.peer.send(dict(pager.honest(held[0]), re=held[0]["rid"]))
    reply = app.answer(rid)
    assert reply["fill"] == "data" and reply["data"] == page("p3")
    st = rig.stats()
    assert st["prefetch_hits"] == 1 and st["soft_faults"] >= 1


def hold_page_ins_after(pager: FakePager, n: int) -> list[Msg]:
    """Make `pager` answer its first `n` page-ins and hold every later one (unanswered, in
    the list returned) until the test answers it."""
    held: list[Msg] = []

    def hold(p: FakePager, m: Msg) -> Msg | None:
        if len(pager.ops("page_in")) > n:
            held.append(m)
            return None
        return p.honest(m)
    pager.behaviour["page_in"] = hold
    return held


@pytest.mark.parametrize("how", ["unmap", "exit"])
def test_a_page_unmapped_or_a_process_gone_while_its_prefetch_is_in_flight(how: str) -> None:
    rig, pager, app, v = swapped("trend", 16)
    held = hold_page_ins_after(pager, 3)
    scan(app, v, [0, 1, 2])
    rig.run(0.05)
    assert len(held) == 1 and rig.ps(app.spid)["quota"]["prefetched"][0] == 1
    if how == "unmap":
        assert "err" not in app.ask("unmap", addr=(v + 3) << 12, npages=1)
        assert rig.ps(app.spid)["quota"]["prefetched"][0] == 0
    else:
        app.exit()
    pager.peer.send(dict(pager.honest(held[0]), re=held[0]["rid"]))
    rig.run(0.1)
    st = rig.stats()
    assert st["callback_errors"] == 0 and st["prefetch_hits"] == 0
    if how == "unmap":
        del pager.behaviour["page_in"]
        assert app.fault(v + 3, "r")["err"] == "ESEGV"
        assert app.read(v + 4) == page("p4")          # the rest of the region is intact
    else:
        rec = rig.ps(app.spid)
        assert rec["state"] == "exited" and rec["quota"]["prefetched"][0] == 0


@pytest.mark.parametrize("how", ["unmap", "exit"])
def test_a_fault_waiting_on_a_prefetch_gives_its_frame_back_when_the_page_goes(how: str) -> None:
    rig, pager, app, v = swapped("trend", 16)
    held = hold_page_ins_after(pager, 3)
    scan(app, v, [0, 1, 2])
    rid = app.send("fault", vpn=v + 3, access="r", refs=[])
    rig.run(0.1)                                      # it holds a frame, waiting for the read
    assert not app.answered(rid) and len(held) == 1
    if how == "unmap":
        assert "err" not in app.ask("unmap", addr=v << 12, npages=16 + NFRAMES)
        assert app.answer(rid)["err"] == "ESEGV"
    else:
        app.exit()
    pager.peer.send(dict(pager.honest(held[0]), re=held[0]["rid"]))
    rig.run(0.1)
    st = rig.stats()
    assert st["free_frames"] == NFRAMES and st["callback_errors"] == 0


# -- fault-around (vm.py: a fault installs the verified pages that follow it) ----------------
def test_a_fault_continues_a_stream_only_from_its_last_page_along_its_delta() -> None:
    t = Trend("trend")
    faults(t, [10, 11, 12])
    assert t.continues(13) == 1
    assert t.continues(20) is None                  # a jump: no fault-around, not fed back
    t = Trend("trend")
    faults(t, list(range(10, 20)) + [22])             # the +1 history still votes +1 ...
    assert t.step() == 1 and t.continues(23) == 1
    assert t.continues(25) is None                    # ... but 25 does not follow 22 by +1
    assert Trend("off").continues(13) is None


def around_rig(npages: int, nframes: int = 32, quota: dict[str, int] | None = None,
               policy: str = "fifo") -> tuple[Rig, FakePager, App, int]:
    """A rig with room for fault-around (a quarter of the frames per batch), its app's
    npages pages on swap (page i holding page(f"p{i}"))."""
    rig = Rig(nframes=nframes, prefetch="trend", policy=policy)
    pager = rig.pager()
    app = rig.app(quota=quota)
    v = app.map(npages + nframes)
    for i in range(npages + nframes):
        app.write(v + i, page(f"p{i}"))
    rig.run(0.2)
    assert rig.stats()["swapped_pages"] >= npages
    return rig, pager, app, v


def test_fault_around_serves_a_scan_with_few_faults_every_page_verified() -> None:
    rig, _, app, v = around_rig(128)
    faults0 = rig.stats()["minor_faults"] + rig.stats()["major_faults"]
    replies: list[Msg] = []
    for i in range(128):
        if not app.tlb.get(v + i, 0) & 1:
            replies.append(app.fault(v + i, "r"))
        assert app.bank[app.resident[v + i]] == page(f"p{i}"), f"page {i}"
    st = rig.stats()
    assert st["minor_faults"] + st["major_faults"] - faults0 == len(replies) <= 128 // 4
    assert st["fault_around"] >= 96 and st["integrity_failures"] == {}
    for reply in replies:                             # at most a quarter of the frames each,
        around = reply.get("around", [])              # on frames and pages all distinct
        assert len(around) <= 32 // 4
        frames = [reply["frame"]] + [a[1] for a in around]
        vpns = [reply["vpn"]] + [a[0] for a in around]
        assert len(set(frames)) == len(frames) and len(set(vpns)) == len(vpns)
        assert vpns == list(range(vpns[0], vpns[0] + len(vpns)))    # its stream, in order


def test_fault_around_installs_only_pages_charged_to_the_prefetch_quota() -> None:
    rig, _, app, v = around_rig(96, quota={"prefetched": 3})
    for i in range(96):
        if not app.tlb.get(v + i, 0) & 1:
            reply = app.fault(v + i, "r")
            assert len(reply.get("around", [])) <= 3
            assert rig.ps(app.spid)["quota"]["prefetched"][0] <= 3
        assert app.bank[app.resident[v + i]] == page(f"p{i}")
    assert rig.stats()["fault_around"] >= 1


def test_fault_around_never_installs_a_page_no_mirror_verified() -> None:
    rig, pager, app, v = around_rig(64)
    lied: list[int] = []

    def lie_about_p20_to_p23(p: FakePager, m: Msg) -> Msg:
        reply = p.honest(m)
        if reply.get("data") is not None and m["slot"] in range(20, 24):
            lied.append(m["slot"])
            reply["data"] = bytes(len(reply["data"]))
        return reply
    pager.behaviour["page_in"] = lie_about_p20_to_p23
    for i in range(20):
        if not app.tlb.get(v + i, 0) & 1:
            reply = app.fault(v + i, "r")
            assert all(a[0] - v not in range(20, 24) for a in reply.get("around", []))
        assert app.bank[app.resident[v + i]] == page(f"p{i}")
    rig.run(0.1)
    assert lied and rig.stats()["prefetch_failures"] >= 1
    assert all(v + i not in app.resident for i in range(20, 24))
    assert app.fault(v + 20, "r")["err"] == "EINTEGRITY"   # the real fault reads again


def test_fault_around_pages_are_the_policys_first_victims() -> None:
    rig, _, app, v = around_rig(64, nframes=16)
    for i in range(6):                                # find the stream; then one batch
        if not app.tlb.get(v + i, 0) & 1:
            reply = app.fault(v + i, "r")
    around = [a[0] for a in reply.get("around", [])]
    assert around
    app.shootdowns.clear()
    app.fault(v + 60, "r")                            # a fault elsewhere needs a frame
    rig.run(0.05)
    shot = [m["vpn"] for m in app.shootdowns] + [m[0] for s in app.shootdowns
                                                  for m in s.get("more", [])]
    assert shot and all(vpn in around for vpn in shot)   # not the page faulted on, nor older


BAD_MORE: dict[str, Any] = {
    "missing": None, "short": [], "not a dict": [[False, None]], "an error": [{"err": "EIO"}],
    "a short page": [{"dirty": True, "data": b"x"}], "not a list": {"dirty": False},
}


@pytest.mark.parametrize("how", sorted(BAD_MORE))
def test_a_wrong_answer_to_a_batched_shootdown_kills_only_the_liar(how: str) -> None:
    rig, _, app, v = around_rig(64, nframes=16)
    other = rig.app()
    w = other.map(2)
    other.write(w, page("other"))
    batched: list[Msg] = []

    def answer(msg: Msg) -> None:
        if msg.get("op") == "shootdown" and msg.get("more") and app.alive:
            batched.append(msg)
            reply = dict(app.give_back(msg["vpn"], msg["frame"], msg["want"]), re=msg["rid"])
            if BAD_MORE[how] is None:
                reply.pop("more", None)
            else:
                reply["more"] = BAD_MORE[how]
            app.control.send(reply)
            return
        App._control(app, msg)
    app.control.on_request = lambda _peer, msg: answer(msg)
    for i in range(64):
        if app.killed or not app.alive:
            break
        rid = app.send("fault", vpn=v + i, access="r", refs=[])
        rig.run(0.05)
        if batched:
            break
        app.install(v + i, "r", app.answer(rid))
    rig.run(0.5)
    assert batched, "no batched shootdown was sent"
    assert rig.ps(app.spid)["state"] == "killed"
    st = rig.stats()
    assert st["callback_errors"] == 0
    assert st["free_frames"] + rig.ps(other.spid)["resident_pages"] == 16
    assert other.read(w) == page("other")            # nobody else is touched


def a_batch_reading_ahead() -> tuple[Rig, FakePager, App, int, int, list[Msg], int]:
    """A 64-page stream found and faulted on at its first page not yet in: (rig, pager, app,
    v, that page's index, the page-ins it set off -- held, unanswered --, the next index
    after the pages its reply installed around it)."""
    rig, pager, app, v = around_rig(64, nframes=32)
    scan(app, v, list(range(8)))                      # the stream is found, pages held ahead
    first = next(i for i in range(8, 64) if v + i not in app.tlb)
    held = hold_page_ins_after(pager, len(pager.ops("page_in")))
    reply = app.fault(v + first, "r")                 # installs the held pages after it and
    nxt = first + 1 + len(reply.get("around", []))    # reads ahead (held: still out)
    return rig, pager, app, v, first, held, nxt


def test_a_second_fault_on_a_page_a_batch_waits_for_costs_no_frame_and_no_page() -> None:
    rig, pager, app, v, first, held, nxt = a_batch_reading_ahead()
    rid = app.send("fault", vpn=v + nxt, access="r", refs=[])
    rig.run(0.05)
    m = next(m for m in held if m["slot"] == nxt)     # (slot i holds page i: written in order)
    held.remove(m)
    pager.peer.send(dict(pager.honest(m), re=m["rid"]))
    rig.run(0.05)                                     # nxt is in; its batch waits for reads
    assert not app.answered(rid) and held
    twin = app.send("fault", vpn=v + nxt + 1, access="r", refs=[])   # hostile: a second
    rig.run(0.05)                                     # fault on a page the batch waits for
    del pager.behaviour["page_in"]
    for m in held:
        pager.peer.send(dict(pager.honest(m), re=m["rid"]))
    rig.run(0.2)
    install_all_and_check(rig, app, ((rid, v + nxt), (twin, v + nxt + 1)))
    scan(app, v, list(range(first, 64)))              # every page still what was written


def test_a_page_a_batch_read_and_a_fault_then_pinned_is_installed_once_in_one_frame() -> None:
    # A batch waits for frames (their shootdowns held); a page it waits to read comes in,
    # and a second fault (hostile: the first is still out) takes that page for itself and
    # waits for a frame behind the batch's.  The batch must not install the page the fault
    # pinned: two frames for one page, one of them lent and never reclaimable (the policy
    # would later choose it and the kernel would panic).
    rig, pager, app, v, _, held, nxt = a_batch_reading_ahead()
    rig.run(0.05)
    m = next(m for m in held if m["slot"] == nxt)
    held.remove(m)
    pager.peer.send(dict(pager.honest(m), re=m["rid"]))
    rig.run(0.05)                                     # nxt is HELD; nxt + 1 still out
    assert any(m["slot"] == nxt + 1 for m in held)
    app.answers_shootdowns = False
    app.shootdowns.clear()
    batch = app.send("fault", vpn=v + nxt, access="r", refs=[])
    rig.run(0.05)                                     # its frames wait for the shootdowns
    assert not app.answered(batch) and app.shootdowns
    del pager.behaviour["page_in"]
    for m in held:                                    # the reads end: nxt + 1 is HELD, and
        pager.peer.send(dict(pager.honest(m), re=m["rid"]))   # the batch waits for frames
    rig.run(0.05)
    assert not app.answered(batch)
    twin = app.send("fault", vpn=v + nxt + 1, access="r", refs=[])
    rig.run(0.05)                                     # pins nxt + 1; a frame after the batch's
    app.answers_shootdowns = True
    for msg in list(app.shootdowns):
        app.shootdowns.remove(msg)
        App._control(app, msg)
    rig.run(0.3)
    install_all_and_check(rig, app, ((batch, v + nxt), (twin, v + nxt + 1)))
    scan(app, v, list(range(64)))                     # evicts the batch's pages: no panic
    assert rig.stats()["callback_errors"] == 0


def test_a_page_a_batch_waited_to_read_that_failed_is_left_to_the_fault_that_reads_it_again(
        ) -> None:
    # The batch's read of nxt + 1 fails verification (SWAPPED again); a real fault then reads
    # it (PAGING_IN, its PageIn's) and waits for a frame behind the batch's.  The batch must
    # leave that page alone: not set it SWAPPED under the PageIn (a third fault would then
    # read it a second time, into a second frame).
    rig, pager, app, v = around_rig(64, nframes=32)
    scan(app, v, list(range(8)))
    first = next(i for i in range(8, 64) if v + i not in app.tlb)
    held = hold_page_ins_after(pager, len(pager.ops("page_in")))
    reply = app.fault(v + first, "r")
    nxt = first + 1 + len(reply.get("around", []))
    rig.run(0.05)
    m = next(m for m in held if m["slot"] == nxt)
    held.remove(m)
    pager.peer.send(dict(pager.honest(m), re=m["rid"]))
    rig.run(0.05)
    app.answers_shootdowns = False
    app.shootdowns.clear()
    batch = app.send("fault", vpn=v + nxt, access="r", refs=[])
    rig.run(0.05)
    assert not app.answered(batch) and app.shootdowns
    del pager.behaviour["page_in"]
    for m in held:                                    # nxt + 1's read is corrupted
        answer = pager.honest(m)
        if m["slot"] == nxt + 1:
            answer["data"] = bytes(len(answer["data"]))
        pager.peer.send(dict(answer, re=m["rid"]))
    rig.run(0.05)
    assert rig.stats()["prefetch_failures"] == 1
    reads = hold_page_ins_after(pager, len(pager.ops("page_in")))
    again = app.send("fault", vpn=v + nxt + 1, access="r", refs=[])   # a PageIn: PAGING_IN
    rig.run(0.05)
    app.answers_shootdowns = True
    for msg in list(app.shootdowns):
        app.shootdowns.remove(msg)
        App._control(app, msg)
    rig.run(0.05)                                     # the batch is in; the PageIn still reads
    assert app.answered(batch) and not app.answered(again)
    third = app.send("fault", vpn=v + nxt + 1, access="r", refs=[])
    rig.run(0.05)
    del pager.behaviour["page_in"]
    for m in reads:
        pager.peer.send(dict(pager.honest(m), re=m["rid"]))
    rig.run(0.3)
    assert len(reads) == 1                            # the page was read once
    for r, vpn in ((batch, v + nxt), (again, v + nxt + 1), (third, v + nxt + 1)):
        answer = app.answer(r)
        assert "err" not in answer, answer
        app.install(vpn, "r", answer)
    st = rig.stats()
    assert st["callback_errors"] == 0
    assert st["free_frames"] + rig.ps(app.spid)["resident_pages"] == 32
    scan(app, v, list(range(64)))
    assert rig.stats()["callback_errors"] == 0
