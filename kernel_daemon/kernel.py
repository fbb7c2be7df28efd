"""The sealedos kernel daemon: the trusted core every sealed process, pager and service talks to.

Design principles
-----------------
1. The kernel keeps policy, user space does mechanism.  Page tables, the one global frame
   pool and the choice of victim live here; writing pages out and reading them back is the
   external pagers' job, and the bytes of resident pages live in the processes' own banks.
2. Nothing the kernel hands out can be read or altered unnoticed.  Every page is sealed
   (AES-GCM bound to process, page and version) before a pager sees it; version and tag stay
   here.  A pager can only withhold, and withholding is survived by timeouts, retries,
   restarts and mirrors.
3. The kernel never blocks on one request.  One thread, one loop: a fault waiting on a pager,
   a frame, or a call's reply SUSPENDs and is answered from a callback; everyone else is served
   meanwhile.
4. Every message is checked before it is believed.  The caller's identity comes from the
   connection it registered (never from the message); every field is type-checked by the
   server skeleton and range-checked by its handler; a caller's mistake gets an error reply,
   a broken invariant panics.
5. Nothing is lost on a crash of anything untrusted.  A page-out's bytes stay here until a
   pager acknowledges them; a dead process's frames, swap and capabilities are reclaimed.
6. Sealed processes share nothing.  Page contents and messages cross process boundaries only
   as messages through this loop.
"""
from __future__ import annotations

import argparse
import gc
import hmac
import os
import sys
from collections.abc import Iterable
from itertools import islice
from pathlib import Path
from typing import Any

from kernel_daemon.ecpages import EcPages
from kernel_daemon.erasure import parse_code
from kernel_daemon.frames import FramePool
from kernel_daemon.histogram import BOUNDS_US
from kernel_daemon.hostproc import ExitWatch, kill_if_same, same_process
from kernel_daemon.ipc import Ipc
from kernel_daemon.pagers import CLUSTER_PAGES, Pagers
from kernel_daemon.pagetable import MAX_MAP_PAGES, MAX_MIRRORS
from kernel_daemon.policy import POLICIES, make_policy
from kernel_daemon.prefetch import DEFAULT_MODE, FAULT_AROUND, MODES
from kernel_daemon.proc import ADMIT_TTL_MS, Admission, Proc, ProcState, ProcTable, caller
from kernel_daemon.quota import Resource, limits_from
from kernel_daemon.records import apply_report, bounded_records
from kernel_daemon.resync import Resync
from kernel_daemon.seal import Sealer
from kernel_daemon.stats import KernelStats
from kernel_daemon.trace import Tracer
from kernel_daemon.vm import Vm
from wire import host
from wire import keys as wkeys
from wire.credential import new_credential, public_of
from wire.keys import Keyring, KeysMissing, Role
from wire.protocol import (
    IPC_MAX_PAYLOAD_BYTES,
    MAX_FRAME_BYTES,
    PAGE_SHIFT,
    PAGE_SIZE,
    Err,
    Op,
    ServiceError,
)
from wire.server import Handler, Panic, Request, Server
from wire.transport import Clock, Transport

LIVENESS_MS: int = 500
#: A process on another host that has not been heard from for this long is dead.
PROC_DEAD_MS: int = 10000
KILL_GRACE_MS: int = 2000
#: What a kernel request may take beyond an IPC payload (fields, caps, a contract's frame):
#: a larger frame is refused before it is decoded (decoding 1 MB of msgpack costs ~40 ms).
FRAME_SLACK_BYTES: int = 64 * 1024
#: STATS's fault latency percentiles are over this many newest samples of each kind (a sort
#: of all LATENCY_KEEP per call was a tenth of the kernel's time under a polling observer).
PERCENTILE_SAMPLES: int = 2000
#: A full garbage collection after this many middle-generation ones (CPython: 10).  A full one
#: visits every object the kernel holds, and they grow with its processes (a PTE per page):
#: at 128 processes x 256 pages each took ~100 ms, 27 of them in a 45 s (CPU) scale run.
GC_FULL_AFTER: int = 100

