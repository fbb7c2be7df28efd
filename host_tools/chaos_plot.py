"""The picture of a chaos run: fault latency and IPC throughput over time, a marker at each kill.

Top: every fault the kernel served, at the time it ended, by its latency (log scale): major
faults in blue, minor faults in grey.  Bottom: echo calls per second summed over the
clients.  Each kill is a red dashed line; its outage (kill -> first major fault begun after
it served) is shaded.  Drawn with matplotlib's Agg backend: no display needed.
"""
from __future__ import annotations

from typing import Any


def plot(series: dict[str, Any], result: dict[str, Any], path: str) -> None:
    """Write the PNG for `series` (Chaos.series) and `result` (Chaos.report()) to `path`."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lat, ax_ipc) = plt.subplots(2, 1, figsize=(11, 7), sharex=True,
                                         gridspec_kw={"height_ratios": [3, 2]})
    for kind, color, size, label in (("minor", "0.65", 2, "minor fault"),
                                     ("major", "tab:blue", 4, "major fault")):
        pts = [(t, lat / 1000) for t, k, lat in series["faults"] if k == kind and t >= 0]
        if pts:
            ax_lat.scatter(*zip(*pts, strict=True), s=size, color=color,
                           label=f"{label} ({len(pts)})", linewidths=0, alpha=0.7, rasterized=True)
    ax_lat.set_yscale("log")
    ax_lat.set_ylabel("fault latency (ms, log)")
    ipc = series["ipc"]
    if ipc:
        ax_ipc.plot(*zip(*ipc, strict=True), color="tab:green", linewidth=1.0,
                    drawstyle="steps-post", label="echo calls/s (non-faulting clients)")
    ax_ipc.set_ylabel("IPC calls/s")
    ax_ipc.set_xlabel("time since the workload started (s)")
    ax_ipc.set_ylim(bottom=0)
    for ax in (ax_lat, ax_ipc):
        for i, t in enumerate(series["kills"]):
            ax.axvline(t, color="tab:red", linestyle="--", linewidth=1.0,
                       label=f"SIG{result['signal']} {result['target']}" if i == 0 else None)
        for start, end, recovered in series["outages"]:
            ax.axvspan(start, end, color="tab:red" if recovered else "tab:orange", alpha=0.12,
                       linewidth=0)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper right", fontsize=8, markerscale=3)
    rec = [r for r in result["recovery_ms"] if r is not None]
    lat = result["latency_us"]
    title = (f"sealedos chaos: SIG{result['signal']} {result['target']} every "
             f"{result['every_s']:g} s - {result['kills']} kills, {result['restarts']} restarts, "
             f"recovery median {sorted(rec)[len(rec) // 2]:.0f} ms" if rec else
             f"sealedos chaos: SIG{result['signal']} {result['target']} - {result['kills']} kills")
    sub = (f"app-visible errors {result['app_errors']}, all data verified: {result['verified']}; "
           f"major p50 before {_ms(lat['before'])} / during recovery {_ms(lat['during'])}")
    fig.suptitle(f"{title}\n{sub}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _ms(stats: dict[str, float]) -> str:
    return f"{stats['p50'] / 1000:.2f} ms" if stats.get("n") else "-"
