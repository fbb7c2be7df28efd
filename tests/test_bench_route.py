"""`sealedos bench route`'s harness: the real kernel routes every call it is handed, in
process (host_tools/bench_route.py).  No timing is asserted, only that the calls went through."""
from __future__ import annotations

import msgpack

from host_tools.bench_route import FAULT_REGION, SLICES, measure, measure_faults, setup
from wire.protocol import decode, encode

PING: bytes = msgpack.packb({"kind": "ping", "n": 1})
OK: bytes = msgpack.packb({"kind": "ok", "n": 1})


def test_the_harness_routes_a_call_and_its_reply_through_the_kernel() -> None:
    kernel, client, server, handle, sent = setup()
    kernel.on_frame(kernel.sock, client.identity,
                    encode({"op": "call", "rid": 1, "handle": 0, "msg": PING}))
    delivered = decode(sent[-1])
    assert delivered["re"] == 3 and delivered["msg"] == PING     # the server's RECEIVE
    kernel.on_frame(kernel.sock, server.identity,
                    encode({"op": "reply", "rid": 4, "call": delivered["call"],
                            "msg": OK, "receive": handle}))
    assert decode(sent[-1]) == {"re": 1, "msg": OK, "caps": []}      # the client's CALL


def test_measure_routes_every_round_trip_it_counts() -> None:
    result = measure(20 * SLICES, profile=False)
    assert result["round_trips"] == 20 * SLICES
    assert result["cpu_us_per_round_trip"] > 0


def test_measure_faults_answers_every_minor_fault() -> None:
    result = measure_faults(SLICES * FAULT_REGION)
    assert result["faults"] == SLICES * FAULT_REGION
    assert result["cpu_us_per_minor_fault"] > 0
