"""Channel contracts: the protocol a service declares for its endpoint, checked by the kernel.

After Singularity's channel contracts, but checked at run time, in the kernel, before
delivery: a buggy or malicious sender cannot make a receiver see a message its protocol
does not allow.  A contract is a plain map (it travels in the ENDPOINT request)::

    {"name": "kv",
     "calls":   {"put": {"fields": {"key":   {"type": "str", "max_len": 64},
                                    "value": {"type": "bytes", "max_len": 4096}}},
                 "get": {"fields": {"key":   {"type": "str", "max_len": 64}}}},
     "replies": {"ok": {}, "value": {"fields": {"value": {"type": "bytes", "max_len": 4096}}},
                 "missing": {}},
     "initial": "ready",                                     # optional
     "states":  {"ready": {"put": {"ok": "ready"},           # optional: state -> call ->
                           "get": {"value": "ready", "missing": "ready"}}}}   # reply -> next

A message is a msgpack map whose ``kind`` names one of the declared kinds.  A message spec
may also say how many capabilities the message may carry (``"caps": n``, default 0) and
whether it may carry a page grant (``"grant": true``, default false).  A field spec has a
``type`` (int, float, bool, str, bytes, list, map, nil) and its bounds: ``min``/``max`` for
numbers, ``max_len`` for str (UTF-8 bytes), bytes and list (required: nothing unbounded
crosses a channel), ``items`` (the spec of every list item), ``fields`` (a map's own field
specs), ``optional``.  Without ``states`` any call may come at any time and any reply
answers any call.

The order of messages is a state machine over a *channel* (one endpoint, one calling
process).  Between calls the channel rests in a declared state; a call moves it to the
awaiting state ``"STATE:CALL"``, where only the replies listed for that call are allowed, and
the reply moves it to the state the contract names.  :func:`check` is the one entry point::

    new_state = check(contract, state, msg, ncaps, grant)

and raises :class:`RuleViolation` (an ``ECONTRACT`` :class:`ServiceError`) naming the rule
broken.  :func:`compile_contract` validates a contract once, when its endpoint is created
(``EINVAL`` for a malformed one), into tables that make :func:`check` a few dict lookups.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from wire.protocol import Err, ServiceError

#: Limits on a contract itself (it is kernel memory, paid for by an untrusted process).
MAX_KINDS: int = 64
MAX_FIELDS: int = 64
MAX_STATES: int = 64
MAX_DEPTH: int = 6
MAX_CAPS: int = 16
MAX_NAME_LEN: int = 32
#: Largest contract, as its msgpack encoding (bounds the CPU and memory of compiling it).
CONTRACT_MAX_BYTES: int = 32 * 1024
#: Kernel bytes a compiled contract is charged per byte of its encoding (measured: its
#: checkers, tables and kept source take 15-30 bytes per encoded byte).
CONTRACT_COST_PER_BYTE: int = 32
INT_MIN: int = -(1 << 63)
INT_MAX: int = (1 << 64) - 1

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_unpackb = msgpack.unpackb
_TYPES: dict[str, type | tuple[type, ...]] = {
    "int": int, "float": (float, int), "bool": bool, "str": str, "bytes": bytes,
    "list": list, "map": dict, "nil": type(None)}
_TNAMES: dict[type, str] = {bool: "bool", int: "int", float: "float", str: "str",
                            bytes: "bytes", list: "list", dict: "map", type(None): "nil"}
_SPEC_KEYS: frozenset[str] = frozenset(
    {"type", "optional", "min", "max", "max_len", "items", "fields"})
_MSG_KEYS: frozenset[str] = frozenset({"fields", "caps", "grant"})
_CONTRACT_KEYS: frozenset[str] = frozenset({"name", "calls", "replies", "initial", "states"})

#: The rules a message can break (RuleViolation.rule).
RULES: tuple[str, ...] = ("not_a_map", "unknown_kind", "out_of_order", "missing_field",
                          "unknown_field", "wrong_type", "too_long", "out_of_range", "caps",
                          "grant")

Checker = Callable[[Any, str], None]


class RuleViolation(ServiceError):
    """A message broke its channel's contract; `rule` is one of RULES."""

    def __init__(self, contract: str, rule: str, text: str) -> None:
        super().__init__(Err.CONTRACT, f"contract {contract!r}: {text}")
        self.rule = rule


