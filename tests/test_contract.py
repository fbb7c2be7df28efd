"""Channel contracts, unit by unit: validation of the contract itself (EINVAL) and every kind
of violation a message can commit (ECONTRACT, each naming its rule); then, through the kernel
(tests/kernel_harness.py), the channel: one state machine per endpoint and calling process."""
from __future__ import annotations

from typing import Any

import msgpack
import pytest
from kernel_harness import Rig, echo_world, packed, second_client, serve_one, unpacked

from kernel_daemon.contract import (
    CONTRACT_MAX_BYTES,
    RuleViolation,
    check,
    compile_contract,
    compiled_size,
    decode_payload,
    encoded_size,
)
from wire.protocol import Err, ServiceError

KV: dict[str, Any] = {
    "name": "kv",
    "calls": {
        "login": {"fields": {"user": {"type": "str", "max_len": 16}}},
        "put": {"fields": {"key": {"type": "str", "max_len": 64},
                           "value": {"type": "bytes", "max_len": 128},
                           "ttl": {"type": "int", "min": 0, "max": 3600, "optional": True}}},
        "batch": {"fields": {"items": {"type": "list", "max_len": 4, "items": {
            "type": "map", "fields": {"k": {"type": "str", "max_len": 8},
                                      "n": {"type": "int", "min": 0, "max": 9}}}}}},
        "share": {"caps": 1},
        "bulk": {"grant": True},
        "logout": {},
    },
    "replies": {"ok": {}, "denied": {"fields": {"why": {"type": "str", "max_len": 64}}}},
    "initial": "start",
    "states": {
        "start": {"login": {"ok": "authed", "denied": "start"}},
        "authed": {"put": {"ok": "authed"}, "batch": {"ok": "authed"},
                   "share": {"ok": "authed"}, "bulk": {"ok": "authed"},
                   "logout": {"ok": "start"}},
    },
}


@pytest.fixture(scope="module")
def kv() -> Any:
    return compile_contract(KV)


def violation(kv: Any, state: str, msg: dict[str, Any], **kw: Any) -> RuleViolation:
    with pytest.raises(RuleViolation) as info:
        check(kv, state, msg, **kw)
    assert info.value.code == Err.CONTRACT
    assert info.value.msg.startswith("contract 'kv': ")
    return info.value


# -- the state machine --------------------------------------------------------------------
def test_a_session_walks_the_state_machine(kv: Any) -> None:
    s = check(kv, kv.initial, {"kind": "login", "user": "ann"})
    assert s == "start:login"
    s = check(kv, s, {"kind": "ok"})
    assert s == "authed"
    s = check(kv, check(kv, s, {"kind": "put", "key": "a", "value": b"x", "ttl": 5}),
              {"kind": "ok"})
    assert s == "authed"
    s = check(kv, check(kv, s, {"kind": "logout"}), {"kind": "ok"})
    assert s == "start"


def test_denied_login_stays_in_start(kv: Any) -> None:
    s = check(kv, "start", {"kind": "login", "user": "eve"})
    assert check(kv, s, {"kind": "denied", "why": "no"}) == "start"


def test_out_of_order_call(kv: Any) -> None:
    v = violation(kv, "start", {"kind": "put", "key": "a", "value": b""})
    assert v.rule == "out_of_order"
    assert "'put' is not allowed in state 'start' (allowed there: login)" in v.msg


def test_reply_that_does_not_answer_the_call(kv: Any) -> None:
    v = violation(kv, "authed:put", {"kind": "denied", "why": "x"})
    assert v.rule == "out_of_order"
    assert "may not answer call 'put'" in v.msg


def test_a_call_while_a_reply_is_due_is_out_of_order(kv: Any) -> None:
    assert violation(kv, "start:login", {"kind": "login", "user": "a"}).rule == "out_of_order"


def test_default_state_machine_allows_any_order() -> None:
    c = compile_contract({"name": "echo", "calls": {"echo": {}, "ping": {}},
                          "replies": {"echo": {}, "pong": {}}})
    s = check(c, c.initial, {"kind": "ping"})
    assert check(c, s, {"kind": "echo"}) == c.initial


# -- each rule ------------------------------------------------------------------------------
def test_unknown_kind(kv: Any) -> None:
    v = violation(kv, "authed", {"kind": "frobnicate"})
    assert v.rule == "unknown_kind" and "unknown message kind 'frobnicate'" in v.msg


def test_missing_kind(kv: Any) -> None:
    assert violation(kv, "authed", {"key": "a"}).rule == "missing_field"
    assert violation(kv, "authed", {"kind": 7}).rule == "missing_field"


def test_missing_field(kv: Any) -> None:
    v = violation(kv, "authed", {"kind": "put", "key": "a"})
    assert v.rule == "missing_field" and "required field 'value' is missing" in v.msg


