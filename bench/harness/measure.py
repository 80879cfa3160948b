"""Measuring for the benches: percentiles, the machine's facts, CPU use by process group."""

from __future__ import annotations

import contextlib
import os
import platform
from importlib import metadata
from pathlib import Path

import numpy as np


def summarize(values: list[float], suffix: str = "") -> dict:
    """n, p50, p95, mean, min and max (each key but n ending in `suffix`)."""
    if not values:
        return {"n": 0}
    a = np.asarray(values, dtype=np.float64)
    stats = {
        "p50": np.percentile(a, 50),
        "p95": np.percentile(a, 95),
        "mean": a.mean(),
        "min": a.min(),
        "max": a.max(),
    }
    return {"n": int(a.size)} | {k + suffix: float(v) for k, v in stats.items()}


def percentiles(samples_s: list[float]) -> dict:
    """p50 and p95 in milliseconds of timings in seconds."""
    ms = np.asarray(samples_s) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95))}


def dist_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what `platform` knows, else "?"."""
    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return cpu


def machine_info() -> dict:
    memory_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory_gib = round(int(line.split()[1]) / 2**20, 1)
    return {
        "cpu": cpu_name(),
        "cpus": os.cpu_count(),
        "memory_gib": memory_gib,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "flet": dist_version("flet"),
        "flet-web": dist_version("flet-web"),
        "playwright": dist_version("playwright"),
        "onnxruntime": dist_version("onnxruntime"),
        "numpy": np.__version__,
    }


def cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat, or None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    ticks = [float(x) for x in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0.0)
    return sum(ticks) - idle, sum(ticks)


def cpu_by_group(server_pid: int | None) -> dict[str, float] | None:
    """CPU seconds (user + system) used so far by this script's live descendants, grouped:
    the app server's process tree, Chromium, Playwright's driver, this script, other."""
    procs = {}
    try:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, ValueError, IndexError):
                raw = (entry / "stat").read_text()
                comm = raw[raw.index("(") + 1 : raw.rindex(")")]
                fields = raw[raw.rindex(")") + 2 :].split()
                procs[int(entry.name)] = (
                    comm,
                    int(fields[1]),
                    float(fields[11]) + float(fields[12]),
                )
    except OSError:
        return None
    children: dict[int, list[int]] = {}
    for pid, (_, ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    hz = os.sysconf("SC_CLK_TCK")
    out = {"app server": 0.0, "chromium": 0.0, "playwright driver": 0.0, "this script": 0.0}
    out["other"] = 0.0
    me = os.getpid()
    stack = [(me, "this script")]
    while stack:
        pid, group = stack.pop()
        if pid not in procs:
            continue
        comm = procs[pid][0].lower()
        if pid == server_pid:
            group = "app server"
        elif group != "app server" and pid != me:
            if "chrom" in comm:
                group = "chromium"
            elif comm.startswith("node"):
                group = "playwright driver"
            elif group == "this script":
                group = "other"
        out[group] += procs[pid][2] / hz
        stack += [(child, group) for child in children.get(pid, [])]
    return out


def cpu_shares(run: dict, window_s: float) -> tuple[float | None, dict[str, float] | None]:
    """From the readings `run_window` (bench/harness/kiosk_session.py) records: the machine's
    busy fraction over the window, and each process group's CPU seconds per second of it (1.0 =
    one core busy); None where unread."""
    busy = None
    if run.get("cpu_start") and run.get("cpu_end"):
        d_busy = run["cpu_end"][0] - run["cpu_start"][0]
        d_total = run["cpu_end"][1] - run["cpu_start"][1]
        busy = d_busy / d_total if d_total > 0 else None
    split = None
    if run.get("cpu_groups_start") and run.get("cpu_groups_end"):
        split = {
            group: (run["cpu_groups_end"][group] - run["cpu_groups_start"].get(group, 0.0))
            / window_s
            for group in run["cpu_groups_end"]
        }
    return busy, split