@dataclass(slots=True)
class MessageSpec:
    """One message kind, compiled: its field checkers, required fields and allowances."""
    kind: str
    direction: str                      # "message" (a call) or "reply"
    fields: dict[str, Checker]
    required: tuple[str, ...]
    max_caps: int
    grant: bool


@dataclass(slots=True)
class Contract:
    """A validated contract: per state, the allowed kinds and the state each one leads to."""
    name: str
    initial: str
    calls: dict[str, MessageSpec]
    replies: dict[str, MessageSpec]
    table: dict[str, dict[str, tuple[MessageSpec, str]]]   # state -> kind -> (spec, next)
    source: dict[str, Any]
    size_bytes: int = 0                 # the kernel memory it is charged for (quota.py)


def _bad(text: str) -> ServiceError:
    """The EINVAL error for a malformed contract."""
    return ServiceError(Err.INVAL, f"bad contract: {text}")


def _name(value: Any, what: str) -> str:
    """A kind, field or state name: a short identifier; raise EINVAL otherwise."""
    if not isinstance(value, str) or not _NAME.match(value) or len(value) > MAX_NAME_LEN:
        raise _bad(f"{what} {str(value)[:40]!r} is not a name (letters, digits, _ . -, "
                   f"at most {MAX_NAME_LEN})")
    return value


def _int_bound(spec: dict[str, Any], key: str, where: str) -> int | float | None:
    """spec[key] when it is a number (or absent); EINVAL otherwise."""
    value = spec.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise _bad(f"{where}: {key} must be a number")
    return value


# -- compiling field specs into checkers -------------------------------------------------
def _compile_field(spec: Any, where: str, depth: int) -> tuple[Checker, bool]:
    """A checker for one field spec, and whether the field is optional."""
    if depth > MAX_DEPTH:
        raise _bad(f"{where}: nested deeper than {MAX_DEPTH}")
    if not isinstance(spec, dict):
        raise _bad(f"{where}: a field spec must be a map")
    extra = set(spec) - _SPEC_KEYS
    if extra:
        raise _bad(f"{where}: unknown key {sorted(map(str, extra))[0]!r} in field spec")
    tname = spec.get("type")
    if tname not in _TYPES:
        raise _bad(f"{where}: type {str(tname)[:20]!r} is not one of {', '.join(_TYPES)}")
    lo, hi = _int_bound(spec, "min", where), _int_bound(spec, "max", where)
    if (lo is not None or hi is not None) and tname not in ("int", "float"):
        raise _bad(f"{where}: min/max apply to int and float only")
    if lo is not None and hi is not None and lo > hi:
        raise _bad(f"{where}: min {lo} is above max {hi}")
    max_len = spec.get("max_len")
    if tname in ("str", "bytes", "list"):
        if not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 0:
            raise _bad(f"{where}: a {tname} needs max_len, a non-negative integer")
        length: int = max_len
    elif max_len is not None:
        raise _bad(f"{where}: max_len applies to str, bytes and list only")
    if ("items" in spec) != (tname == "list"):
        raise _bad(f"{where}: a list needs 'items' (and only a list has them)")
    if ("fields" in spec) != (tname == "map"):
        raise _bad(f"{where}: a map needs 'fields' (and only a map has them)")
    optional = spec.get("optional", False)
    if not isinstance(optional, bool):
        raise _bad(f"{where}: optional must be true or false")
    if tname == "int":
        return _number_checker(tname, INT_MIN if lo is None else lo,
                               INT_MAX if hi is None else hi), optional
    if tname == "float":
        return _number_checker(tname, lo, hi), optional
    if tname == "str":
        return _str_checker(length), optional
    if tname == "bytes":
        return _bytes_checker(length), optional
    if tname == "list":
        item, _ = _compile_field(spec["items"], f"{where}[]", depth + 1)
        return _list_checker(length, item), optional
    if tname == "map":
        fields, required = _compile_fields(spec["fields"], where, depth + 1)
        return _map_checker(fields, required), optional
    return _type_checker(tname), optional