#: Ops that charge a quota: a process refused EQUOTA again and again waits for its answers.
QUOTA_OPS = (Op.MAP, Op.UNMAP, Op.PROTECT, Op.REPORT, Op.ENDPOINT, Op.CALL, Op.REPLY)
#: Who may send what: ops from anyone, from a registered call connection, from a control one.
ANYONE = {Op.REGISTER, Op.ATTACH, Op.ADMIT, Op.PAGER_INSTANCE, Op.PAGER_HELLO, Op.PING,
          Op.STATS, Op.PS, Op.FAULT_LOG}
#: Roles the launcher may give a process.
ROLES: frozenset[str] = frozenset({"app", "init"})
#: Bounds on what one ADMIT may say (the launcher is trusted; these bound a bug).
ADMIT_MAX_NAMES: int = 64
ADMIT_MAX_CHARS: int = 64
CONTROL = {Op.HEARTBEAT}
#: Principals whose fixed keys the kernel admits (disks never talk to the kernel; sealed
#: processes are admitted by their credential's key, see allow_key).
ADMITTED_KINDS = frozenset({"kernel", "launcher", "observer", "pager"})


class Kernel(Server):
    """The kernel: process table, address spaces, frames, policy, sealing, pagers, IPC."""

    def __init__(self, addr: str, nframes: int, policy: str, mirrors: int = 1, seal: bool = True,
                 pager_timeout_ms: int = 2000, pager_retries: int = 5,
                 ipc_max_bytes: int = IPC_MAX_PAYLOAD_BYTES, trace: str | None = None,
                 launcher_key: str | None = None, keys: Keyring | None = None,
                 transport: Transport | None = None, clock: Clock | None = None,
                 code: tuple[int, int] | None = None, ec_delta: int = 1,
                 prefetch: str = "off", fault_around: int = FAULT_AROUND,
                 cluster_pages: int = CLUSTER_PAGES) -> None:
        self.stats = KernelStats(policy, nframes, seal, mirrors,
                                 f"{code[0]}+{code[1]}" if code else None, prefetch)
        self.procs = ProcTable()
        self.exits = ExitWatch()                 # local processes' exits, by spid
        self.tracer = Tracer(trace)
        self.ipc_max_bytes = ipc_max_bytes
        # vm and ipc before the skeleton's __init__: it reads the dispatch table, which
        # points straight at their handlers.
        self.vm = Vm(self, FramePool(nframes), make_policy(policy), Sealer(seal), prefetch,
                     fault_around)
        self.ipc = Ipc(self)
        super().__init__("kernel", keys=keys, transport=transport, clock=clock)
        #: Who may connect, and as what: z85 public key -> Role, for the fixed principals
        #: (sealed processes connect with their credential's key: allow_key).
        self.keys: dict[str, Role] = {
            pub: role for pub, role in self.keyring.roles().items() if role.kind in ADMITTED_KINDS}
        if launcher_key is None and self.secure:
            launcher_key = self.keyring.public("launcher").decode("ascii")
        self.addr = addr
        self.host = self.transport.hostname()
        self.sock = self.bind_router(addr)
        self.pagers = Pagers(self, self.sock, mirrors, pager_timeout_ms, pager_retries,
                             self.host, self.stats, cluster_pages)
        #: Erasure-coded pagers (--code K+R): fragment i of every page on pager i (ecpages.py).
        self.ec = EcPages(self.pagers, *code, ec_delta, self.stats) if code else None
        self.resync = Resync(self)               # a returning mirror gets what it missed
        self.pagers.on_up = self.resync.kick
        self.pagers.on_lost = self.resync.lost_handle  # a wiped disk: every page rebuilt there
        self.launcher_key = launcher_key       # the trusted launcher's public key (ADMIT)
        # a frame larger than any kernel request needs is refused before it is decoded
        self.max_frame_bytes = min(MAX_FRAME_BYTES, ipc_max_bytes + FRAME_SLACK_BYTES)

    def dispatch_table(self) -> dict[Op, Handler]:
        """Every op the kernel serves, and its handler."""
        return {
            # launcher
            Op.ADMIT: self.do_admit, Op.PAGER_INSTANCE: self.do_pager_instance,
            # sealed processes: identity, memory, results
            Op.REGISTER: self.do_register, Op.ATTACH: self.do_attach,
            Op.HEARTBEAT: self.do_heartbeat, Op.REPORT: self.do_report, Op.EXIT: self.do_exit,
            Op.MAP: self.do_map, Op.UNMAP: self.do_unmap, Op.PROTECT: self.do_protect,
            Op.FAULT: self.vm.fault,                                    # vm.py
            # IPC (ipc.py)
            Op.ENDPOINT: self.ipc.endpoint, Op.CALL: self.ipc.call, Op.RECEIVE: self.ipc.receive,
            Op.REPLY: self.ipc.reply, Op.CAP_CLOSE: self.ipc.cap_close,
            Op.STASH: self.ipc.save_stash,
            # pagers
            Op.PAGER_HELLO: self.do_pager_hello,
            # observers
            Op.PING: self.do_ping, Op.STATS: self.do_stats, Op.FAULT_LOG: self.do_fault_log,
            Op.PS: self.do_ps,
        }

    # -- the caller check ----------------------------------------------------------------
    def allow_key(self, public: str) -> bool:
        """Admit a connection only with a key the kernel knows (ZAP, at the handshake): a
        fixed principal's, a credential the launcher ADMITted and nobody has registered with
        yet, or a live process's (its control connection, a reconnect)."""
        return public in self.keys or public in self.procs.admissions or \
            public in self.procs.by_key

    def role_of(self, req: Request) -> Role | None:
        """The role bound to the request's authenticated key (None when insecure)."""
        return self.keys.get(req.user_id) if req.user_id is not None else None

    def check_caller(self, req: Request) -> None:
        """Resolve req.caller to the sending process; refuse ops its connection may not send.
        (A routing id that spoke with one key never speaks with another: wire/server.py.)"""
        if req.op in ANYONE:
            return
        proc = self.procs.by_peer.get(req.peer) if req.peer is not None else None
        if proc is None:
            raise ServiceError(Err.NOTREG, f"{req.op}: this connection never registered")
        on_control = req.peer == proc.ctrl_peer
        if on_control != (req.op in CONTROL):
            raise ServiceError(Err.PERM, f"{req.op} is not allowed on this connection")
        proc.last_heard = self.now()
        req.caller = proc

    # -- identity -------------------------------------------------------------------------
    def principal(self, req: Request) -> str | None:
        """The public key the sender proved: its connection's authenticated key (CURVE), else
        the credential its message carries (insecure transport); None if it proved none."""
        if req.user_id:
            return req.user_id
        try:
            return public_of(req.msg.get("cred", b""))
        except ValueError:
            return None

    def _launcher_only(self, req: Request, op: str) -> None:
        """EPERM unless the sender proved the launcher's key."""
        key = self.principal(req)
        if self.launcher_key is None or key is None or \
                not hmac.compare_digest(key, self.launcher_key):
            raise ServiceError(Err.PERM, f"{op}: only the launcher may say this")

    def do_admit(self, req: Request) -> dict[str, Any]:
        """The launcher admits a process it is about to start: record what it vouches for,
        return the one-time credential that process will REGISTER with."""
        self._launcher_only(req, "admit")
        m = req.msg
        if m["role"] not in ROLES:
            raise ServiceError(Err.INVAL, f"admit: role {m['role'][:20]!r} is not one of "
                                          f"{', '.join(sorted(ROLES))}")
        if m["hostpid"] < 0:
            raise ServiceError(Err.INVAL, f"admit: host pid {m['hostpid']} is negative")
        cred = new_credential()
        self.procs.admit(public_of(cred), Admission(
            name=_short(m["name"]), program=_short(m["program"]), digest=_short(m["digest"]),
            role=m["role"], manifest=_names(m["manifest"]), provides=_names(m["provides"]),
            quota=_quota_spec(m["quota"]), hostpid=m["hostpid"], started=m["started"],
            host=_short(m.get("host") or ""), expires_s=self.now() + ADMIT_TTL_MS / 1000))
        return {"cred": cred}

    def refuse_request(self, req: Request, exc: ServiceError) -> None:
        """Send the error reply, except that an EQUOTA refusal (of a QUOTA_OPS request) of a
        process refused just before is answered after a delay that doubles with each
        refusal (quota.py): a flood against a quota costs the kernel a few requests a
        second, not a core."""
        proc = req.caller
        if exc.code == Err.QUOTA and req.op in QUOTA_OPS and isinstance(proc, Proc):
            self.stats.quota_refusals += 1
            delay_ms = proc.quota.refused(self.now())
            if delay_ms:

                def answer() -> None:
                    if proc.alive:
                        self.fail(req, exc.code, exc.msg)
                self.call_later(delay_ms, answer)
                return
        super().refuse_request(req, exc)

    # -- processes ------------------------------------------------------------------------
    def do_register(self, req: Request) -> dict[str, Any]:
        """A new sealed process proves its credential: bind this connection to what the
        launcher admitted for it, issue its spid and ATTACH secret.

        Name, program, digest, manifest and role are the launcher's, fixed for the process's
        life: there is no op that loads code.  Role "init" makes it init (see ipc.py)."""
        if req.peer in self.procs.by_peer:
            raise ServiceError(Err.PERM, "this connection is already registered")
        key = self.principal(req)
        if key is None:
            raise ServiceError(Err.PERM, "register: no credential")
        adm = self.procs.admissions.get(key)
        if adm is not None and adm.role == "init":
            old = self.ipc.init
            if old is not None and old.is_local() and \
                    same_process(old.hostpid, old.host_started) is None:
                self.reclaim(old, "died", ProcState.KILLED)      # its successor is here first
            self.ipc.check_init_free()
        proc = self.procs.register(_peer(req), key, self.host)
        proc.last_heard = self.now()
        if proc.is_local():
            self.exits.watch(proc.spid, proc.hostpid, proc.host_started)
        out = {"spid": proc.spid, "secret": proc.secret, "name": proc.name, "role": proc.role,
               "nframes": self.vm.pool.nframes, "page_size": PAGE_SIZE}
        if proc.role == "init":
            out["stash"] = self.ipc.set_init(proc)
        self.tracer.name_track(proc.spid, f"{proc.name} (spid {proc.spid})")
        self.log.info("registered %s (%s) as spid %d (host pid %d)", proc.name, proc.program,
                      proc.spid, proc.hostpid)
        return out

    def do_attach(self, req: Request) -> dict[str, Any]:
        """Bind a process's control connection, proven by the secret."""
        proc = self.procs.by_spid.get(req.msg["spid"])
        if proc is None or not hmac.compare_digest(proc.secret, req.msg["secret"]):
            raise ServiceError(Err.PERM, "attach: no such process or wrong secret")
        if req.user_id is not None and req.user_id != proc.key:
            raise ServiceError(Err.PERM, "attach: the control connection must use the "
                                         "process's own key")
        if proc.ctrl_peer is not None or req.peer in self.procs.by_peer:
            raise ServiceError(Err.PERM, "attach: a control connection is already bound")
        self.procs.attach(proc, _peer(req))
        return {}

    def do_heartbeat(self, req: Request) -> dict[str, Any]:
        """Liveness, and the reference bits the MMU harvested since the last message."""
        self.stats.heartbeats += 1
        self.vm.apply_refs(caller(req), req.msg["refs"])
        return {}

    def do_report(self, req: Request) -> dict[str, Any]:
        """Record app-level results (checksum verdict, progress)."""
        apply_report(caller(req), req.msg["data"])
        return {}

    def do_exit(self, req: Request) -> dict[str, Any]:
        """An orderly exit: reclaim everything the process holds."""
        self.reclaim(caller(req), f"exited with status {req.msg['status']}", ProcState.EXITED)
        return {}

    # -- memory ---------------------------------------------------------------------------
    def do_map(self, req: Request) -> dict[str, Any]:
        """Create a region; the kernel picks the address when addr is 0 or absent."""
        vpn = _page_of(req.msg.get("addr", 0), "map: ")
        proc = caller(req)
        npages = req.msg["npages"]
        if 0 < npages <= MAX_MAP_PAGES:          # out of range: map() says EINVAL
            proc.quota.check(Resource.REGIONS, 1)
            proc.quota.check(Resource.PAGES, npages)
        vpn = proc.aspace.map(vpn, npages, req.msg["prot"])
        self.vm.sync_space(proc)
        return {"addr": vpn << PAGE_SHIFT}

    def do_unmap(self, req: Request) -> dict[str, Any]:
        """Remove a range: free its frames and its swap blocks."""
        proc = caller(req)
        vpn, npages = _page_of(req.msg["addr"]), _npages(req.msg["npages"])
        proc.quota.check(Resource.REGIONS, max(0, proc.aspace.edges_inside(vpn, npages) - 1))
        self.vm.release_pages(proc, proc.aspace.unmap(vpn, npages))
        self.vm.sync_space(proc)
        return {}

    def do_protect(self, req: Request) -> dict[str, Any]:
        """Change a range's permissions (W^X enforced); the caller's runtime drops its TLB."""
        proc = caller(req)
        vpn, npages = _page_of(req.msg["addr"]), _npages(req.msg["npages"])
        proc.quota.check(Resource.REGIONS, proc.aspace.edges_inside(vpn, npages))
        proc.aspace.protect(vpn, npages, req.msg["prot"])
        self.vm.sync_space(proc)
        return {}

    # -- pagers ---------------------------------------------------------------------------
    def do_pager_hello(self, req: Request) -> dict[str, Any]:
        """A pager instance joins (or keeps) its mirror slot."""
        mirror = self._mirror(req)
        if self.secure and self.role_of(req) != Role("pager", mirror):
            raise ServiceError(Err.PERM, f"pager_hello: mirror {mirror} takes only pager{mirror}'s "
                                         f"key, not {self.role_of(req)}'s")
        if req.peer in self.procs.by_peer:
            raise ServiceError(Err.PERM, "a sealed process cannot be a pager")
        held = self.pagers.holder(req.peer) if req.peer is not None else None
        if held is not None and held != mirror:
            raise ServiceError(Err.PERM, f"this connection already holds mirror {held}")
        self.pagers.hello(_peer(req), mirror, req.msg["host"][:128], req.msg["hostpid"])
        return {}

    def do_pager_instance(self, req: Request) -> dict[str, Any]:
        """The launcher says which host process it started for a pager slot (pid and start
        time): the kernel may then notice its exit at once and SIGKILL it when it hangs."""
        self._launcher_only(req, "pager_instance")
        self.pagers.report_instance_pid(self._mirror(req), req.msg["hostpid"], req.msg["started"])
        return {}

    def _mirror(self, req: Request) -> int:
        """The request's mirror slot number; EINVAL out of range."""
        mirror: int = req.msg["mirror"]
        if not 0 <= mirror < self.pagers.nmirrors:
            raise ServiceError(Err.INVAL, f"mirror {mirror} out of range "
                                          f"0..{self.pagers.nmirrors - 1}")
        return mirror

    # -- stopping processes -----------------------------------------------------------------
    def kill_proc(self, proc: Proc, reason: str) -> None:
        """Stop a process the kernel can no longer serve: tell it, reclaim, and make sure."""
        self.log.error("killing %s (spid %d): %s", proc.name, proc.spid, reason)
        if proc.ctrl_peer is not None:
            self.request(self.sock, proc.ctrl_peer, Op.KILL, {"reason": reason[:200]},
                         _ignore_reply, KILL_GRACE_MS)
        hostpid, started = proc.hostpid, proc.host_started
        self.reclaim(proc, f"killed by the kernel: {reason}", ProcState.KILLED)
        if proc.is_local():

            def make_sure() -> None:
                kill_if_same(hostpid, started)
            self.call_later(KILL_GRACE_MS, make_sure)

    def reclaim(self, proc: Proc, reason: str, state: ProcState) -> None:
        """Free every frame, swap block, disk handle and capability of a finished process."""
        if not proc.alive:
            return
        proc.alive = False
        proc.state, proc.exit_reason = state, reason
        self.exits.forget(proc.spid)
        proc.space.owner_alive = False
        self.vm.cancel_shootdowns(proc)
        self.tracer.end_track(proc.spid, outcome=str(state))
        self.vm.release_pages(proc, proc.aspace.clear())
        self.vm.sync_space(proc)
        proc.quota.release(Resource.REPORT_BYTES, proc.quota.used[Resource.REPORT_BYTES])
        self.pagers.maybe_close(proc.space)
        self.ipc.reclaim(proc)
        self.procs.retire(proc)
        for peer in (proc.call_peer, proc.ctrl_peer):     # its routing ids: nothing left to steal
            if peer is not None:
                self.peer_keys.pop(peer, None)
        self.log.info("reclaimed %s (spid %d): %s", proc.name, proc.spid, reason)

    def _watch(self) -> None:
        """Every LIVENESS_MS: notice dead processes and silent pagers.  A local process's
        exit shows on its pidfd (ExitWatch: one poll for all of them, so a tick costs the same
        with 256 processes as with 16); one it could not watch is looked up on the host, and
        a remote one is dead once silent for PROC_DEAD_MS."""
        now = self.now()
        for spid in self.exits.exited():
            proc = self.procs.by_spid.get(spid)
            if proc is not None:
                self.reclaim(proc, "died", ProcState.KILLED)
        for proc in [p for p in self.procs.by_spid.values() if p.spid not in self.exits]:
            if proc.is_local():
                dead = same_process(proc.hostpid, proc.host_started) is None
            else:
                dead = (now - proc.last_heard) * 1000 > PROC_DEAD_MS
            if dead:
                self.reclaim(proc, "died", ProcState.KILLED)
        self.pagers.check_liveness()
        self.procs.expire_admissions(now)
        self.call_later(LIVENESS_MS, self._watch)

    def on_start(self) -> None:
        self.call_later(LIVENESS_MS, self._watch)

    def on_stop(self) -> None:
        self.tracer.flush()

    # -- observation ----------------------------------------------------------------------
    def do_ping(self, req: Request) -> dict[str, Any]:
        """Liveness of the kernel itself."""
        return {"service": "kernel", "pid": self.pid}

    def do_stats(self, req: Request) -> dict[str, Any]:
        """Every counter, the pagers' health, every process (live and exited), and the
        latency histograms (histogram.py) of faults, disk reads and calls."""
        records = self.process_records()          # first: it counts records_omitted
        return {"kernel": self.counters(), "processes": records, "histograms": {
            "bounds_us": BOUNDS_US, "vm": self.vm.histograms.record(),
            "ipc": self.ipc.histograms.record()}}

    def do_fault_log(self, req: Request) -> dict[str, Any]:
        """The faults served since `cursor` (see faultlog.py): records, next cursor, dropped."""
        records, cursor, dropped = self.vm.fault_log.since(req.msg["cursor"])
        return {"records": [list(r) for r in records], "cursor": cursor, "dropped": dropped,
                "now": self.now()}

    def do_ps(self, req: Request) -> dict[str, Any]:
        """The process table (unless `processes` is False) and the pager slots."""
        pagers = [s.health(self.now()) for s in self.pagers.slots]
        if req.msg.get("processes", True) is False:
            return {"pagers": pagers}
        return {"processes": self.process_records(), "pagers": pagers}

    def counters(self) -> dict[str, Any]:
        """The kernel-wide counters as one map."""
        out = self.stats.as_dict()
        live = self.procs.by_spid.values()
        out.update(free_frames=self.vm.pool.free_count,
                   resident_pages=sum(p.resident for p in live),
                   swapped_pages=sum(p.swapped for p in live), live_processes=len(live),
                   pages_short=self.resync.short(),
                   pagers=[s.health(self.now()) for s in self.pagers.slots],
                   bad_messages=self.bad_messages, callback_errors=self.callback_errors,
                   refused_keys=self.refused_keys,   # handshakes refused + key/routing-id clashes
                   secure=self.secure, ipc=self.ipc.counters(),
                   fault_latency_us={k: _percentiles(islice(reversed(v), PERCENTILE_SAMPLES))
                                     for k, v in self.vm.latency.items()})
        return out

    def process_records(self) -> list[dict[str, Any]]:
        """Live processes' records, then exited ones', within RECORDS_MAX_BYTES together
        (see records.py: no process's record can make stats or ps too big to send)."""
        records, omitted = bounded_records([p.record() for p in self.procs.by_spid.values()],
                                           list(self.procs.exited))
        self.stats.records_omitted = omitted
        return records


