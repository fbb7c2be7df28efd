"""Attacks on the transport: every connection is CURVE-authenticated and its role is bound to
its key (wire/keys.py, wire/sockets.py, the ZAP handler in wire/server.py).

Each attack runs against a real system (kernel, pagers, disks, init as OS processes) from a
real peer: this test process's own sockets, or a real `sealedos pager` started with the
wrong key.  Each asserts that the attack gets nothing, that a victim's data still verifies,
and that the services keep serving."""
from __future__ import annotations

import functools
import os
import select
import shutil
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import polling
import pytest
import zmq

from apps.runtime import PAGE_SIZE, SealedProcess
from host_tools import keys_cmd
from host_tools.system import System
from launcher import spawn
from wire import keys as wkeys
from wire import sockets
from wire.client import Client
from wire.keys import Keypair, Keyring
from wire.protocol import PROT_R, PROT_W, Err, Op, ServiceError, decode, encode

#: How long an attacker waits for a reply that must never come.
NEVER_MS: int = 1500
WAIT_S: float = 30.0

wait_for = functools.partial(polling.wait_for, timeout_s=WAIT_S)


def stranger(server_public: bytes, server: str = "kernel") -> Keyring:
    """A keyring with a fresh key nobody admitted, that knows the real server's public key."""
    public, secret = zmq.curve_keypair()
    return Keyring(Keypair(public, secret), {server: server_public})


def as_principal(system: System, principal: str, server: str) -> Keyring:
    """A keyring speaking with `principal`'s real secret to `server`."""
    own = wkeys.load_keypair(system.keys_dir, principal)
    return Keyring(own, {server: wkeys.load_public(system.keys_dir, server)})


def as_sealed_process(system: System, name: str, server: str = "kernel") -> Keyring:
    """A keyring speaking to `server` with the key of a credential the launcher really
    admitted (what a hostile sealed process holds)."""
    own = wkeys.keypair_of_credential(system.admit("memstress", name))
    return Keyring(own, {server: wkeys.load_public(system.keys_dir, server)})


def kernel_stats(system: System) -> dict:
    """The kernel's counters (asked with the launcher's key)."""
    return system.stats()["kernel"]


def hello(client: Client, mirror: int) -> dict:
    """One PAGER_HELLO claiming mirror `mirror` (the claimed host pid is a lie)."""
    return client.call(Op.PAGER_HELLO, mirror=mirror, host=socket.gethostname(), hostpid=1)


def refused(client: Client, op: Op = Op.PING, **fields: object) -> bool:
    """True if `op` gets no reply at all (the handshake was refused)."""
    try:
        client.call(op, timeout_ms=NEVER_MS, **fields)
    except ServiceError as exc:
        return exc.code == Err.TIMEDOUT
    return False


def slots_untouched(system: System) -> None:
    """Every pager slot is up and still held by the one instance the supervisor started."""
    slots = kernel_stats(system)["pagers"]
    assert all(s["up"] and s["joins"] == 1 for s in slots), slots


# -- the handshake ----------------------------------------------------------------------------
@pytest.mark.parametrize("transport", ["ipc", "tcp"])
def test_unknown_key_is_refused_at_the_handshake(make_system: Callable[..., System],
                                                 transport: str) -> None:
    system = make_system(frames=8, disk_size_mib=4, transport=transport)
    kernel_public = wkeys.load_public(system.keys_dir, "kernel")
    before = kernel_stats(system)["refused_keys"]
    with Client(system.kernel_addr, keys=stranger(kernel_public)) as c:
        assert refused(c), "a stranger's key got a reply"
        assert refused(c, Op.REGISTER, name="x", program="x", digest="0" * 64, host="h", hostpid=1)
    with Client(system.kernel_addr) as null:                # no CURVE at all
        assert refused(null)
    disk = system.services["disk0"]
    disk_public = wkeys.load_public(system.keys_dir, "disk0")
    with Client(disk.addr or "", keys=stranger(disk_public, "disk0"), server="disk0") as c:
        assert refused(c, Op.READ, handle=b"\x00" * 16, slot=0)
    assert kernel_stats(system)["refused_keys"] > before
    assert kernel_stats(system)["secure"] is True
    slots_untouched(system)