def _compile_fields(specs: Any, where: str, depth: int
                    ) -> tuple[dict[str, Checker], tuple[str, ...]]:
    """Checkers for a map of field specs, and the names that are required."""
    if not isinstance(specs, dict) or len(specs) > MAX_FIELDS:
        raise _bad(f"{where}: fields must be a map of at most {MAX_FIELDS} field specs")
    fields: dict[str, Checker] = {}
    required = []
    for fname, fspec in specs.items():
        _name(fname, f"{where}: field")
        if fname == "kind":
            raise _bad(f"{where}: 'kind' is reserved for the message kind")
        fields[fname], optional = _compile_field(fspec, f"{where}.{fname}", depth)
        if not optional:
            required.append(fname)
    return fields, tuple(required)


class _Violation(Exception):
    """Raised by a checker; turned into a RuleViolation naming the message."""

    def __init__(self, rule: str, text: str) -> None:
        super().__init__(text)
        self.rule = rule
        self.text = text


def _tname(value: Any) -> str:
    """The contract's name for value's type (values are decoded msgpack: exact types)."""
    return _TNAMES.get(value.__class__) or type(value).__name__


def _wrong(path: str, value: Any, want: str) -> _Violation:
    """The wrong_type violation of field `path`."""
    return _Violation("wrong_type", f"field {path!r} is {_tname(value)}, the contract says {want}")


def _number_checker(want: str, lo: int | float | None, hi: int | float | None) -> Checker:
    """A checker for an int (want "int") or any number (want "float") in [lo, hi] (None:
    unbounded); a bool is neither (payloads are decoded msgpack: exact types)."""
    exact = frozenset({int} if want == "int" else {int, float})

    def check(v: Any, path: str) -> None:
        n: float = v                   # (checked next: exactly an int, or a float)
        if v.__class__ not in exact:
            raise _wrong(path, v, want)
        if lo is not None and n < lo:
            raise _Violation("out_of_range", f"field {path!r} is {v}, below min {lo}")
        if hi is not None and n > hi:
            raise _Violation("out_of_range", f"field {path!r} is {v}, above max {hi}")
    return check


def _str_checker(max_len: int) -> Checker:
    """A checker for a str of at most max_len UTF-8 bytes (encoded only when it could matter)."""
    def check(v: Any, path: str) -> None:
        if v.__class__ is not str:
            raise _wrong(path, v, "str")
        n = len(v)
        if n * 4 > max_len and (n > max_len or len(v.encode("utf-8", "surrogatepass")) > max_len):
            nbytes = len(v.encode("utf-8", "surrogatepass"))
            raise _Violation("too_long", f"field {path!r} is {nbytes} bytes, longer than "
                                         f"max_len {max_len}")
    return check


def _bytes_checker(max_len: int) -> Checker:
    """A checker for bytes of at most max_len."""
    def check(v: Any, path: str) -> None:
        if v.__class__ is not bytes:
            raise _wrong(path, v, "bytes")
        if len(v) > max_len:
            raise _Violation("too_long", f"field {path!r} is {len(v)} bytes, longer than "
                                         f"max_len {max_len}")
    return check


def _list_checker(max_len: int, item: Checker) -> Checker:
    """A checker for a list of at most max_len items, each passing `item`."""
    def check(v: Any, path: str) -> None:
        if v.__class__ is not list:
            raise _wrong(path, v, "list")
        if len(v) > max_len:
            raise _Violation("too_long", f"field {path!r} has {len(v)} items, more than "
                                         f"max_len {max_len}")
        for i, x in enumerate(v):
            item(x, f"{path}[{i}]")
    return check


def _map_checker(fields: dict[str, Checker], required: tuple[str, ...]) -> Checker:
    """A checker for a nested map with exactly these fields (the required ones present)."""
    def check(v: Any, path: str) -> None:
        if v.__class__ is not dict:
            raise _wrong(path, v, "map")
        _check_fields(fields, required, v, f"{path}.")
    return check


