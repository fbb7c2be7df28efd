"""plugin: one browser plugin, a sealed process of its own.

    sealedos run plugin --name plugin.1 [--register plugin.1]

It publishes an endpoint under its name (PLUGIN_CONTRACT) and answers ``render {doc}`` with
``rendered {html}``: the document, escaped and wrapped, tagged with the plugin's name.  A
plugin shares nothing with the browser or with other plugins: if it crashes (or is killed),
only the calls to it fail, with PeerDied, in the browser.
"""
from __future__ import annotations

import argparse
import html
import sys
from typing import Any

from apps.runtime import SealedProcess
from apps.runtime.app import app_parser

DOC_MAX: int = 1024
HTML_MAX: int = 8192
PLUGIN_CONTRACT: dict[str, Any] = {
    "name": "plugin",
    "calls": {"render": {"fields": {"doc": {"type": "str", "max_len": DOC_MAX}}}},
    "replies": {"rendered": {"fields": {"html": {"type": "str", "max_len": HTML_MAX},
                                        "by": {"type": "str", "max_len": 64}}}},
}


def render(name: str, doc: str) -> dict[str, Any]:
    """The reply to render {doc}."""
    body = f'<div class="{html.escape(name)}">{html.escape(doc)}</div>'
    return {"kind": "rendered", "html": body[:HTML_MAX], "by": name[:64]}


def serve(proc: SealedProcess, name: str) -> None:
    """Publish `name` and render forever."""
    h = proc.endpoint(PLUGIN_CONTRACT)
    proc.register_name(name, h)
    proc.report(ready=True)
    rcv = proc.receive(h)
    while True:
        rcv = proc.reply(rcv, render(name, rcv.msg["doc"]), receive=h)


def build_parser() -> argparse.ArgumentParser:
    """`sealedos run plugin` flags."""
    p = app_parser("plugin", __doc__)
    p.add_argument("--register", help="the name to publish (default: --name)")
    return p


def main(argv: list[str]) -> int:
    """`sealedos run plugin ...`"""
    args = build_parser().parse_args(argv)
    with SealedProcess.connect(args.kernel) as proc:
        serve(proc, args.register or args.name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