def test_unknown_field(kv: Any) -> None:
    v = violation(kv, "authed", {"kind": "put", "key": "a", "value": b"", "color": "red"})
    assert v.rule == "unknown_field" and "'color' is not in the contract" in v.msg


def test_wrong_type(kv: Any) -> None:
    v = violation(kv, "authed", {"kind": "put", "key": 12, "value": b""})
    assert v.rule == "wrong_type" and "field 'key' is int, the contract says str" in v.msg
    v = violation(kv, "authed", {"kind": "put", "key": "a", "value": "text"})
    assert v.rule == "wrong_type"
    assert violation(kv, "authed", {"kind": "put", "key": "a", "value": b"", "ttl": True}
                     ).rule == "wrong_type"


def test_string_too_long_counts_utf8_bytes(kv: Any) -> None:
    v = violation(kv, "authed", {"kind": "put", "key": "k" * 80, "value": b""})
    assert v.rule == "too_long"
    assert v.msg == ("contract 'kv': message 'put': field 'key' is 80 bytes, longer than "
                     "max_len 64")
    v = violation(kv, "authed", {"kind": "put", "key": "é" * 33, "value": b""})
    assert v.rule == "too_long"
    check(kv, "authed", {"kind": "put", "key": "é" * 32, "value": b""})


def test_bytes_and_list_too_long(kv: Any) -> None:
    v = violation(kv, "authed", {"kind": "put", "key": "a", "value": bytes(129)})
    assert v.rule == "too_long"
    v = violation(kv, "authed", {"kind": "batch", "items": [{"k": "a", "n": 1}] * 5})
    assert v.rule == "too_long" and "has 5 items, more than max_len 4" in v.msg


def test_out_of_range(kv: Any) -> None:
    v = violation(kv, "authed", {"kind": "put", "key": "a", "value": b"", "ttl": 4000})
    assert v.rule == "out_of_range" and "is 4000, above max 3600" in v.msg
    v = violation(kv, "authed", {"kind": "put", "key": "a", "value": b"", "ttl": -1})
    assert v.rule == "out_of_range" and "below min 0" in v.msg


def test_nested_items_are_checked_with_their_path(kv: Any) -> None:
    v = violation(kv, "authed",
                  {"kind": "batch", "items": [{"k": "a", "n": 1}, {"k": "b", "n": 10}]})
    assert v.rule == "out_of_range" and "'items[1].n'" in v.msg
    v = violation(kv, "authed", {"kind": "batch", "items": [{"k": "a"}]})
    assert v.rule == "missing_field" and "'items[0].n'" in v.msg


def test_caps_and_grants_need_the_contracts_leave(kv: Any) -> None:
    check(kv, "authed", {"kind": "share"}, ncaps=1)
    assert violation(kv, "authed", {"kind": "share"}, ncaps=2).rule == "caps"
    v = violation(kv, "authed", {"kind": "put", "key": "a", "value": b""}, ncaps=1)
    assert v.rule == "caps"
    check(kv, "authed", {"kind": "bulk"}, grant=True)
    assert violation(kv, "authed", {"kind": "logout"}, grant=True).rule == "grant"


def test_payload_that_is_not_a_map(kv: Any) -> None:
    with pytest.raises(RuleViolation) as info:
        decode_payload(kv, msgpack.packb([1, 2]))
    assert info.value.rule == "not_a_map"
    with pytest.raises(RuleViolation):
        decode_payload(kv, b"\xc1")
    assert decode_payload(kv, msgpack.packb({"kind": "ok"})) == {"kind": "ok"}