def _type_checker(tname: str) -> Checker:
    """A checker for a value of type tname with no bounds (bool, nil)."""
    typ = _TYPES[tname]

    def check(v: Any, path: str) -> None:
        if not isinstance(v, typ):
            raise _wrong(path, v, tname)
    return check


def _check_fields(fields: dict[str, Checker], required: tuple[str, ...], msg: dict[str, Any],
                  prefix: str, skip: str | None = None) -> None:
    """Check every field of `msg` against `fields`; every required one must be there."""
    for key, value in msg.items():
        if key == skip:
            continue
        checker = fields.get(key)
        if checker is None:
            raise _Violation("unknown_field",
                             f"field {(prefix + str(key))[:80]!r} is not in the contract")
        checker(value, prefix + key)
    for key in required:
        if key not in msg:
            raise _Violation("missing_field", f"required field {prefix + key!r} is missing")


# -- compiling a contract -------------------------------------------------------------------
def _compile_messages(specs: Any, direction: str) -> dict[str, MessageSpec]:
    """The message specs of one direction (calls or replies), validated and compiled."""
    what = "calls" if direction == "message" else "replies"
    if not isinstance(specs, dict) or not 0 < len(specs) <= MAX_KINDS:
        raise _bad(f"'{what}' must be a map of 1..{MAX_KINDS} message kinds")
    out = {}
    for kind, spec in specs.items():
        _name(kind, f"{direction} kind")
        if not isinstance(spec, dict) or set(spec) - _MSG_KEYS:
            raise _bad(f"{direction} {kind!r}: a message spec is a map with keys fields, caps, "
                       f"grant")
        fields, required = _compile_fields(spec.get("fields", {}), kind, 1)
        caps = spec.get("caps", 0)
        if not isinstance(caps, int) or isinstance(caps, bool) or not 0 <= caps <= MAX_CAPS:
            raise _bad(f"{direction} {kind!r}: caps must be 0..{MAX_CAPS}")
        grant = spec.get("grant", False)
        if not isinstance(grant, bool):
            raise _bad(f"{direction} {kind!r}: grant must be true or false")
        out[kind] = MessageSpec(kind, direction, fields, required, caps, grant)
    return out


def encoded_size(src: object) -> int:
    """The contract's msgpack size in bytes; EMSGSIZE over CONTRACT_MAX_BYTES, EINVAL when
    it is not a map (cheap next to compiling: the kernel checks it, and charges the
    compiled size it implies, before compiling)."""
    if not isinstance(src, dict):
        raise _bad("a contract must be a map")
    try:
        encoded = len(msgpack.packb(src, use_bin_type=True))
    except (TypeError, ValueError, OverflowError) as exc:
        raise _bad(f"not encodable: {exc}") from None
    if encoded > CONTRACT_MAX_BYTES:
        raise ServiceError(Err.MSGSIZE, f"bad contract: {encoded} bytes encoded, over the "
                                        f"{CONTRACT_MAX_BYTES}-byte contract limit")
    return encoded


def compiled_size(encoded: int) -> int:
    """The kernel memory a contract of `encoded` bytes is charged for once compiled."""
    return encoded * CONTRACT_COST_PER_BYTE


