"""Clustered page-outs in process: many pages per PAGE_OUT, each page's answer its own.

The real kernel on the simulated seam (tests/kernel_harness.py).  Pages are written with one
frame while no pager is up, so their write-backs queue HELD; when the pager joins they go in
clustered requests (kernel_daemon/pagers.py).  The pager then falsifies one cluster's answer
in each of the ways --batch-attack does (pager_service/hostile.py falsify_batch: the very same
function): the kernel must take each page's answer on its own, write again only the pages
not truly acknowledged, and read every page back verified; nothing may panic."""
from __future__ import annotations

import random

import pytest
from kernel_harness import App, FakePager, Msg, Rig, page

from kernel_daemon.vm import RECLAIM_SHARE, WRITEBACK_RETRY_MS
from pager_service.hostile import BATCH_ATTACKS, falsify_batch

PAGES = 6


def held_pages(rig: Rig, app: App, n: int = PAGES) -> int:
    """n pages written with one frame and no pager up (each evicted, HELD, its write-back
    waiting for a pager); returns the first vpn."""
    v = app.map(n + 1)
    for i in range(n + 1):
        app.write(v + i, page(f"cluster{i}"))
    rig.run(0.5)
    return v


def attacked_once(kind: str) -> tuple[list[Msg], object]:
    """A behaviour_cluster that falsifies the first cluster with `kind`, answers honestly
    after; and the list that records the falsified cluster."""
    attacked: list[Msg] = []
    rng = random.Random(7)

    def attack(p: FakePager, msg: Msg, reply: Msg) -> list[Msg]:
        if attacked:
            return [reply]
        attacked.append(msg)
        return falsify_batch(kind, reply, rng)
    return attacked, attack


def test_held_write_backs_go_in_one_request_each_page_sealed_on_its_own() -> None:
    rig = Rig(nframes=1)
    app = rig.app()
    v = held_pages(rig, app)
    pager = rig.pager()
    rig.run_until("every page on swap", lambda: rig.stats()["swapped_pages"] == PAGES)
    assert len(pager.clusters) == 1 and len(pager.clusters[0]["more"]) == PAGES - 1
    outs = pager.ops("page_out")
    assert len(outs) == PAGES and len({m["slot"] for m in outs}) == PAGES
    assert len({m["data"] for m in outs}) == PAGES       # each sealed on its own
    for i in range(PAGES):
        assert app.read(v + i) == page(f"cluster{i}")
    assert rig.stats()["integrity_failures"] == {}


def test_cluster_one_sends_one_page_per_request() -> None:
    rig = Rig(nframes=1)
    rig.kernel.pagers.cluster_pages = 1
    app = rig.app()
    v = held_pages(rig, app)
    pager = rig.pager()
    rig.run_until("every page on swap", lambda: rig.stats()["swapped_pages"] == PAGES)
    assert pager.clusters == [] and len(pager.ops("page_out")) == PAGES
    assert app.read(v) == page("cluster0")


@pytest.mark.parametrize("kind", BATCH_ATTACKS)
def test_a_falsified_cluster_costs_at_most_its_own_pages_write_backs(kind: str) -> None:
    rig = Rig(nframes=1)
    app = rig.app()
    v = held_pages(rig, app)
    pager = FakePager(rig, 0, rig.disks[0])
    attacked, pager.behaviour_cluster = attacked_once(kind)
    rig.run_until("every page on swap", lambda: rig.stats()["swapped_pages"] == PAGES)
    assert attacked, "no cluster was sent"
    batch = 1 + len(attacked[0]["more"])
    extra = len(pager.ops("page_out")) - PAGES
    assert 0 <= extra <= batch                   # only the falsified cluster's pages again
    if kind == "twice":
        assert extra == 0                        # the second answer is not heard
    elif kind != "ack_some":
        assert extra > 0                         # nothing in it was taken as acknowledged
    assert rig.stats()["page_outs"] == PAGES     # each page acknowledged once
    for i in range(PAGES):
        assert app.read(v + i) == page(f"cluster{i}")
    assert rig.stats()["integrity_failures"] == {}
    assert rig.kernel.callback_errors == 0


@pytest.mark.parametrize("kind", BATCH_ATTACKS)
def test_mirrored_a_falsified_cluster_loses_nothing(kind: str) -> None:
    rig = Rig(nframes=1, mirrors=2)
    app = rig.app()
    v = held_pages(rig, app)
    bad = FakePager(rig, 0, rig.disks[0])
    attacked, bad.behaviour_cluster = attacked_once(kind)
    rig.pager(1)
    rig.run_until("every page on swap", lambda: rig.stats()["swapped_pages"] == PAGES)
    rig.run_until("nothing left to resync", lambda: rig.stats()["resync_pending"] == 0)
    assert attacked
    for i in range(PAGES):
        assert app.read(v + i) == page(f"cluster{i}")
    assert rig.stats()["integrity_failures"] == {}
    assert rig.kernel.callback_errors == 0


