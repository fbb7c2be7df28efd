"""Quotas in-process: charge, refuse with EQUOTA naming the resource, release back to zero;
the capability table charges its handles; process records stay within their byte budget.
(A raising timer callback is the server skeleton's: tests/test_server.py.)"""
from __future__ import annotations

import pytest
from kernel_harness import Rig

from kernel_daemon.caps import CapTable, Endpoint
from kernel_daemon.contract import compile_contract
from kernel_daemon.pagetable import SwapSpace
from kernel_daemon.proc import Proc
from kernel_daemon.quota import REFUSAL_DELAY_MS, Limits, Quota, Resource, limits_from
from kernel_daemon.records import bounded_records
from wire.protocol import PROT_R, Err, ServiceError, encode
from wire.server import Panic


def test_charge_until_the_limit_then_equota_naming_the_resource() -> None:
    q = Quota(Limits(endpoints=3))
    for _ in range(3):
        q.charge(Resource.ENDPOINTS)
    with pytest.raises(ServiceError) as e:
        q.charge(Resource.ENDPOINTS)
    assert e.value.code == Err.QUOTA and e.value.msg == "endpoints 3/3"
    assert q.used[Resource.ENDPOINTS] == 3                  # a refused charge takes nothing
    q.release(Resource.ENDPOINTS, 3)
    assert q.idle()


@pytest.mark.parametrize("resource", list(Resource))
def test_every_resource_is_limited(resource: Resource) -> None:
    q = Quota(limits_from({resource.value: 2}))
    q.charge(resource, 2)
    with pytest.raises(ServiceError) as e:
        q.charge(resource, 1)
    assert e.value.msg.startswith(f"{resource} 2/2")


def test_compile_budget_refills_with_time() -> None:
    q = Quota(Limits(compile_bytes_per_s=1000))
    q.spend_compile(4000, now_s=10.0)                       # the burst: 4 s worth
    with pytest.raises(ServiceError) as e:
        q.spend_compile(1, now_s=10.0)
    assert e.value.code == Err.QUOTA and e.value.msg.startswith("compile_bytes_per_s 1000")
    q.spend_compile(1000, now_s=11.0)                       # one second later: 1000 more
    with pytest.raises(ServiceError):
        q.spend_compile(1, now_s=11.0)


def test_refusals_in_a_row_are_answered_ever_later() -> None:
    q = Quota()
    assert q.refused(now_s=5.0) == 0                        # the first: at once
    delays = [q.refused(now_s=5.0 + i * 0.01) for i in range(1, 12)]
    assert delays == sorted(delays) and 0 < delays[0] < delays[-1] <= 1000
    assert q.refused(now_s=100.0) == 0                      # after a quiet while: at once


def test_releasing_more_than_charged_is_a_panic() -> None:
    q = Quota()
    q.charge(Resource.CALLS)
    with pytest.raises(Panic):
        q.release(Resource.CALLS, 2)


def test_bad_limits_are_refused() -> None:
    for bad in ({"nonsense": 1}, {"pages": -1}, {"pages": True}):
        with pytest.raises(ServiceError):
            limits_from(bad)


def _proc(limits: Limits) -> Proc:
    return Proc(spid=1, name="p", program="p", digest="d", host="", hostpid=0, host_started=0.0,
                key="k", role="app", provides=[], quota_spec={}, call_peer=b"peer", secret=b"s",
                space=SwapSpace(b"0" * 16, "p"), manifest=[], quota=Quota(limits))


def test_capability_table_charges_handles_and_releases_them() -> None:
    proc = _proc(Limits(capabilities=4))
    t = CapTable.of(proc)
    ep = Endpoint(1, proc, compile_contract({"name": "x", "calls": {"a": {}},
                                             "replies": {"ok": {}}}), 1)
    handles = [t.mint(ep) for _ in range(4)]
    with pytest.raises(ServiceError) as e:
        t.mint(ep)
    assert e.value.code == Err.QUOTA and e.value.msg == "capabilities 4/4"
    t.drop(handles[0])
    t.mint(ep)
    t.mint(ep, force=True)                      # a checked move may pass the limit
    assert proc.quota.used[Resource.CAPABILITIES] == 5
    t.drop_all()
    assert proc.quota.idle()


def test_contract_size_is_charged_by_its_encoding() -> None:
    small = compile_contract({"name": "x", "calls": {"a": {}}, "replies": {"ok": {}}})
    big = compile_contract({"name": "x", "calls": {f"k{i}": {} for i in range(60)},
                            "replies": {"ok": {}}})
    assert 0 < small.size_bytes < big.size_bytes


def test_records_stay_within_their_budget() -> None:
    report = {f"k{i}": "x" * 1000 for i in range(8)}
    live = [{"spid": i, "name": f"p{i}", "checksum": None, "report": dict(report)}
            for i in range(100)]
    exited = [{"spid": 1000 + i, "name": f"e{i}", "checksum": "verified",
               "report": dict(report, checksum="verified")} for i in range(1000)]
    records, omitted = bounded_records(live, exited, max_bytes=200_000)
    assert len(encode({"processes": records})) <= 200_000 + 100
    assert omitted > 0
    assert records[0]["spid"] == 0                           # live processes come first
    small, none_omitted = bounded_records(live[:2], exited[:2])
    assert small == live[:2] + exited[:2] and none_omitted == 0


def test_the_kernel_answers_equota_in_a_row_ever_later_and_other_errors_at_once() -> None:
    rig = Rig()
    app = rig.app("flood", quota={"regions": 1})
    app.map(1)
    assert app.ask("map", npages=1, prot=PROT_R)["err"] == "EQUOTA"   # the first: at once
    rid = app.send("map", npages=1, prot=PROT_R)                      # the second: held back
    rig.run(0.001)
    assert not app.answered(rid)
    rig.run(REFUSAL_DELAY_MS / 1000)
    reply = app.answer(rid)
    assert reply["err"] == "EQUOTA" and reply["msg"].startswith("regions 1/1"), reply
    assert app.ask("map", npages=0, prot=PROT_R)["err"] == "EINVAL"   # not a quota refusal
    assert rig.stats()["quota_refusals"] == 2