def compile_contract(src: Any, encoded: int | None = None) -> Contract:
    """Validate a contract map and compile it; raise ServiceError(EINVAL) naming the flaw,
    EMSGSIZE when its encoding is over CONTRACT_MAX_BYTES (checked before any compiling;
    `encoded`: its size when the caller already asked encoded_size)."""
    if encoded is None:
        encoded = encoded_size(src)
    extra = set(src) - _CONTRACT_KEYS
    if extra:
        raise _bad(f"unknown key {sorted(map(str, extra))[0]!r}")
    name = _name(src.get("name"), "contract name")
    calls = _compile_messages(src.get("calls"), "message")
    replies = _compile_messages(src.get("replies"), "reply")
    states = src.get("states")
    if states is None:
        initial = src.get("initial", "ready")
        states = {_name(initial, "state"): {c: {r: initial for r in replies} for c in calls}}
    if not isinstance(states, dict) or not 0 < len(states) <= MAX_STATES:
        raise _bad(f"'states' must be a map of 1..{MAX_STATES} states")
    initial = src.get("initial", next(iter(states)))
    if initial not in states:
        raise _bad(f"initial state {str(initial)[:40]!r} is not among the states")
    table: dict[str, dict[str, tuple[MessageSpec, str]]] = {}
    for state, moves in states.items():
        _name(state, "state")
        if not isinstance(moves, dict) or not moves:
            raise _bad(f"state {state!r}: must map at least one call to its replies")
        row = table.setdefault(state, {})
        for call, answers in moves.items():
            if call not in calls:
                raise _bad(f"state {state!r}: {str(call)[:40]!r} is not a declared call")
            if not isinstance(answers, dict) or not answers:
                raise _bad(f"state {state!r}, call {call!r}: map at least one reply to a state")
            waiting = f"{state}:{call}"
            row[call] = (calls[call], waiting)
            wrow = table.setdefault(waiting, {})
            for reply, nxt in answers.items():
                if reply not in replies:
                    raise _bad(f"state {state!r}, call {call!r}: {str(reply)[:40]!r} is not "
                               f"a declared reply")
                if nxt not in states:
                    raise _bad(f"state {state!r}, call {call!r}, reply {reply!r}: next state "
                               f"{str(nxt)[:40]!r} is not declared")
                wrow[reply] = (replies[reply], nxt)
    return Contract(name, initial, calls, replies, table, src, compiled_size(encoded))


# -- checking a message ---------------------------------------------------------------------
def decode_payload(contract: Contract, payload: bytes) -> dict[str, Any]:
    """The message map inside a CALL/REPLY payload; RuleViolation if it is not one."""
    try:
        msg = _unpackb(payload)         # msgpack >= 1.0's defaults: raw=False, strict keys
    except Exception as exc:  # msgpack raises several unrelated types
        raise RuleViolation(contract.name, "not_a_map",
                                f"payload is not msgpack ({type(exc).__name__})") from None
    if msg.__class__ is not dict:
        raise RuleViolation(contract.name, "not_a_map",
                                f"a message must be a map, got {_tname(msg)}")
    return msg


def check(contract: Contract, state: str, msg: dict[str, Any], ncaps: int = 0,
          grant: bool = False) -> str:
    """The channel's state after `msg`; raise RuleViolation naming the rule it breaks.

    Contract: `state` is the channel's current state (contract.initial for a new channel)."""
    kind = msg.get("kind")
    entry = contract.table[state].get(kind) if kind.__class__ is str else None
    if entry is None:
        raise _misplaced(contract, state, kind)
    spec, new_state = entry
    try:
        _check_fields(spec.fields, spec.required, msg, "", "kind")
    except _Violation as v:
        raise RuleViolation(contract.name, v.rule, f"{spec.direction} {kind!r}: {v.text}") from None
    if ncaps > spec.max_caps:
        raise RuleViolation(contract.name, "caps", f"{spec.direction} {kind!r} carries "
                                f"{ncaps} capabilities, the contract allows {spec.max_caps}")
    if grant and not spec.grant:
        raise RuleViolation(contract.name, "grant", f"{spec.direction} {kind!r} carries a "
                                f"page grant, which the contract does not allow")
    return new_state


def _misplaced(contract: Contract, state: str, kind: Any) -> RuleViolation:
    """The violation for a kind that may not come now: unknown, or out of order."""
    name = contract.name
    if kind.__class__ is not str:
        return RuleViolation(name, "missing_field", "a message needs a string 'kind'")
    allowed = ", ".join(contract.table[state]) or "nothing"
    if kind not in contract.calls and kind not in contract.replies:
        known = ", ".join(dict.fromkeys([*contract.calls, *contract.replies]))
        return RuleViolation(name, "unknown_kind",
                                 f"unknown message kind {kind[:40]!r} (declared: {known})")
    if ":" in state:
        rest, call = state.split(":", 1)
        return RuleViolation(name, "out_of_order",
                                 f"{kind!r} may not answer call {call!r} (allowed replies: "
                                 f"{allowed})")
    direction = "message" if kind in contract.calls else "reply"
    return RuleViolation(name, "out_of_order", f"{direction} {kind!r} is not allowed in "
                             f"state {state!r} (allowed there: {allowed})")