def test_a_client_that_expects_the_kernels_key_never_talks_to_an_impostor(
        make_system: Callable[..., System], tmp_path: Path) -> None:
    """Server authentication: a ROUTER holding another secret cannot pose as the kernel (the
    pager's or an app's handshake fails; nothing is sent in clear)."""
    system = make_system(frames=8, disk_size_mib=4)
    public, secret = zmq.curve_keypair()
    ctx = zmq.Context()
    addr = spawn.ipc_addr(tmp_path, "impostor")
    impostor = sockets.router(ctx, addr, Keypair(public, secret))   # no ZAP: admits anyone
    try:
        with Client(addr, keys=as_principal(system, "observer", "kernel")) as c:
            c.sock.send(encode({"op": "ping", "rid": 1}))
            assert not impostor.poll(NEVER_MS), "the impostor received a message"
    finally:
        impostor.close(0)
        ctx.term()


# -- pager slots ------------------------------------------------------------------------------
def test_pager_slots_take_only_their_own_pagers_key(make_system: Callable[..., System]) -> None:
    system = make_system(frames=8, disk_size_mib=4, pagers=2)
    attempts = [("observer", 0), ("launcher", 1), ("kernel", 0),
                ("pager1", 0), ("pager0", 1)]              # the last two: the wrong slot's key
    for principal, mirror in attempts:
        with Client(system.kernel_addr, keys=as_principal(system, principal, "kernel")) as c:
            with pytest.raises(ServiceError) as info:
                hello(c, mirror)
            assert info.value.code == Err.PERM, (principal, mirror, info.value)
    for mirror in (0, 1):                                      # an admitted sealed process's key
        with Client(system.kernel_addr, keys=as_sealed_process(system, f"would-be-{mirror}")) as c:
            with pytest.raises(ServiceError) as info:          # before it registers ...
                hello(c, mirror)
            assert info.value.code == Err.PERM
            c.call(Op.REGISTER)
            with pytest.raises(ServiceError) as info:          # ... and after
                hello(c, mirror)
            assert info.value.code == Err.PERM
    with Client(system.kernel_addr, keys=as_principal(system, "pager0", "kernel")) as c:
        with pytest.raises(ServiceError) as info:              # a pager's key admits no process
            c.call(Op.REGISTER)
        assert info.value.code == Err.PERM
    slots_untouched(system)


def test_one_connection_holds_at_most_one_slot(make_system: Callable[..., System]) -> None:
    """Checked on its own, without keys (insecure, where any connection may hello): a
    connection that holds mirror 0 cannot take mirror 1 too."""
    system = make_system(frames=8, disk_size_mib=4, pagers=2, insecure=True)
    with Client(system.kernel_addr) as c:
        hello(c, 0)                                        # insecure: this takes slot 0
        with pytest.raises(ServiceError) as info:
            hello(c, 1)
        assert info.value.code == Err.PERM and "already holds mirror 0" in info.value.msg
    assert kernel_stats(system)["secure"] is False


# -- the disk ---------------------------------------------------------------------------------
def test_the_disk_serves_only_its_own_pager(make_system: Callable[..., System]) -> None:
    system = make_system(frames=8, disk_size_mib=4, pagers=2)
    addr = system.services["disk0"].addr or ""
    for principal in ("pager1", "kernel", "disk1"):              # not admitted at all
        with Client(addr, keys=as_principal(system, principal, "disk0"), server="disk0") as c:
            assert refused(c, Op.OPEN, handle=b"\1" * 16, label="x"), principal
    with Client(addr, keys=as_sealed_process(system, "disk-thief", "disk0"), server="disk0") as c:
        assert refused(c, Op.OPEN, handle=b"\1" * 16, label="x"), \
            "a sealed process reached the disk"
    with Client(addr, keys=as_principal(system, "observer", "disk0"), server="disk0") as c:
        assert c.call(Op.PING)["service"] == "disk"           # an observer may look ...
        for op, fields in ((Op.OPEN, {"handle": b"\0" * 16, "label": "x"}),
                           (Op.READ, {"handle": b"\0" * 16, "slot": 0}),
                           (Op.WRITE, {"handle": b"\0" * 16, "slot": 0, "data": b"\0" * PAGE_SIZE}),
                           (Op.CLOSE, {"handle": b"\0" * 16}), (Op.FREE, {"handle": b"\0" * 16,
                                                                         "slots": [0]})):
            with pytest.raises(ServiceError) as info:          # ... and touch nothing
                c.call(op, **fields)
            assert info.value.code == Err.PERM, op
        assert c.call(Op.STATS)["refused_keys"] >= 4
    with Client(addr, keys=as_principal(system, "pager0", "disk0"), server="disk0") as c:
        c.call(Op.OPEN, handle=os.urandom(16), label="mine")   # its pager may
    with SealedProcess.connect(system.kernel_addr, system.admit("memstress", "pager-user"),
                               system.kernel_public()) as proc:
        addr_v = proc.map(24)                                  # paging through both disks
        pages = fill(proc, addr_v, 24)
        assert all(proc.read(addr_v + i * PAGE_SIZE, PAGE_SIZE) == p for i, p in enumerate(pages))
    assert kernel_stats(system)["integrity_failures"] == {}