# -- validating contracts ---------------------------------------------------------------------
@pytest.mark.parametrize("bad, words", [
    ("not a map", "must be a map"),
    ({"name": "x", "calls": {}, "replies": {"ok": {}}}, "'calls' must be a map"),
    ({"name": "bad name!", "calls": {"a": {}}, "replies": {"ok": {}}}, "is not a name"),
    ({"name": "x", "calls": {"a": {"fields": {"s": {"type": "str"}}}}, "replies": {"ok": {}}},
     "needs max_len"),
    ({"name": "x", "calls": {"a": {"fields": {"s": {"type": "list", "max_len": 3}}}},
      "replies": {"ok": {}}}, "needs 'items'"),
    ({"name": "x", "calls": {"a": {"fields": {"n": {"type": "int", "min": 5, "max": 1}}}},
      "replies": {"ok": {}}}, "above max"),
    ({"name": "x", "calls": {"a": {"fields": {"n": {"type": "int", "maxlen": 3}}}},
      "replies": {"ok": {}}}, "unknown key 'maxlen'"),
    ({"name": "x", "calls": {"a": {"fields": {"n": {"type": "complex"}}}}, "replies": {"ok": {}}},
     "is not one of"),
    ({"name": "x", "calls": {"a": {"fields": {"kind": {"type": "int"}}}}, "replies": {"ok": {}}},
     "reserved"),
    ({"name": "x", "calls": {"a": {}}, "replies": {"ok": {}}, "states": {"s": {"b": {"ok": "s"}}}},
     "not a declared call"),
    ({"name": "x", "calls": {"a": {}}, "replies": {"ok": {}}, "states": {"s": {"a": {"no": "s"}}}},
     "not a declared reply"),
    ({"name": "x", "calls": {"a": {}}, "replies": {"ok": {}}, "states": {"s": {"a": {"ok": "t"}}}},
     "next state 't' is not declared"),
    ({"name": "x", "calls": {"a": {}}, "replies": {"ok": {}}, "initial": "q",
      "states": {"s": {"a": {"ok": "s"}}}}, "initial state"),
    ({"name": "x", "calls": {"a": {"caps": 99}}, "replies": {"ok": {}}}, "caps must be"),
    ({"name": "x", "calls": {"a": {}}, "replies": {"ok": {}}, "extra": 1}, "unknown key 'extra'"),
])
def test_bad_contracts_are_refused_with_einval(bad: Any, words: str) -> None:
    with pytest.raises(ServiceError) as info:
        compile_contract(bad)
    assert info.value.code == Err.INVAL
    assert words in info.value.msg


def test_deep_nesting_is_refused() -> None:
    spec: dict[str, Any] = {"type": "int"}
    for _ in range(10):
        spec = {"type": "list", "max_len": 1, "items": spec}
    with pytest.raises(ServiceError, match="nested deeper"):
        compile_contract({"name": "x", "calls": {"a": {"fields": {"f": spec}}},
                          "replies": {"ok": {}}})


# -- sizes --------------------------------------------------------------------------------------
def test_a_contract_is_charged_by_its_encoded_size_and_refused_over_the_limit() -> None:
    n = encoded_size(KV)
    assert n == len(msgpack.packb(KV, use_bin_type=True))
    assert compile_contract(KV).size_bytes == compiled_size(n) > n
    huge = {"name": "x", "calls": {"a": {}}, "replies": {"ok": {}}, "pad": "x" * CONTRACT_MAX_BYTES}
    with pytest.raises(ServiceError) as info:
        compile_contract(huge)
    assert info.value.code == Err.MSGSIZE            # refused before anything is compiled


# -- channels, through the kernel (tests/kernel_harness.py) -----------------------------------
def test_each_calling_process_has_its_own_channel_state() -> None:
    rig = Rig()
    w = echo_world(rig, KV)
    other, other_held = second_client(rig, w, "other")
    put = packed("put", key="k", value=b"v")
    assert w.client.ask("call", handle=w.held, msg=put)["err"] == "ECONTRACT"   # not logged in
    rid = w.client.call(w.held, packed("login", user="ann"))
    serve_one(rig, w.server, w.echo, lambda call: (packed("ok"), []))
    assert "err" not in w.client.answer(rid)
    reply = other.ask("call", handle=other_held, msg=put)    # ann's login is not other's
    assert reply["err"] == "ECONTRACT" and "not allowed in state 'start'" in reply["msg"]
    rid = w.client.call(w.held, put)
    got = serve_one(rig, w.server, w.echo, lambda call: (packed("ok"), []))
    assert unpacked(got["msg"]) == {"kind": "put", "key": "k", "value": b"v"}
    assert "err" not in w.client.answer(rid)
    assert rig.stats()["ipc_contract_violations"] == 2


def test_a_refused_reply_leaves_the_channel_awaiting_and_a_denial_moves_it_back() -> None:
    rig = Rig()
    w = echo_world(rig, KV)
    rid = w.client.call(w.held, packed("login", user="eve"))
    got = w.server.answer(w.server.receive(w.echo))
    wrong = w.server.ask("reply", call=got["call"], msg=packed("denied"))   # missing 'why'
    assert wrong["err"] == "ECONTRACT"
    assert not w.client.answered(rid)
    w.server.ask("reply", call=got["call"], msg=packed("denied", why="no"))
    assert unpacked(w.client.answer(rid)["msg"]) == {"kind": "denied", "why": "no"}
    reply = w.client.ask("call", handle=w.held, msg=packed("logout"))
    assert reply["err"] == "ECONTRACT"                    # denied: back in 'start' ...
    rid = w.client.call(w.held, packed("login", user="eve"))   # ... where login is allowed
    got = serve_one(rig, w.server, w.echo, lambda call: (packed("ok"), []))
    assert unpacked(got["msg"]) == {"kind": "login", "user": "eve"}
    assert "err" not in w.client.answer(rid)
