"""kernel_daemon/caps.py in process: capability tables, through the kernel's message interface.

A handle means something only in the table of the process holding it; handles are never
reused, so a closed one is stale forever and any other number is forged; a capability moves
only inside a message (the sender's handle is looked up, a new one minted for the receiver).
"""
from __future__ import annotations

from kernel_harness import Rig, echo_world, look_up, packed, serve_one, unpacked


def handles_of(rig: Rig, spid: int) -> int:
    """How many handles process `spid`'s table holds (STATS)."""
    return int(rig.stats()["ipc"]["handles_by_spid"].get(str(spid), 0))


def test_a_handle_is_only_good_in_its_holders_table() -> None:
    rig = Rig()
    w = echo_world(rig)
    stranger = rig.app("stranger")
    stranger.endpoint({"name": "own", "calls": {"x": {}}, "replies": {"ok": {}}})
    assert w.held == 1                             # the number is taken in both tables ...
    reply = stranger.ask("call", handle=w.held, msg=packed("echo", data=b"x"))
    assert reply["err"] == "EINVAL"                # ... and there names stranger's own endpoint
    reply = stranger.ask("call", handle=w.held + 1, msg=packed("echo", data=b"x"))
    assert reply["err"] == "EBADHANDLE" and "never issued" in reply["msg"]
    rid = w.client.call(w.held, packed("echo", data=b"mine"))
    got = serve_one(rig, w.server, w.echo, lambda call: (packed("ok"), []))
    assert got["sender"]["spid"] == w.client.spid
    assert "err" not in w.client.answer(rid)


def test_a_closed_handle_is_stale_forever_and_numbers_are_never_reused() -> None:
    rig = Rig()
    w = echo_world(rig)
    before = handles_of(rig, w.client.spid)
    assert "err" not in w.client.ask("cap_close", handle=w.held)
    assert handles_of(rig, w.client.spid) == before - 1
    reply = w.client.ask("call", handle=w.held, msg=packed("echo", data=b"x"))
    assert reply["err"] == "EBADHANDLE" and "stale" in reply["msg"]
    assert w.client.ask("cap_close", handle=w.held)["err"] == "EBADHANDLE"
    again = look_up(rig, w, w.client)              # the same endpoint, a new handle
    assert again > w.held
    rid = w.client.call(again, packed("echo", data=b"y"))
    serve_one(rig, w.server, w.echo, lambda call: (packed("ok"), []))
    assert "err" not in w.client.answer(rid)
    assert w.client.ask("cap_close", handle=0)["err"] == "EINVAL"   # the name service stays


def test_capabilities_in_a_message_are_looked_up_in_the_senders_table_and_minted_anew() -> None:
    rig = Rig()
    w = echo_world(rig)
    waiting = w.server.receive(w.echo)
    for forged in ([99], ["1"], [True], list(range(17))):
        reply = w.client.ask("call", handle=w.held, msg=packed("share"), caps=forged)
        assert reply["err"] in ("EBADHANDLE", "EINVAL"), (forged, reply)
    rig.run(0.1)
    assert not w.server.answered(waiting)          # nothing forged reached the server
    rid = w.client.call(w.held, packed("share"), caps=[0])   # the name service, by handle 0
    got = w.server.answer(waiting)
    assert unpacked(got["msg"]) == {"kind": "share"}
    [minted] = got["caps"]
    assert minted not in (0, w.echo)
    assert rig.stats()["ipc_caps_transferred"] == 2  # the register call's and this one
    w.server.ask("reply", call=got["call"], msg=packed("ok"))
    assert "err" not in w.client.answer(rid)
    rid = w.server.call(minted, packed("lookup", name="echo"))   # the minted handle works
    serve_one(rig, w.init, w.names, lambda call: (packed("missing"), []))
    assert unpacked(w.server.answer(rid)["msg"]) == {"kind": "missing"}


def test_the_owner_closing_its_endpoint_kills_it_for_every_holder() -> None:
    rig = Rig()
    w = echo_world(rig)
    assert "err" not in w.server.ask("cap_close", handle=w.echo)
    reply = w.client.ask("call", handle=w.held, msg=packed("echo", data=b"x"))
    assert reply["err"] == "EPEERDIED" and "closed it" in reply["msg"]
    assert w.server.ask("receive", handle=w.echo)["err"] == "EBADHANDLE"
    assert rig.stats()["ipc"]["endpoint_count"] == 1           # the name service's only


def test_only_an_endpoints_owner_may_receive_on_it() -> None:
    rig = Rig()
    w = echo_world(rig)
    reply = w.client.ask("receive", handle=w.held)
    assert reply["err"] == "EPERM"
    reply = w.client.ask("receive", handle=0)
    assert reply["err"] == "EPERM"


def test_a_restarted_init_inherits_its_predecessors_handles_and_stash() -> None:
    rig = Rig()
    w = echo_world(rig)
    assert "err" not in w.init.ask("stash", data=b"echo -> handle")
    assert w.client.ask("stash", data=b"forged")["err"] == "EPERM"
    assert "err" not in w.init.exit()
    successor = rig.app("init", role="init")
    assert successor.registered["stash"] == b"echo -> handle"
    names = successor.endpoint({"name": "names2", "calls": {"lookup": {}},
                                "replies": {"found": {"caps": 1}}}, nameservice=True)
    late = rig.app("late")
    rid = late.call(0, packed("lookup"))                   # handle 0 is the new name service
    got = successor.answer(successor.receive(names))
    successor.ask("reply", call=got["call"], msg=packed("found"), caps=[w.published])
    held = late.answer(rid)["caps"][0]                     # the inherited handle still works
    rid = late.call(held, packed("echo", data=b"hi"))
    got = serve_one(rig, w.server, w.echo, lambda call: (packed("echo", data=b"hi"), []))
    assert got["sender"]["spid"] == late.spid
    assert unpacked(late.answer(rid)["msg"]) == {"kind": "echo", "data": b"hi"}