# -- routing ids ------------------------------------------------------------------------------
def test_a_routing_id_stays_with_its_key(make_system: Callable[..., System]) -> None:
    """A ROUTER routing id is chosen by the peer: once the victim's connection is gone, a
    peer with another key that reconnects under the victim's routing id gets EPERM, not the
    victim's process."""
    system = make_system(frames=8, disk_size_mib=4)
    victim_id = b"victim-routing-id"
    app, observer = as_sealed_process(system, "victim"), as_principal(system, "observer", "kernel")
    victim = raw_dealer(system, app, victim_id)
    spid = ask(victim, Op.REGISTER)["spid"]
    victim.close(0)
    wait_for("the kernel to drop the victim's connection",
             lambda: attempt_takeover(system, observer, victim_id))
    rec = [p for p in system.stats()["processes"] if p["spid"] == spid][0]
    assert rec["name"] == "victim" and rec.get("resident_pages", 0) == 0, rec
    assert kernel_stats(system)["refused_keys"] >= 1
    assert system.client().call(Op.PING)["service"] == "kernel"


def attempt_takeover(system: System, keys: Keyring, routing_id: bytes) -> bool:
    """Connect under `routing_id` with `keys` and try to MAP as that connection's process;
    True once the attempt was answered (it must be EPERM), False if the old connection still
    held the id (the new one was not routed)."""
    sock = raw_dealer(system, keys, routing_id)
    try:
        reply = ask(sock, Op.MAP, timeout_ms=500, npages=1, prot=PROT_R | PROT_W)
    except TimeoutError:
        return False
    finally:
        sock.close(0)
    assert reply.get("err") == Err.PERM, f"the takeover was served: {reply}"
    return True


def raw_dealer(system: System, keys: Keyring, routing_id: bytes) -> zmq.Socket:
    """A CURVE DEALER to the kernel that sets its own routing id (as any peer may)."""
    assert keys.own is not None
    return sockets.dealer(zmq.Context.instance(), system.kernel_addr, keys.own,
                          keys.public("kernel"), routing_id)


def ask(sock: zmq.Socket, op: Op, timeout_ms: int = 20000, **fields: object) -> dict:
    """One raw request; the reply map (errors included); TimeoutError if none came."""
    sock.send(encode({"op": str(op), "rid": 7, **fields}))
    if not sock.poll(timeout_ms):
        raise TimeoutError(op)
    return decode(sock.recv())


# -- hijacking both mirrors ---------------------------------------------------------------------
def test_hijack_of_both_mirrors_fails_and_the_victims_data_verifies(
        make_system: Callable[..., System], tmp_path: Path) -> None:
    """Two real hostile pagers (`--hostile zero`) try to take both mirror slots while a
    victim pages: one with a key nobody admitted, one with a stolen admitted key (the
    observer's).  Neither is admitted, the victim reads back every page, nobody is stopped."""
    system = make_system(frames=8, disk_size_mib=8, pagers=2)
    with SealedProcess.connect(system.kernel_addr, system.admit("memstress", "victim"),
                               system.kernel_public()) as proc:
        addr = proc.map(32)
        pages = fill(proc, addr, 32)
        unknown = attacker_keys(system, tmp_path / "unknown", 0, None)
        stolen = attacker_keys(system, tmp_path / "stolen", 1, "observer")
        attackers = [start_attacker(system, tmp_path, unknown, 0),
                     start_attacker(system, tmp_path, stolen, 1)]
        try:
            wait_for("the stolen key's hello to be refused",
                     lambda: "kernel refused hello" in (tmp_path / "attacker1.log").read_text())
            wait_for("the unknown key's handshake to be refused",
                     lambda: kernel_stats(system)["refused_keys"] >= 1)
            for _ in range(2):                     # page everything out and in again, twice
                for i, page in enumerate(pages):
                    assert proc.read(addr + i * PAGE_SIZE, PAGE_SIZE) == page, f"page {i}"
            assert all(a.poll() is None for a in attackers)   # they kept trying meanwhile
        finally:
            spawn.stop_all(attackers)
    k = kernel_stats(system)
    assert k["integrity_failures"] == {}, k["integrity_failures"]
    slots_untouched(system)
    victim = system.process("victim")
    assert victim is not None and victim["state"] == "exited", victim


