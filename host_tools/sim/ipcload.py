"""IPC in the simulation: a server (the process admitted as init) and clients that call it.

The server creates the name-service endpoint (so it is handle 0 of every process), then
RECEIVEs forever.  A call may carry a page grant: the server reads every granted page back
and checks it holds what the caller wrote (the caller names the pattern in the message),
unmaps the region, and answers with REPLY-and-RECEIVE.  Now and then, between calls, the
server *remaps*: it maps a region at an explicit address, near the top of its address
space when the seed says so -- a receiver changing its address space while a grant to it
is settling (the grant may complete from a timer).

A client, between its page touches, sometimes calls: a plain ``ping``, or a ``put`` that
maps a fresh region, writes a pattern into each page and grants the region.  Every call must
be answered exactly once -- a reply, an error, or EPEERDIED when the server is gone.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgpack

from wire.protocol import ACCESS_READ, ACCESS_WRITE, PAGE_SHIFT, PAGE_SIZE, PROT_R, PROT_W, Err, Op

if TYPE_CHECKING:
    from host_tools.sim.workload import SimProcess

CONTRACT: dict[str, Any] = {
    "name": "sim",
    "calls": {"ping": {"fields": {"n": {"type": "int", "min": 0, "max": 1 << 40}}},
              "put": {"fields": {"n": {"type": "int", "min": 0, "max": 1 << 40}},
                      "grant": True}},
    "replies": {"ok": {"fields": {"n": {"type": "int", "min": 0, "max": 1 << 40}}}},
}
#: The top of a process's address space, in pages (pagetable.MAX_VPN).
MAX_VPN: int = (1 << (48 - PAGE_SHIFT)) - 1
#: Errors a call may end with that are answers, not violations (besides a refused grant:
#: EINVAL "call: page grant failed ...", e.g. when the receiver has no room for the pages).
CALL_ANSWERS: frozenset[str] = frozenset({str(Err.PEERDIED)})


def pattern(name: str, n: int, i: int) -> bytes:
    """The bytes a client writes into page i of grant n (the server checks them)."""
    return (b"%s/grant%d/page%d;" % (name.encode(), n, i)).ljust(32, b"-") * (PAGE_SIZE // 32)


# -- the server -------------------------------------------------------------------------------
def serve(proc: SimProcess) -> None:
    """Create the name-service endpoint, then RECEIVE."""
    proc.state = "serving"
    proc._request(False, Op.ENDPOINT, {"contract": CONTRACT, "nameservice": True},
                  lambda reply: _endpoint_made(proc, reply))


def _endpoint_made(proc: SimProcess, reply: dict[str, Any]) -> None:
    if not proc._ok(reply, "endpoint"):
        return
    proc.endpoint = reply["handle"]
    _receive(proc, Op.RECEIVE, {"handle": proc.endpoint})


def _receive(proc: SimProcess, op: Op, fields: dict[str, Any]) -> None:
    """RECEIVE (or REPLY-and-RECEIVE); the answer is the next call."""
    proc.receive_rid = proc._request(False, op, fields, lambda reply: _got_call(proc, reply))


def _got_call(proc: SimProcess, reply: dict[str, Any]) -> None:
    if proc.state != "serving":
        return
    if not proc._ok(reply, "receive"):
        return
    msg = msgpack.unpackb(reply["msg"], raw=False)
    cid, n = reply["call"], msg.get("n", 0)
    sender = reply.get("sender", {}).get("name", "?")

    def answer() -> None:
        if proc.state != "serving":
            return
        if proc.wants_exit:
            proc._request(False, Op.REPLY, {"call": cid, "msg": msgpack.packb(
                {"kind": "ok", "n": n})}, lambda r: _exit_server(proc, r))
            return
        _receive(proc, Op.REPLY, {"call": cid, "msg": msgpack.packb({"kind": "ok", "n": n}),
                                  "receive": proc.endpoint})

    then = answer
    if proc.rng.random() < 0.3:
        then = lambda: _remap(proc, answer)           # noqa: E731
    addr = reply.get("grant_addr")
    if addr is None:
        then()
        return
    vpn0, npages = addr >> PAGE_SHIFT, reply["grant_npages"]
    for i in range(npages):
        proc.wrote[vpn0 + i] = pattern(sender, n, i)  # what the caller wrote there
    _check_pages(proc, vpn0, npages, 0, then)


def _check_pages(proc: SimProcess, vpn0: int, npages: int, i: int,
                 then: Callable[[], None]) -> None:
    """Read granted page i.. (each read is checked against the caller's pattern), unmap."""
    if proc.state != "serving":
        return
    if i < npages:
        proc.access(vpn0 + i, ACCESS_READ, None,
                    lambda: _check_pages(proc, vpn0, npages, i + 1, then))
        return
    for v in range(vpn0, vpn0 + npages):
        proc.wrote.pop(v, None)
        proc._forget(v)
    def unmapped(reply: dict[str, Any]) -> None:
        if proc._ok(reply, "unmap grant"):
            then()

    proc._request(False, Op.UNMAP, {"addr": vpn0 << PAGE_SHIFT, "npages": npages}, unmapped)


def _remap(proc: SimProcess, then: Callable[[], None]) -> None:
    """Map a small region at an explicit address (sometimes at the very top), then go on."""
    npages = proc.rng.randint(1, 4)
    if proc.rng.random() < 0.3:
        vpn = MAX_VPN - npages - proc.rng.randint(0, 2)
    else:
        vpn = proc.rng.randint(1 << 20, 1 << 24)
    proc._request(False, Op.MAP, {"addr": vpn << PAGE_SHIFT, "npages": npages,
                                  "prot": PROT_R | PROT_W},
                  lambda reply: then())       # an overlap (EINVAL) is the server's business


def _exit_server(proc: SimProcess, reply: dict[str, Any]) -> None:
    proc._request(False, Op.EXIT, {"status": 0}, proc._exited)


def stop_serving(proc: SimProcess) -> None:
    """Quiescence: every client is gone; leave the RECEIVE the kernel holds and EXIT."""
    if proc.state != "serving":
        return
    proc.wants_exit = True
    if (False, proc.receive_rid) in proc.waiting:
        # blocked in RECEIVE: EXIT ends it.  A call may still be delivered meanwhile (from
        # a client the schedule killed that the kernel does not know dead yet): its caller
        # is gone, and the kernel fails what this server held when it exits.
        del proc.waiting[(False, proc.receive_rid)]
        proc.abandoned.add((False, proc.receive_rid))
        proc._request(False, Op.EXIT, {"status": 0}, proc._exited)


# -- the client -------------------------------------------------------------------------------
def call(proc: SimProcess, then: Callable[[], None]) -> None:
    """A ping, or a put with a page grant (see the module docstring)."""
    proc.calls += 1
    n = proc.calls
    if proc.rng.random() < 0.5:
        _call(proc, {"kind": "ping", "n": n}, None, then)
        return
    npages = proc.rng.randint(1, 3)
    proc._request(False, Op.MAP, {"npages": npages, "prot": PROT_R | PROT_W},
                  lambda reply: _fill(proc, reply, n, npages, then))


def _fill(proc: SimProcess, reply: dict[str, Any], n: int, npages: int,
          then: Callable[[], None]) -> None:
    if not proc._ok(reply, "map grant"):
        return
    vpn0 = reply["addr"] >> PAGE_SHIFT

    def write(i: int) -> None:
        if proc.state != "running":
            return
        if i < npages:
            proc.access(vpn0 + i, ACCESS_WRITE, pattern(proc.name, n, i), lambda: write(i + 1))
            return
        _call(proc, {"kind": "put", "n": n}, (vpn0, npages), then)

    write(0)


def _call(proc: SimProcess, msg: dict[str, Any], grant: tuple[int, int] | None,
          then: Callable[[], None]) -> None:
    fields: dict[str, Any] = {"handle": 0, "msg": msgpack.packb(msg)}
    if grant is not None:
        fields["grant"] = {"addr": grant[0] << PAGE_SHIFT, "npages": grant[1]}

    def answered(reply: dict[str, Any]) -> None:
        if proc.state != "running":
            return
        refused_grant = reply.get("err") == Err.INVAL and grant is not None and \
            str(reply.get("msg", "")).startswith("call: page grant failed")
        proc.grants_refused += refused_grant
        if "err" in reply and reply["err"] not in CALL_ANSWERS and not refused_grant:
            proc._ok(reply, f"call {msg['kind']}")
            return
        if "err" not in reply:
            out = msgpack.unpackb(reply["msg"], raw=False)
            if out.get("n") != msg["n"]:
                proc.report("violation", f"{proc.name}: call {msg['n']} answered for "
                                         f"{out.get('n')}")
        if grant is None:
            then()
            return
        vpn0, npages = grant                  # moved away, or (failed call) ours to drop
        for v in range(vpn0, vpn0 + npages):
            proc.wrote.pop(v, None)
            proc._forget(v)
        proc._request(False, Op.UNMAP, {"addr": vpn0 << PAGE_SHIFT, "npages": npages},
                      lambda r: then())       # EINVAL when the pages left: fine

    proc._request(False, Op.CALL, fields, answered)

