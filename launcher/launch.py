"""Starting a sealed process: admit it with the kernel, then hand it its credential.

The trusted launcher is the only source of a process's identity (issue: identity is issued,
never claimed).  To start one:

1. look the program up in the service table (manifest, provides, quota, role) and hash the
   code file it will run (the digest);
2. start the child with the read end of a pipe inherited (its number in ``SEALEDOS_CRED_FD``;
   the credential itself never appears in argv, the environment, or a file);
3. ADMIT it with the kernel -- program, digest, table row, and, on the kernel's host, the
   child's pid and start time, so the kernel can later tell *that* process from a reused pid;
4. write the one-time credential the kernel returns into the pipe and close it.

The child reads the credential, REGISTERs with it, and is bound to what step 3 said.
"""
from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import psutil

from launcher import spawn
from launcher.table import DEFAULT_TABLE, ProgramSpec, load, lookup
from wire.client import Client
from wire.credential import CRED_FD_ENV, from_z85
from wire.keys import INSECURE_ENV, KERNEL_KEY_ENV, Keyring, keypair_of_credential, load_keypair
from wire.protocol import Op, ServiceError

#: The principal name of the launcher's key files.
LAUNCHER: str = "launcher"


def load_launcher_key(keys_dir: Path) -> tuple[str, bytes]:
    """(z85 public key, credential) of the launcher, from its secret file."""
    pair = load_keypair(keys_dir, LAUNCHER)          # KeysMissing if absent or unreadable
    return pair.public_text, from_z85(pair.secret)


class Launcher:
    """Admits processes with one kernel and starts them with their credentials."""

    def __init__(self, kernel_addr: str, secret: bytes, table_path: Path = DEFAULT_TABLE,
                 kernel_public: bytes | None = None) -> None:
        """secret: the launcher's credential (its CURVE secret key); kernel_public: the
        kernel's CURVE public key -- with it the launcher's connection is CURVE and its key
        proves it is the launcher; without it (an insecure kernel) ADMIT carries the secret."""
        self.kernel_addr = kernel_addr
        self._secret = secret
        self._keys = Keyring(keypair_of_credential(secret), {"kernel": kernel_public}) \
            if kernel_public is not None else None
        #: What a child needs to know to reach the kernel: its public key, or NULL.
        self._child_env = {KERNEL_KEY_ENV: kernel_public.decode("ascii")} \
            if kernel_public is not None else {INSECURE_ENV: "1"}
        self.table = load(table_path)
        self._client: Client | None = None
        self._lock = threading.Lock()            # one connection, callers on any thread

    def spec(self, program: str) -> ProgramSpec:
        """The service table's row of `program` (UnknownProgram if none)."""
        return lookup(self.table, program)

    def admit(self, program: str, name: str, /, hostpid: int = 0, started: float = 0.0,
              **override: Any) -> bytes:
        """ADMIT one process of `program` called `name`; return its one-time credential.

        hostpid/started: the host process, when it runs on the kernel's host (else 0).
        override: table fields (manifest, provides, quota, role) the operator sets for this
        one process (tests)."""
        spec = dataclasses.replace(self.spec(program), **override)
        reply = self._call(Op.ADMIT, name=name, program=spec.program, digest=spec.digest(),
                           role=spec.role, manifest=list(spec.manifest),
                           provides=list(spec.provides), quota=dict(spec.quota),
                           hostpid=hostpid, started=started, host=socket.gethostname())
        cred = reply.get("cred")
        if not isinstance(cred, bytes):
            raise RuntimeError("admit: the kernel's reply carries no credential")
        return cred

    def report_pager(self, mirror: int, pid: int) -> None:
        """Tell the kernel which host process this launcher started for pager slot `mirror`
        (pid and start time): the kernel may then notice its death at once, and kill it --
        that very process -- when it hangs."""
        try:
            started = psutil.Process(pid).create_time()
        except psutil.Error:
            return                                   # already gone: its successor reports
        try:
            self._call(Op.PAGER_INSTANCE, mirror=mirror, hostpid=pid, started=started)
        except ServiceError as exc:                  # the pager still serves: only the fast
            print(f"sealedos: launcher: could not report pager{mirror}'s pid: {exc.msg}",
                  file=sys.stderr, flush=True)       # notice of its death is lost

    def _call(self, op: Op, **fields: Any) -> dict[str, Any]:
        """One request to the kernel as the launcher (connecting on first use; on an
        insecure kernel the launcher's secret rides along as its proof)."""
        if self._keys is None:
            fields["cred"] = self._secret
        with self._lock:
            if self._client is None:
                self._client = Client(self.kernel_addr, keys=self._keys)
            return self._client.call(op, **fields)

    def start(self, program: str, name: str, args: list[str], /, log: Path | None = None,
              env: dict[str, str] | None = None, nice: int = 0, local: bool = True,
              inherit_output: bool = False, cmd: list[str] | None = None,
              uid: int | None = None, **override: Any) -> subprocess.Popen[bytes]:
        """Start `program` as the sealed process `name` with its credential on a pipe.

        local: the kernel runs on this host, so it may watch (and stop) the child by its pid
        and start time; else it knows the child only by its connection.  uid: run it as that
        unprivileged uid (a launcher running as root).  cmd and override:
        another command and table fields (benchmarks that start their own hostile programs;
        the override's module is what the digest covers)."""
        self.spec(program)                           # unknown programs are never started
        rfd, wfd = os.pipe2(os.O_CLOEXEC)
        os.set_inheritable(rfd, True)
        cmd = cmd or [sys.executable, "-m", "apps.run", program, "--kernel", self.kernel_addr,
                      "--name", name, *args]
        try:
            child = spawn.spawn(cmd, log, {**self._child_env, **(env or {}), CRED_FD_ENV: str(rfd)},
                                nice=nice, pass_fds=(rfd,), inherit_output=inherit_output, uid=uid)
        finally:
            os.close(rfd)
        try:
            hostpid, started = (child.pid, psutil.Process(child.pid).create_time()) if local \
                else (0, 0.0)
            cred = self.admit(program, name, hostpid, started, **override)
            os.write(wfd, cred)
        except BaseException:
            spawn.stop(child)
            raise
        finally:
            os.close(wfd)
        return child

    def close(self) -> None:
        """Close the connection to the kernel."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
