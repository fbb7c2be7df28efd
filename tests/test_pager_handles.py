"""Kernel-minted disk handles on the kernel's side (pagers.py), on the shared harness
(tests/kernel_harness.py): a pager that answered OPEN without opening is caught by the
disk's EBADHANDLE, the kernel re-OPENs and asks again; what one instance said it opened is
forgotten when another joins (the new instance is asked to OPEN before it is asked to write).
"""
from __future__ import annotations

from kernel_harness import FakePager, Msg, Rig, page, swapped_page


def checks_handles(p: FakePager, m: Msg) -> Msg:
    """A disk that knows only the handles really opened on it (as disk_service does)."""
    if bytes(m["handle"]) not in p.disk.opened:
        return {"err": "EBADHANDLE", "msg": "fake disk: unknown or closed handle"}
    return p.honest(m)


def test_an_open_lie_is_caught_by_ebadhandle_and_reopened() -> None:
    rig = Rig(nframes=1)
    pager = rig.pager()

    def lie_once(p: FakePager, m: Msg) -> Msg:
        del p.behaviour["open"]                   # the next OPEN is honest
        return {}                                 # "opened", and nothing opened
    pager.behaviour["open"] = lie_once
    pager.behaviour["page_out"] = checks_handles
    app = rig.app()
    v = swapped_page(rig, app, "reopened")
    ops = [(m["op"], bytes(m["handle"])) for m in pager.requests if m["op"] != "pager_hello"]
    handle = ops[0][1]                            # the kernel minted it
    assert ops == [("open", handle), ("page_out", handle), ("open", handle),
                   ("page_out", handle)]          # the lie, EBADHANDLE, re-OPEN, ask again
    assert rig.stats()["handle_reopens"] == 1
    assert app.read(v) == page("reopened")          # written, sealed, read back verified


def test_a_new_instance_revalidates_what_the_old_one_opened() -> None:
    rig = Rig(nframes=1)
    first = rig.pager()
    app = rig.app()
    swapped_page(rig, app, "before")
    handle = bytes(first.ops("open")[0]["handle"])
    first.crash()
    second = rig.pager()                          # another instance joins the slot
    second.behaviour["page_out"] = checks_handles
    swapped_page(rig, app, "after")
    asked = [(m["op"], bytes(m["handle"])) for m in second.requests]
    assert asked[:2] == [("open", handle), ("page_out", handle)]
    assert rig.stats()["handle_reopens"] == 0     # opened first, never caught out


def test_a_late_created_from_an_earlier_open_is_not_a_lost_disk() -> None:
    """Two OPENs of one handle race; the disk made it for the first, whose answer (`created`)
    comes last, after a page was stored under the handle.  The disk lost nothing: the page
    keeps its mirror bit and reads back (sim seed 17691446: it was stopped EINTEGRITY, 'no
    mirror holds the page')."""
    rig = Rig(nframes=1)
    pager = rig.pager()
    late: list[int] = []

    def hold_the_first(p: FakePager, m: Msg) -> Msg | None:
        answer = p.honest(m)                       # the disk makes the handle now ...
        if not late:
            late.append(int(m["rid"]))             # ... and the answer is held back
            return None
        return answer
    pager.behaviour["open"] = hold_the_first
    app = rig.app()
    v = app.map(3)
    app.write(v, page("first"))
    app.write(v + 1, page("second"))              # evicts v: the first OPEN (held)
    app.write(v + 2, page("third"))               # evicts v + 1: a second OPEN, answered
    rig.run(0.05)
    assert len(pager.ops("open")) == 2 and pager.ops("page_out")
    pager.peer.send({"created": True, "re": late[0]})          # the first answer, at last
    rig.run(0.05)
    assert rig.stats()["handles_lost"] == 0
    assert app.read(v + 1) == page("second")
    assert app.read(v) == page("first")