def _ignore_reply(rid: int, reply: dict[str, Any] | None) -> None:
    """A process answer nobody waits for."""


def _page_of(addr: Any, what: str = "") -> int:
    """The page number of a page-aligned address; EINVAL otherwise."""
    if not isinstance(addr, int) or addr < 0 or addr % PAGE_SIZE:
        raise ServiceError(Err.INVAL, f"{what}address {addr!r} is not page-aligned")
    return addr >> PAGE_SHIFT


def _npages(n: int) -> int:
    if n <= 0:
        raise ServiceError(Err.INVAL, f"npages {n} must be positive")
    return n


def _short(text: str) -> str:
    """A launcher-given string, bounded."""
    return text[:ADMIT_MAX_CHARS]


def _names(items: list[Any]) -> list[str]:
    """A launcher-given list of names (manifest, provides): strings only, bounded."""
    if len(items) > ADMIT_MAX_NAMES or not all(isinstance(i, str) for i in items):
        raise ServiceError(Err.INVAL, f"admit: a name list holds at most {ADMIT_MAX_NAMES} "
                                      f"strings")
    return [_short(i) for i in items]


def _quota_spec(spec: dict[Any, Any]) -> dict[str, int]:
    """A launcher-given quota map: resource name -> non-negative int."""
    if len(spec) > ADMIT_MAX_NAMES or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
            for k, v in spec.items()):
        raise ServiceError(Err.INVAL, "admit: quota maps resource names to non-negative ints")
    limits_from(spec)                                  # EINVAL names an unknown resource
    return dict(spec)


