"""Bad input to the kernel: every malformed, oversized or hostile message gets a clear error
reply, and the kernel keeps serving (real kernel process, raw ZeroMQ client)."""
from __future__ import annotations

from collections.abc import Callable

import msgpack
import pytest

from host_tools.system import System
from kernel_daemon.kernel import FRAME_SLACK_BYTES
from wire.client import Client
from wire.protocol import (
    IPC_MAX_PAYLOAD_BYTES,
    MAX_FRAME_BYTES,
    PROT_R,
    PROT_W,
    PROT_X,
    Err,
    Op,
    ServiceError,
    encode,
    request,
)


def registered(system: System) -> tuple[Client, dict]:
    """A raw connection registered as a sealed process (not attached)."""
    cred = system.admit("memstress", "raw")
    c = Client(system.kernel_addr, keys=system.credential_keyring(cred))
    reg = c.call(Op.REGISTER, cred=cred)
    reg["cred"] = cred                                # the control connection proves it too
    return c, reg


@pytest.fixture
def system(make_system: Callable[..., System]) -> System:
    return make_system(frames=4, disk_size_mib=4)


RAW_FRAMES = [
    (b"\xc1\xff not msgpack", Err.BADMSG),
    (msgpack.packb([1, 2, 3]), Err.BADMSG),
    (msgpack.packb({"op": "fault"}), Err.BADMSG),                       # no rid
    (msgpack.packb({"op": "no_such_op", "rid": 1}), Err.NOSYS),
    (msgpack.packb({"op": "fault", "rid": 1, "vpn": "x", "access": "r", "refs": []}), Err.INVAL),
    (msgpack.packb({"op": "map", "rid": 1, "npages": True, "prot": 3}), Err.INVAL),
    (b"\x00" * (MAX_FRAME_BYTES + 1), Err.MSGSIZE),
]


@pytest.mark.parametrize("frame,code", RAW_FRAMES,
                         ids=[f"{c.value}-{i}" for i, (_, c) in enumerate(RAW_FRAMES)])
def test_malformed_frames_get_error_replies(system: System, frame: bytes, code: Err) -> None:
    with Client(system.kernel_addr, keys=system.keyring("observer")) as c:
        c.send_raw(frame)
        reply = c.recv_reply()
        assert reply["err"] == code and reply["msg"]
        assert c.call(Op.PING)["service"] == "kernel"          # still serving


def test_unregistered_connection_gets_only_errors(system: System) -> None:
    with Client(system.kernel_addr, keys=system.keyring("observer")) as c:
        for op, fields in [(Op.FAULT, {"vpn": 1, "access": "r", "refs": []}),
                           (Op.MAP, {"npages": 1, "prot": 1}), (Op.EXIT, {"status": 0})]:
            with pytest.raises(ServiceError) as e:
                c.call(op, **fields)
            assert e.value.code == Err.NOTREG


def test_registered_process_mistakes_are_errors_not_crashes(system: System) -> None:
    c, reg = registered(system)
    cases = [
        (Op.MAP, {"npages": 0, "prot": PROT_R}, Err.INVAL),
        (Op.MAP, {"npages": 1, "prot": PROT_W | PROT_X}, Err.PERM),           # W^X
        (Op.MAP, {"npages": 1, "prot": 64}, Err.INVAL),
        (Op.MAP, {"addr": 123, "npages": 1, "prot": PROT_R}, Err.INVAL),      # unaligned
        (Op.MAP, {"npages": 10 ** 9, "prot": PROT_R}, Err.INVAL),
        (Op.UNMAP, {"addr": 1 << 40, "npages": 1}, Err.SEGV),
        (Op.FAULT, {"vpn": 1, "access": "r", "refs": []}, Err.PERM),          # not attached
        (Op.HEARTBEAT, {"refs": []}, Err.PERM),                              # wrong connection
        (Op.ATTACH, {"spid": reg["spid"], "secret": b"forged-secret!!!"}, Err.PERM),
        (Op.REGISTER, {"cred": system.admit("memstress", "again")}, Err.PERM),   # twice
    ]
    for op, fields, code in cases:
        with pytest.raises(ServiceError) as e:
            c.call(op, **fields)
        assert e.value.code == code, (op, fields, e.value)
    ctl = Client(system.kernel_addr, keys=system.credential_keyring(reg["cred"]))
    ctl.call(Op.ATTACH, spid=reg["spid"], secret=reg["secret"])
    for vpn, access, code in [(-1, "r", Err.SEGV), (1 << 60, "r", Err.SEGV), (5, "q", Err.INVAL)]:
        with pytest.raises(ServiceError) as e:
            c.call(Op.FAULT, vpn=vpn, access=access, refs=[])
        assert e.value.code == code
    addr = c.call(Op.MAP, npages=1, prot=PROT_R | PROT_W)["addr"]
    reply = c.call(Op.FAULT, vpn=addr >> 12, access="w", refs=["junk", None, 2 ** 63])
    assert reply["fill"] == "zero"                       # junk refs are ignored, not fatal
    ctl.close()
    c.close()


def test_forged_pager_replies_are_ignored(system: System) -> None:
    """A reply to a request the kernel never sent to this connection changes nothing."""
    with Client(system.kernel_addr, keys=system.keyring("observer")) as c:
        for rid in (1, 2, 3, 10 ** 6):
            c.send_raw(msgpack.packb({"re": rid, "data": b"\x00" * 4096}))
        assert c.call(Op.PING)["service"] == "kernel"
        assert c.call(Op.STATS)["kernel"]["bad_messages"] >= 4


def test_multi_frame_empty_and_oversized_messages_are_refused(system: System) -> None:
    """The kernel's receive path reads the routing id and the body separately: a message of
    several frames (after any other), an empty frame and a frame past the kernel's own limit
    each get their error, each to its sender, and the next request is served."""
    kernel_limit = IPC_MAX_PAYLOAD_BYTES + FRAME_SLACK_BYTES
    with Client(system.kernel_addr, keys=system.keyring("observer")) as c:
        ping = encode(request(Op.PING, 7))
        for frames, code, text in [
                ([ping, ping], Err.BADMSG, "got 2"),
                ([b"", b"x", ping], Err.BADMSG, "got 3"),
                ([b""], Err.BADMSG, "not a msgpack message"),
                ([b"\x00" * (kernel_limit + 1)], Err.MSGSIZE, "the kernel's"),
        ]:
            c.sock.send_multipart(frames)
            reply = c.recv_reply()
            assert reply["err"] == code and text in reply["msg"], (len(frames), reply)
            assert reply["re"] is None
            assert c.call(Op.PING)["service"] == "kernel"          # still serving, in order
