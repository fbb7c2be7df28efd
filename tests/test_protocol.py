"""wire.protocol: the field tables, the request check, framing and error codes.

Every op's field table is exercised field by field: a request with every required field of
the right type passes, and dropping one field or giving it a value of another type is refused
with EINVAL naming the field -- before any handler could run.  Error codes round-trip through
a frame, and malformed frames (not msgpack, not a map, too large) are refused with the code
the server skeleton replies with.
"""
from __future__ import annotations

from typing import Any

import msgpack
import pytest

from wire.protocol import (
    MAX_FRAME_BYTES,
    OPTIONAL_FIELDS,
    REQUEST_FIELDS,
    Err,
    Op,
    ServiceError,
    check_request,
    decode,
    encode,
    err_code,
    error,
    ok,
    request,
)

#: A value of each field type, and for each type a value of another type.
GOOD: dict[type, Any] = {int: 7, str: "s", bytes: b"b", list: [1], dict: {"k": 1},
                         float: 1.5, bool: True}
WRONG: dict[type, Any] = {int: "7", str: 7, bytes: "b", list: {"k": 1}, dict: [1],
                          float: "1.5", bool: 1}


def _kind(typ: type | tuple[type, ...]) -> type:
    """The first type a field accepts (every table entry names one today)."""
    return typ[0] if isinstance(typ, tuple) else typ


def valid(op: Op) -> dict[str, Any]:
    """A request of `op` with every required field present and well typed."""
    return request(op, 1, **{name: GOOD[_kind(t)] for name, t in REQUEST_FIELDS[op].items()})


def refused(msg: dict[str, Any]) -> ServiceError:
    """The ServiceError check_request raises for `msg` (fails the test if it accepts it)."""
    with pytest.raises(ServiceError) as info:
        check_request(msg)
    return info.value


def test_every_op_has_a_field_table_and_optional_fields_name_real_ops() -> None:
    assert set(REQUEST_FIELDS) == set(Op)
    assert set(OPTIONAL_FIELDS) <= set(Op)
    for op, fields in OPTIONAL_FIELDS.items():
        assert not set(fields) & set(REQUEST_FIELDS[op]), op       # optional xor required


@pytest.mark.parametrize("op", list(Op))
def test_a_well_typed_request_passes_and_survives_a_frame(op: Op) -> None:
    msg = valid(op)
    assert check_request(msg) is op
    assert check_request(decode(encode(msg))) is op                 # msgpack keeps the types


@pytest.mark.parametrize("op", [op for op in Op if REQUEST_FIELDS[op]])
def test_each_required_field_missing_or_mistyped_is_refused(op: Op) -> None:
    for name, typ in REQUEST_FIELDS[op].items():
        msg = valid(op)
        del msg[name]
        exc = refused(msg)
        assert (exc.code, f"missing field {name!r}" in exc.msg) == (Err.INVAL, True), exc.msg
        msg = valid(op)
        msg[name] = WRONG[_kind(typ)]
        exc = refused(msg)
        assert (exc.code, f"field {name!r} has the wrong type" in exc.msg) == (Err.INVAL, True)


@pytest.mark.parametrize("op", list(OPTIONAL_FIELDS))
def test_optional_fields_may_be_absent_but_not_mistyped(op: Op) -> None:
    for name, typ in OPTIONAL_FIELDS[op].items():
        msg = valid(op)
        msg[name] = GOOD[_kind(typ)]
        assert check_request(msg) is op
        msg[name] = WRONG[_kind(typ)]
        exc = refused(msg)
        assert (exc.code, name in exc.msg) == (Err.INVAL, True), exc.msg


def test_a_bool_is_not_an_int() -> None:
    assert refused(request(Op.MAP, 1, npages=True, prot=3)).code is Err.INVAL
    assert refused(request(Op.PING, True)).code is Err.BADMSG        # nor a rid
    assert refused(request(Op.REPLY, 1, call=1, msg=b"", receive=True)).code is Err.INVAL


def test_rid_and_op_are_checked_first() -> None:
    assert refused({"op": "ping"}).code is Err.BADMSG                # no rid
    assert refused({"op": "ping", "rid": "1"}).code is Err.BADMSG
    assert refused({"rid": 1}).code is Err.BADMSG                    # no op
    assert refused({"op": 3, "rid": 1}).code is Err.BADMSG
    exc = refused({"op": "x" * 500, "rid": 1})
    assert exc.code is Err.NOSYS and len(exc.msg) < 100              # the name is truncated


def test_request_framing_wins_over_fields_of_the_same_name() -> None:
    msg = request(Op.PING, 9, op="evil", rid=1, extra=b"x")
    assert msg == {"op": "ping", "rid": 9, "extra": b"x"}
    assert check_request(msg) is Op.PING and "re" not in msg


def test_every_error_code_round_trips_through_a_frame() -> None:
    assert len({e.value for e in Err}) == len(Err)
    for code in Err:
        reply = decode(encode(error(5, code, "why", extra=1)))
        assert reply["re"] == 5 and reply["extra"] == 1
        assert err_code(reply["err"]) is code and reply["msg"] == "why"
    assert decode(encode(ok(3, a=1))) == {"re": 3, "a": 1}


def test_an_unknown_error_code_maps_to_none() -> None:
    assert err_code("EBOGUS") is None
    assert err_code(None) is None
    assert err_code(7) is None
    assert err_code("eperm") is None                                 # exact spelling only


def test_malformed_frames_are_refused_with_their_code() -> None:
    cases: list[tuple[bytes, Err]] = [
        (b"\xc1", Err.BADMSG),                                       # not msgpack
        (encode([1, 2]), Err.BADMSG),                                # not a map
        (msgpack.packb({1: 2}), Err.BADMSG),                         # a non-string key
        (encode({"op": "ping", "rid": 1, "pad": b"x" * MAX_FRAME_BYTES}), Err.MSGSIZE),
    ]
    for frame, code in cases:
        with pytest.raises(ServiceError) as info:
            decode(frame)
        assert info.value.code is code, frame[:20]
    small = encode({"a": b"x" * 100})
    with pytest.raises(ServiceError) as info:
        decode(small, limit=len(small) - 1)                          # the limit is exact
    assert info.value.code is Err.MSGSIZE
    assert decode(small, limit=len(small)) == {"a": b"x" * 100}
