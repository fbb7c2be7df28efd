"""`sealedos run APP [ARGS]`: run one app as a sealed process against a running kernel.

The app's module ``apps.APP`` has a ``main(argv) -> int``; its return value is the exit
status.  A SealedError the app does not catch (a segmentation fault, a protection fault, a
page whose integrity was lost, a kill, a dead kernel) ends the process with status 3 and one
line on stderr that says which process died of what:

    sealedos: memstress.1: PageIntegrityError: page integrity lost: page 0x10 ...
"""
from __future__ import annotations

import importlib
import os
import sys

from apps.runtime import confine
from apps.runtime.errors import SealedError
from apps.runtime.syscall import KERNEL_ADDR_ENV
from wire import host

#: App name -> module.  Adding an app is one line here.
APPS: dict[str, str] = {
    "memstress": "apps.memstress",
    "refstring": "apps.refstring",
    "pattern": "apps.pattern",
    "init": "apps.init",
    "echo": "apps.echo",
    "echoload": "apps.echoload",
    "touchload": "apps.touchload",
    "kvstore": "apps.kvstore",
    "browser": "apps.browser",
    "plugin": "apps.plugin",
    "sidechannel": "apps.sidechannel",
}

#: Exit status of a sealed process that died of an uncaught SealedError.
SEALED_ERROR_STATUS: int = 3


def usage() -> str:
    """The help text listing the known apps."""
    return "usage: sealedos run APP [ARGS...]\n\napps: " + ", ".join(sorted(APPS))


def _flag_value(argv: list[str], flag: str) -> str | None:
    """The value of `--flag V` or `--flag=V` in argv, if present."""
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg[len(flag) + 1:]
    return None


def main(argv: list[str]) -> int:
    """Run apps.APP's main(ARGS); map an uncaught SealedError to status 3."""
    host.make_nondumpable("run")             # before the app holds any data or secret
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    app, args = argv[0], argv[1:]
    if app not in APPS:
        print(f"sealedos run: unknown app {app!r}\n\n{usage()}", file=sys.stderr)
        return 2
    # Confined before one line of the program runs (its module's top level included).
    confine.confine_program(app, _flag_value(args, "--kernel") or os.environ.get(KERNEL_ADDR_ENV))
    module = importlib.import_module(APPS[app])
    try:
        return int(module.main(args) or 0)
    except SealedError as exc:
        name = exc.process_name or _flag_value(args, "--name") or app
        print(f"sealedos: {name}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return SEALED_ERROR_STATUS
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
