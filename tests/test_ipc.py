"""kernel_daemon/ipc.py in process: CALL/RECEIVE/REPLY routing, contracts, limits, death.

The real kernel on the simulated seam (tests/kernel_harness.py): init, an echo server and its
clients are sealed processes speaking frames; the capability to the echo endpoint moves
server -> init -> client inside messages, as in the real system.
"""
from __future__ import annotations

from kernel_harness import (
    ECHO_CONTRACT,
    Rig,
    echo_world,
    packed,
    page,
    second_client,
    serve_one,
    unpacked,
)

from kernel_daemon.kernel import PROC_DEAD_MS


def test_a_call_reaches_the_receiver_stamped_and_the_reply_reaches_only_its_caller() -> None:
    rig = Rig()
    w = echo_world(rig)
    other, other_held = second_client(rig, w, "other")
    first = w.client.call(w.held, packed("echo", data=b"from client"))
    second = other.call(other_held, packed("echo", data=b"from other"))
    rig.run(0.1)
    assert not w.client.answered(first) and not other.answered(second)
    got1 = w.server.answer(w.server.receive(w.echo))          # FIFO on the endpoint
    got2 = w.server.answer(w.server.receive(w.echo))
    assert unpacked(got1["msg"]) == {"kind": "echo", "data": b"from client"}
    assert unpacked(got2["msg"]) == {"kind": "echo", "data": b"from other"}
    assert got1["sender"]["spid"] == w.client.spid and got1["sender"]["name"] == "client"
    assert got1["sender"]["manifest"] == ["echo"]
    assert got2["sender"]["spid"] == other.spid
    assert "err" not in w.server.ask("reply", call=got2["call"], msg=packed("echo", data=b"2"))
    assert unpacked(other.answer(second)["msg"]) == {"kind": "echo", "data": b"2"}
    rig.run(0.1)
    assert not w.client.answered(first)           # not its reply
    w.server.ask("reply", call=got1["call"], msg=packed("echo", data=b"1"))
    assert unpacked(w.client.answer(first)["msg"]) == {"kind": "echo", "data": b"1"}
    st = rig.stats()
    assert st["ipc_calls"] == 5 and st["ipc_replies"] == 5     # 3 name-service, 2 echo
    assert rig.ps(w.client.spid)["ipc_calls_out"] == 2


def test_without_a_capability_a_call_is_refused_and_nothing_is_delivered() -> None:
    rig = Rig()
    lonely = rig.app("lonely")
    assert lonely.ask("call", handle=0, msg=packed("lookup", name="x"))["err"] == "ENOENT"
    w = echo_world(rig)
    nosy = rig.app("nosy")
    waiting = w.server.receive(w.echo)
    for handle in (w.held, w.echo, 7, -1):
        reply = nosy.ask("call", handle=handle, msg=packed("echo", data=b"x"))
        assert reply["err"] == "EBADHANDLE", (handle, reply)
    rig.run(0.1)
    assert not w.server.answered(waiting)
    assert rig.stats()["ipc_calls"] == 2                       # the name service's only


def test_a_call_that_breaks_the_contract_is_refused_before_delivery() -> None:
    rig = Rig()
    w = echo_world(rig)
    waiting = w.server.receive(w.echo)
    bad = [packed("echo", data="text"),                        # wrong type
           packed("echo", data=b"x" * 65),                     # too long
           packed("echo", data=b"x", colour=b"red"),           # unknown field
           packed("echo"),                                     # missing field
           packed("shout", data=b"x"),                         # unknown kind
           b"\x93\x01\x02\x03"]                                # not a map
    for msg in bad:
        reply = w.client.ask("call", handle=w.held, msg=msg)
        assert reply["err"] == "ECONTRACT", reply
    reply = w.client.ask("call", handle=w.held, msg=packed("echo", data=b"x"), caps=[w.held])
    assert reply["err"] == "ECONTRACT"                         # echo carries no capability
    rig.run(0.1)
    assert not w.server.answered(waiting)
    assert rig.stats()["ipc_contract_violations"] == 7
    rid = w.client.call(w.held, packed("echo", data=b"fine"))
    got = w.server.answer(waiting)
    assert unpacked(got["msg"]) == {"kind": "echo", "data": b"fine"}
    bad_reply = w.server.ask("reply", call=got["call"], msg=packed("echo", data=7))
    assert bad_reply["err"] == "ECONTRACT"                     # replies are checked too
    rig.run(0.1)
    assert not w.client.answered(rid)
    w.server.ask("reply", call=got["call"], msg=packed("ok"))
    assert unpacked(w.client.answer(rid)["msg"]) == {"kind": "ok"}
    assert w.server.ask("reply", call=got["call"], msg=packed("ok"))["err"] == "ENOENT"


