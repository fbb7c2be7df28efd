"""kernel_daemon/pagers.py in process: slot admission, timeouts, retries, failover, restarts.

The real kernel on the simulated seam (tests/kernel_harness.py): fake pager instances say
hello and serve requests; the simulated clock makes every timeout exact, with no sleeping.
"""
from __future__ import annotations

from kernel_harness import FakePager, Msg, Rig, page, swapped_page

from kernel_daemon.pagers import TRANSIENT_BACKOFF_MS

TIMEOUT_MS = 1000


def withhold(p: FakePager, m: Msg) -> None:
    """A pager that never answers."""
    return None


def test_a_pager_joins_only_a_slot_that_exists_and_only_one_slot_per_connection() -> None:
    rig = Rig(mirrors=2)
    p0 = rig.pager(0)
    assert [s["up"] for s in rig.pager_slots()] == [True, False]
    assert rig.ask(p0.peer, "pager_hello", mirror=1, host="h", hostpid=0)["err"] == "EPERM"
    stranger = rig.h.peer("stranger", "sim://kernel")
    assert rig.ask(stranger, "pager_hello", mirror=2, host="h", hostpid=0)["err"] == "EINVAL"
    assert rig.ask(stranger, "pager_hello", mirror=-1, host="h", hostpid=0)["err"] == "EINVAL"
    app = rig.app()
    reply = rig.ask(app.syscalls, "pager_hello", mirror=1, host="h", hostpid=0)
    assert reply["err"] == "EPERM"                # a sealed process cannot be a pager
    assert [s["up"] for s in rig.pager_slots()] == [True, False]
    rig.pager(1)
    slots = rig.pager_slots()
    assert [s["up"] for s in slots] == [True, True] and [s["joins"] for s in slots] == [1, 1]


def test_a_silent_pager_is_marked_down_and_up_again_when_it_speaks() -> None:
    rig = Rig()
    p = rig.pager()
    p.alive = False                               # stops saying hello (not crashed)
    rig.run(2.5)
    assert rig.pager_slots()[0]["up"]
    rig.run(1.5)                                  # PAGER_DEAD_MS (3 s) of silence
    assert not rig.pager_slots()[0]["up"]
    p.alive = True
    p.hello()
    rig.run(0.01)
    slot = rig.pager_slots()[0]
    assert slot["up"] and slot["joins"] == 1      # the same instance: not a restart
    assert rig.stats()["pager_restarts"] == 0


def test_a_withheld_page_in_times_out_and_the_other_mirror_serves_it() -> None:
    rig = Rig(nframes=1, mirrors=2, pager_timeout_ms=TIMEOUT_MS)
    bad, good = rig.pager(0), rig.pager(1)
    app = rig.app()
    v = swapped_page(rig, app, "mirrored")
    bad.behaviour["page_in"] = withhold
    rid = app.send("fault", vpn=v, access="r", refs=[])
    rig.run(TIMEOUT_MS / 1000 - 0.01)
    assert not app.answered(rid)      # waiting on mirror 0, nobody else asked
    assert len(good.ops("page_in")) == 0
    reply = app.answer(rid)
    assert reply["fill"] == "data" and reply["data"] == page("mirrored")
    assert len(good.ops("page_in")) == 1
    st = rig.stats()
    assert st["integrity_failures"] == {"timeout": 1} and st["pager_timeouts"] == 1
    assert not rig.pager_slots()[0]["up"]          # suspected ...
    written = len(bad.ops("page_out"))
    rig.run_until("the repair", lambda: rig.stats()["repairs"] == 1)   # ... until its hello
    assert len(bad.ops("page_out")) == written + 1
    assert bad.ops("page_out")[-1]["data"] == good.ops("page_out")[-1]["data"]