def _percentiles(samples: Iterable[float]) -> dict[str, float]:
    """n, p50, p99 and max of samples (just n when there are none)."""
    data = sorted(samples)
    if not data:
        return {"n": 0}

    def pick(q: float) -> float:
        return round(data[min(len(data) - 1, int(q * len(data)))], 1)
    return {"n": len(data), "p50": pick(0.5), "p99": pick(0.99), "max": round(data[-1], 1)}


def _peer(req: Request) -> bytes:
    """The ROUTER routing id a request came from (the kernel serves ROUTER connections only)."""
    if req.peer is None:
        raise Panic(f"{req.op} reached the kernel on a connection with no routing id")
    return req.peer


def build_parser() -> argparse.ArgumentParser:
    """`sealedos kernel` flags; every one has an environment-variable default."""
    env = os.environ.get
    p = argparse.ArgumentParser(prog="sealedos kernel", description="run the kernel daemon")
    p.add_argument("--rundir", default=env("SEALEDOS_RUNDIR"),
                   help="runtime directory (ipc sockets)")
    p.add_argument("--addr", default=env("SEALEDOS_KERNEL_ADDR"),
                   help="address to listen on (default ipc://RUNDIR/kernel.sock)")
    p.add_argument("--frames", type=int, default=int(env("SEALEDOS_FRAMES", "128")))
    p.add_argument("--policy", choices=sorted(POLICIES), default=env("SEALEDOS_POLICY", "clock"))
    p.add_argument("--pagers", type=int, default=int(env("SEALEDOS_PAGERS", "1")),
                   help="mirrored pager slots (2 = every page-out goes to both)")
    p.add_argument("--code", default=env("SEALEDOS_CODE"),
                   help="erasure-code pages K+R across the pagers (--pagers must be K+R)")
    p.add_argument("--prefetch", choices=MODES, default=env("SEALEDOS_PREFETCH", DEFAULT_MODE),
                   help="read swapped pages ahead of faults (prefetch.py)")
    p.add_argument("--fault-around", type=int, default=FAULT_AROUND,
                   help="most prefetched pages a fault installs beside its own (0: none)")
    p.add_argument("--cluster", type=int, default=CLUSTER_PAGES,
                   help="most pages one page-out request to a pager carries (1: one; "
                        "at most 64)")
    p.add_argument("--ec-delta", type=int, default=int(env("SEALEDOS_EC_DELTA", "1")),
                   help="with --code: a page-in asks K + this many pagers at once")
    p.add_argument("--no-seal", action="store_true", default=env("SEALEDOS_NO_SEAL") == "1",
                   help="plaintext pages (a trusted pager; to measure sealing's cost)")
    p.add_argument("--pager-timeout-ms", type=int,
                   default=int(env("SEALEDOS_PAGER_TIMEOUT_MS", "2000")))
    p.add_argument("--pager-retries", type=int, default=int(env("SEALEDOS_PAGER_RETRIES", "5")))
    p.add_argument("--ipc-max-bytes", type=int,
                   default=int(env("SEALEDOS_IPC_MAX_BYTES", str(IPC_MAX_PAYLOAD_BYTES))))
    p.add_argument("--trace", default=env("SEALEDOS_TRACE"), help="write a Chrome trace here")
    p.add_argument("--launcher-key", default=env("SEALEDOS_LAUNCHER_KEY"),
                   help="the trusted launcher's z85 public key: only it may ADMIT processes "
                        "(default with --keys: KEYS/public/launcher.key)")
    p.add_argument("--keys", default=env(wkeys.KEYS_ENV),
                   help=f"keys directory (env {wkeys.KEYS_ENV}): the kernel's secret, every public")
    p.add_argument("--insecure", action="store_true", default=wkeys.insecure_from_env(),
                   help=f"no authentication or encryption (measurement only; "
                        f"env {wkeys.INSECURE_ENV}=1)")
    return p