def test_limits_one_blocking_call_the_message_size_and_the_endpoint_quota() -> None:
    rig = Rig(ipc_max_bytes=256)
    w = echo_world(rig)
    big = w.client.ask("call", handle=w.held, msg=packed("echo", data=b"x" * 300))
    assert big["err"] == "EMSGSIZE"
    rid = w.client.call(w.held, packed("echo", data=b"1"))
    busy = w.client.ask("call", handle=w.held, msg=packed("echo", data=b"2"))
    assert busy["err"] == "EBUSY"
    serve_one(rig, w.server, w.echo, lambda call: (packed("ok"), []))
    assert "err" not in w.client.answer(rid)
    small = rig.app("small", quota={"endpoints": 1})
    h = small.endpoint(ECHO_CONTRACT)
    refused = small.ask("endpoint", contract=ECHO_CONTRACT)
    assert refused["err"] == "EQUOTA" and "endpoints 1/1" in refused["msg"]
    assert "err" not in small.ask("cap_close", handle=h)
    small.endpoint(ECHO_CONTRACT)                              # released with the endpoint
    assert rig.stats()["quota_refusals"] == 1


def test_when_the_server_dies_its_callers_get_epeerdied_at_once_and_ever_after() -> None:
    rig = Rig()
    w = echo_world(rig)
    queued_from, qh = second_client(rig, w, "queued")
    served = w.client.call(w.held, packed("echo", data=b"a"))
    w.server.answer(w.server.receive(w.echo))                  # delivered, not answered
    queued = queued_from.call(qh, packed("echo", data=b"b"))   # waits on the endpoint
    rig.run(0.1)
    w.server.die()                                             # silent: noticed on the clock
    rig.run(PROC_DEAD_MS / 1000 - 1.0)
    assert not w.client.answered(served)
    rig.run(2.0)
    assert w.client.answer(served)["err"] == "EPEERDIED"
    assert queued_from.answer(queued)["err"] == "EPEERDIED"
    later = w.client.ask("call", handle=w.held, msg=packed("echo", data=b"c"))
    assert later["err"] == "EPEERDIED" and "died" in later["msg"]


def test_a_dead_callers_queued_call_is_withdrawn_never_delivered() -> None:
    rig = Rig()
    w = echo_world(rig)
    w.client.call(w.held, packed("echo", data=b"never"))
    rig.run(0.1)
    assert "err" not in w.client.ask("exit", status=0)
    waiting = w.server.receive(w.echo)
    rig.run(1.0)
    assert not w.server.answered(waiting)
    assert rig.stats()["ipc"]["blocked_calls"] == 0


def test_a_page_grant_moves_resident_and_swapped_pages_to_the_receiver() -> None:
    rig = Rig(nframes=2)
    pager = rig.pager()
    w = echo_world(rig)
    v = w.client.map(3)
    for i in range(3):
        w.client.write(v + i, page(f"granted{i}"))
    rig.run(0.05)
    assert v not in w.client.resident                     # v on swap, v+1 and v+2 resident
    reads = len(pager.ops("page_in"))
    refused = w.client.ask("call", handle=w.held, msg=packed("echo", data=b"x"),
                           grant={"addr": v << 12, "npages": 2})
    assert refused["err"] == "ECONTRACT"                  # echo carries no grant
    rid = w.client.call(w.held, packed("bulk"), grant={"addr": v << 12, "npages": 2})
    got = w.server.answer(w.server.receive(w.echo))
    assert got["grant_npages"] == 2
    assert len(pager.ops("page_in")) == reads              # the swapped page moved unread
    base = got["grant_addr"] >> 12
    assert w.server.read(base) == page("granted0") and w.server.read(base + 1) == page("granted1")
    w.server.ask("reply", call=got["call"], msg=packed("ok"))
    assert "err" not in w.client.answer(rid)
    assert w.client.fault(v, "r")["err"] == "ESEGV"        # gone from the sender
    assert w.client.read(v + 2) == page("granted2")        # the rest stays
    assert rig.stats()["pages_granted"] == 2