def attacker_keys(system: System, keys_dir: Path, mirror: int, steal: str | None) -> Path:
    """A keys directory for a pager attacking `mirror`: its 'own' secret is a fresh key
    (steal None) or a copy of principal `steal`'s real secret; the publics are the real
    kernel's and disk's (public anyway)."""
    me = f"pager{mirror}"
    keys_cmd.generate(keys_dir, [me])
    if steal is not None:
        shutil.copy(wkeys.secret_path(system.keys_dir, steal), wkeys.secret_path(keys_dir, me))
    for public in ("kernel", f"disk{mirror}"):
        shutil.copy(system.keys_dir / "public" / f"{public}.key", keys_dir / "public")
    return keys_dir


def start_attacker(system: System, tmp_path: Path, keys_dir: Path, mirror: int):
    """A real `sealedos pager --hostile zero` for `mirror` with the attacker's keys."""
    cmd = spawn.python_cmd("pager", "--kernel", system.kernel_addr, "--disk",
                           system.services[f"disk{mirror}"].addr or "", "--mirror", str(mirror),
                           "--hostile", "zero", "--keys", str(keys_dir), "--rundir", str(tmp_path))
    return spawn.spawn(cmd, tmp_path / f"attacker{mirror}.log")


def fill(proc: SealedProcess, addr: int, npages: int) -> list[bytes]:
    """Write a distinct random page into each of npages pages; return what was written."""
    pages = [os.urandom(PAGE_SIZE) for _ in range(npages)]
    for i, page in enumerate(pages):
        proc.write(addr + i * PAGE_SIZE, page)
    return pages


# -- what an eavesdropper on the network sees ------------------------------------------------------
@pytest.mark.parametrize("insecure", [False, True])
def test_page_plaintext_never_crosses_the_network(make_system: Callable[..., System],
                                                  insecure: bool) -> None:
    """A recording TCP relay between a sealed process and the kernel (tcp://, pages not even
    sealed) sees the process's page bytes cross in both directions -- shootdown answers out,
    page-ins back -- and with CURVE never a recognisable byte of them.  --insecure shows
    what the relay would otherwise read (so the check can fail)."""
    system = make_system(frames=8, disk_size_mib=8, transport="tcp", no_seal=True,
                         insecure=insecure)
    host, port = system.kernel_addr[len("tcp://"):].rsplit(":", 1)
    marker = b"PLAINTEXT-MARKER"
    with Relay((host, int(port))) as relay:
        with SealedProcess.connect(f"tcp://{relay.addr[0]}:{relay.addr[1]}",
                                   system.admit("memstress", "overheard"),
                                   system.kernel_public()) as proc:
            addr = proc.map(24)
            for i in range(24):                                    # evicted: out via shootdown
                proc.write(addr + i * PAGE_SIZE, marker * (PAGE_SIZE // len(marker)))
            for i in range(24):                                    # and back: page-ins
                assert proc.read(addr + i * PAGE_SIZE, len(marker)) == marker
        seen = relay.recorded()
    assert len(seen) > 24 * PAGE_SIZE, "the pages did not cross the relay"
    assert (marker in seen) == insecure


class Relay:
    """A TCP relay on 127.0.0.1 that forwards every connection to `target` and records every
    byte in both directions (an eavesdropper on the path)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.addr = self.listener.getsockname()
        self._seen: list[bytes] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]

    def __enter__(self) -> Relay:
        self._threads[0].start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.listener.close()
        for t in self._threads:
            t.join(5)

    def recorded(self) -> bytes:
        """Everything relayed so far, both directions."""
        with self._lock:
            return b"".join(self._seen)

    def _accept(self) -> None:
        self.listener.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            upstream = socket.create_connection(self.target)
            t = threading.Thread(target=self._pump, args=(conn, upstream), daemon=True)
            self._threads.append(t)
            t.start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select(list(peers), [], [], 0.1)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    with self._lock:
                        self._seen.append(data)
                    peers[s].sendall(data)
        except OSError:
            return
        finally:
            a.close()
            b.close()