def collect_rarely() -> None:
    """Spare the kernel's loop most full garbage collections: what exists once it is built
    (modules, tables) is never scanned again, and a full collection waits for GC_FULL_AFTER
    middle-generation ones, not 10 (young cycles are collected as often as before)."""
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, GC_FULL_AFTER)


def main(argv: list[str]) -> int:
    """Run the kernel in the foreground until SIGTERM/SIGINT."""
    host.make_nondumpable("kernel")          # before the key or the init token exist here
    args = build_parser().parse_args(argv)
    if not args.addr:
        if not args.rundir:
            print("sealedos kernel: give --addr or --rundir (or SEALEDOS_RUNDIR)", file=sys.stderr)
            return 2
        args.addr = f"ipc://{args.rundir}/kernel.sock"
    if args.frames < 1 or not 1 <= args.pagers <= MAX_MIRRORS:
        print(f"sealedos kernel: --frames must be at least 1, --pagers 1 to {MAX_MIRRORS}",
              file=sys.stderr)
        return 2
    try:
        keys = wkeys.keyring(args.keys, "kernel", args.insecure)
        code = parse_code(args.code) if args.code else None
    except (KeysMissing, ValueError) as exc:
        print(f"sealedos kernel: {exc}", file=sys.stderr)
        return 2
    if code and sum(code) != args.pagers:
        print(f"sealedos kernel: --code {args.code} needs --pagers {sum(code)}", file=sys.stderr)
        return 2
    kernel = Kernel(args.addr, args.frames, args.policy, args.pagers, not args.no_seal,
                    args.pager_timeout_ms, args.pager_retries, args.ipc_max_bytes, args.trace,
                    args.launcher_key, keys, code=code, ec_delta=args.ec_delta,
                    prefetch=args.prefetch, fault_around=max(0, args.fault_around),
                    cluster_pages=args.cluster)
    collect_rarely()
    host.open_socket_file(args.addr)
    print(f"kernel: serving at {args.addr} ({args.frames} frames, policy {args.policy}, "
          f"{args.pagers} pager slot(s){', code ' + args.code if code else ''}, "
          f"{'sealed' if not args.no_seal else 'UNSEALED'}, "
          f"{'CURVE' if kernel.secure else 'INSECURE (NULL)'})",
          file=sys.stderr, flush=True)
    try:
        kernel.serve_until_signalled()
    finally:
        if args.addr.startswith("ipc://"):
            Path(args.addr[len("ipc://"):]).unlink(missing_ok=True)
    return 0