def test_reply_and_wait_answers_one_call_and_blocks_for_the_next() -> None:
    rig = Rig()
    w = echo_world(rig)
    first = w.client.call(w.held, packed("echo", data=b"1"))
    got = w.server.answer(w.server.receive(w.echo))
    again = w.server.send("reply", call=got["call"], msg=packed("echo", data=b"one"),
                          receive=w.echo)
    assert unpacked(w.client.answer(first)["msg"]) == {"kind": "echo", "data": b"one"}
    rig.run(0.1)
    assert not w.server.answered(again)                    # blocked in the receive
    second = w.client.call(w.held, packed("echo", data=b"2"))
    nxt = w.server.answer(again)                           # the REPLY's answer is the call
    assert unpacked(nxt["msg"]) == {"kind": "echo", "data": b"2"}
    assert nxt["call"] != got["call"] and nxt["sender"]["spid"] == w.client.spid
    w.server.ask("reply", call=nxt["call"], msg=packed("ok"))
    assert unpacked(w.client.answer(second)["msg"]) == {"kind": "ok"}


def test_deliveries_and_replies_are_exactly_the_maps_the_protocol_names() -> None:
    """Ipc packs deliveries and call replies itself (the stamp encoded once per caller):
    decoded, each is exactly the map protocol.py documents -- queued or to a waiting
    receiver, with capabilities and with a page grant -- and the stamp is the caller's."""
    rig = Rig()
    w = echo_world(rig)
    me = rig.kernel.procs.by_spid[w.client.spid]
    stamp = {"spid": me.spid, "name": "client", "program": "client", "digest": me.digest,
             "manifest": ["echo"], "provides": []}
    queued = w.client.call(w.held, packed("echo", data=b"q"))
    rid = w.server.receive(w.echo)
    got = w.server.answer(rid)                                 # queued, then received
    assert got == {"re": rid, "call": got["call"], "msg": packed("echo", data=b"q"),
                   "sender": stamp, "caps": []}
    waiting = w.server.send("reply", call=got["call"], msg=packed("echo", data=b"a"),
                            receive=w.echo)
    assert w.client.answer(queued) == {"re": queued, "msg": packed("echo", data=b"a"),
                                       "caps": []}
    shared = w.client.call(w.held, packed("share"), caps=[w.held])   # to a waiting receiver
    got = w.server.answer(waiting)
    assert got == {"re": waiting, "call": got["call"], "msg": packed("share"),
                   "sender": stamp, "caps": [got["caps"][0]]}
    assert isinstance(got["caps"][0], int) and got["caps"][0] > 0
    assert "err" not in w.server.ask("reply", call=got["call"], msg=packed("ok"))
    assert w.client.answer(shared) == {"re": shared, "msg": packed("ok"), "caps": []}
    v = w.client.map(1)
    w.client.write(v, page("g"))
    granted = w.client.call(w.held, packed("bulk"), grant={"addr": v << 12, "npages": 1})
    got = w.server.answer(w.server.receive(w.echo))
    assert got == {"re": got["re"], "call": got["call"], "msg": packed("bulk"), "sender": stamp,
                   "caps": [], "grant_addr": got["grant_addr"], "grant_npages": 1}
    assert w.server.read(got["grant_addr"] >> 12) == page("g")
    w.server.ask("reply", call=got["call"], msg=packed("ok"))
    assert "err" not in w.client.answer(granted)