def test_a_transient_error_is_asked_again_after_a_backoff() -> None:
    rig = Rig(nframes=1, pager_timeout_ms=TIMEOUT_MS)
    pager = rig.pager()
    app = rig.app()
    v = swapped_page(rig, app, "transient")

    def disk_down_once(p: FakePager, m: Msg) -> Msg:
        del p.behaviour["page_in"]                # the next ask is answered honestly
        return {"err": "ETIMEDOUT", "msg": "fake: my disk did not answer"}
    pager.behaviour["page_in"] = disk_down_once
    rid = app.send("fault", vpn=v, access="r", refs=[])
    rig.run(TRANSIENT_BACKOFF_MS / 1000 - 0.01)
    assert len(pager.ops("page_in")) == 1 and not app.answered(rid)
    reply = app.answer(rid)
    assert reply["data"] == page("transient")
    assert len(pager.ops("page_in")) == 2
    st = rig.stats()
    assert (st["pager_transient_errors"], st["pager_retries"]) == (1, 1)
    assert st["integrity_failures"] == {} and st["pager_timeouts"] == 0


def test_a_dead_pagers_requests_are_handed_to_the_next_instance() -> None:
    rig = Rig(nframes=1, pager_timeout_ms=TIMEOUT_MS, pager_retries=5)
    first = rig.pager()
    app = rig.app()
    v = swapped_page(rig, app, "survives")
    first.behaviour["page_in"] = withhold
    rid = app.send("fault", vpn=v, access="r", refs=[])
    rig.run(0.1)
    asked = first.ops("page_in")[-1]
    first.crash()                                 # dies holding the request
    rig.run(0.5)
    assert not app.answered(rid)
    second = rig.pager()                          # the supervisor's restart, same disk
    reply = app.answer(rid)
    assert reply["data"] == page("survives")
    again = second.ops("page_in")
    assert [(m["handle"], m["slot"]) for m in again] == [(asked["handle"], asked["slot"])]
    st = rig.stats()
    assert st["pager_restarts"] == 1 and st["integrity_failures"] == {}
    assert rig.pager_slots()[0]["joins"] == 2


def test_with_no_pager_up_a_page_out_waits_held_and_faults_are_served_from_the_kernel() -> None:
    rig = Rig(nframes=1, pager_timeout_ms=TIMEOUT_MS, pager_retries=5)
    app = rig.app()
    v = app.map(2)
    app.write(v, page("held"))
    app.read(v + 1)                               # v is evicted; no pager to write it to
    rig.run(1.0)
    st = rig.stats()
    assert st["page_outs"] == 0 and st["swapped_pages"] == 0
    assert app.read(v) == page("held")            # HELD: a minor fault, no I/O
    st = rig.stats()
    assert st["soft_faults"] == 1 and st["major_faults"] == 0
    app.read(v + 1)                               # evict it again, still no pager
    pager = rig.pager()
    rig.run_until("the page-out", lambda: rig.stats()["page_outs"] == 1)
    assert len(pager.ops("page_out")) == 1 and rig.stats()["writeback_failures"] == 0
    assert app.read(v) == page("held")            # now from swap, verified
    assert rig.stats()["major_faults"] == 1


def test_a_page_out_whose_budget_runs_out_is_counted_and_written_later() -> None:
    rig = Rig(nframes=1, pager_timeout_ms=TIMEOUT_MS, pager_retries=1)
    app = rig.app()
    v = app.map(2)
    app.write(v, page("late"))
    app.read(v + 1)
    rig.run_until("the write-back gives up", lambda: rig.stats()["writeback_failures"] >= 1)
    assert rig.stats()["page_outs"] == 0 and rig.stats()["pager_timeouts"] >= 1
    rig.pager()
    rig.run_until("the retried write-back", lambda: rig.stats()["page_outs"] == 1)
    assert rig.stats()["swapped_pages"] == 1
    assert app.read(v) == page("late")


def test_a_slots_silence_is_measured_on_the_kernels_clock() -> None:
    rig = Rig()
    p = rig.pager()
    assert rig.pager_slots()[0]["silent_ms"] < 500
    p.alive = False
    rig.run(2.0)
    assert 2000 <= rig.pager_slots()[0]["silent_ms"] <= 2600   # the watchdog reads this