@pytest.mark.parametrize("cluster", [16, 1])
def test_eviction_takes_a_cluster_of_victims_and_writes_them_in_one_request(cluster: int) -> None:
    rig = Rig(nframes=64)                        # a cluster: min(16, 64 // RECLAIM_SHARE) pages
    rig.kernel.pagers.cluster_pages = cluster
    pager = rig.pager()
    app = rig.app()
    v = app.map(256)
    for i in range(256):
        app.write(v + i, page(f"dirty{i}"))
    rig.run_until("the write-backs", lambda: rig.stats()["page_outs"] >= 256 - 64)
    st = rig.stats()
    batch = min(cluster, 64 // RECLAIM_SHARE)
    assert st["page_out_requests"] * batch <= st["page_outs"] + batch
    assert {len(m.get("more", [])) + 1 for m in pager.clusters} <= set(range(2, batch + 1))
    for i in range(256):
        assert app.read(v + i) == page(f"dirty{i}")
    assert rig.stats()["integrity_failures"] == {}


def test_answers_of_any_shape_in_more_cost_only_their_pages() -> None:
    rig = Rig(nframes=1)
    app = rig.app()
    v = held_pages(rig, app)
    pager = FakePager(rig, 0, rig.disks[0])
    # its own slot with an unhashable error, not a map, nothing, a slot of another type
    shapes: list[object] = ["own slot", "ack", None, {"slot": [], "err": "EIO"}]

    def odd(p: FakePager, msg: Msg, reply: Msg) -> list[Msg]:
        if not shapes:
            return [reply]
        more, shape = list(reply["more"]), shapes.pop(0)
        more[0] = {"slot": more[0]["slot"], "err": [1]} if shape == "own slot" else shape
        return [dict(reply, more=more)]
    pager.behaviour_cluster = odd
    rig.run_until("every page on swap", lambda: rig.stats()["swapped_pages"] == PAGES)
    for i in range(PAGES):
        assert app.read(v + i) == page(f"cluster{i}")
    assert rig.kernel.callback_errors == 0 and rig.stats()["integrity_failures"] == {}


def test_a_failed_write_back_is_not_written_again_over_a_later_acknowledged_one() -> None:
    """Found by the batch attacks: a pager stores a page and answers that it failed; the
    page is dirtied and written again (acknowledged while a fault waits for a frame for it,
    so the kernel keeps its bytes); the first write's retry must not write the slot again
    (had that write been stored and answered failed too, the kernel would expect the
    acknowledged version and find the retry's: page integrity lost)."""
    rig = Rig(nframes=1)
    pager = rig.pager()
    app = rig.app()
    v = app.map(2)
    writes: dict[int, int] = {}
    held_back: list[Msg] = []

    def stores_and_lies(p: FakePager, m: Msg) -> Msg | None:
        p.disk.writes.setdefault((bytes(m["handle"]), m["slot"]), []).append(m["data"])
        n = writes[m["slot"]] = writes.get(m["slot"], 0) + 1
        if m["slot"] == 0 and n == 2:
            held_back.append(m)          # answered below, while the fault waits
            return None
        return {"err": "EINVAL", "msg": "stored, says it failed"} if n in (1, 3) else {}
    pager.behaviour["page_out"] = stores_and_lies
    app.write(v, page("a"))
    app.write(v + 1, page("b"))           # v evicted dirty: write 1 stored, "failed"
    first_failed = rig.now
    app.write(v, page("c"))               # from the kernel's bytes, dirtied again
    app.write(v + 1, page("d"))           # v evicted dirty: write 2, its answer held back
    assert held_back
    app.answers_shootdowns = False
    rid = app.send("fault", vpn=v, access="r", refs=[])       # waits for a frame
    rig.run(0.01)
    pager.peer.send({"re": held_back[0]["rid"]})              # write 2 acknowledged
    rig.run(first_failed + 2 * WRITEBACK_RETRY_MS / 1000 - rig.now)   # write 1's retry due
    shot = app.shootdowns[-1]
    app.control.send(dict(app.give_back(shot["vpn"], shot["frame"], shot["want"]),
                          re=shot["rid"]))
    app.answers_shootdowns = True
    app.install(v, "r", app.answer(rid))
    app.read(v + 1)                       # v evicted clean: its swap copy is trusted
    assert writes[0] == 2 and app.read(v) == page("c")
    assert rig.stats()["integrity_failures"] == {}
