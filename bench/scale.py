"""Scale benchmark: `pocketrec data stats --format mimic3` on 1x, 10x, 100x the embedded demo.

    python bench/scale.py [--factors 1,10,100] [--workdir DIR] [--keep]

For each factor f the script writes a MIMIC-III-schema export (plain .csv) of f x 100 patients.
Factor 1 is the demo itself, decompressed byte for byte. Any other factor draws f x 100 patients
with replacement from the demo's 100 (numpy default_rng, seed 0); every drawn copy gets a fresh
subject_id, each of its admissions a fresh hadm_id and every row a fresh row_id, and all of that
patient's rows in the five tables are copied with those ids rewritten. Other columns (icustay_id
included) are copied unchanged; the column set, column order and header case are the demo's.
Because patients are drawn with replacement, the number of admissions written is close to, but
not exactly, f x 129; the check compares the reader's counts with what was actually written.

Each export is read by `python -m pocketrec.cli data stats ... --json` in a fresh child process,
twice per factor (round robin over the factors). Wall time is the faster of the two runs; peak
RSS is the larger of the two. Both come from a lean wrapper process that forks and execs the
child and reaps it with os.wait4, so the peak RSS is the kernel's ru_maxrss of that one child:
no polling, no /usr/bin/time (see METHOD for why the wrapper is needed). Factor 1 is always run:
its wall time stands for the fixed start-up cost (interpreter, imports, drug code tables).

Prints a markdown table and a line on linearity, and writes bench/results/scale.json atomically.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from contract.files import atomic_write_json  # noqa: E402

DEMO = ROOT / "assets" / "data" / "mimic3_demo"
RESULTS = ROOT / "bench" / "results" / "scale.json"
TABLES = ["ADMISSIONS", "PATIENTS", "DIAGNOSES_ICD", "PROCEDURES_ICD", "PRESCRIPTIONS"]
SEED = 0
RUNS = 2
COPIES_PER_BLOCK = 1000  # about 100k prescription rows per block written
SUBJECT_BASE = 1
HADM_BASE = 100_001
METHOD = (
    "each run goes through a lean wrapper (python -I -S -c) that forks, execs the child and reaps "
    "it with os.wait4: peak RSS = the child's ru_maxrss from the kernel, wall = perf_counter "
    "around fork and reap, both taken inside the wrapper. The wrapper matters: Linux carries the "
    "RSS high-water mark of the forking process into the child's ru_maxrss across exec, so a "
    "child forked straight from this (pandas-loaded) script would report this script's RSS as "
    "a floor; the wrapper's floor is its own small peak RSS (VmHWM), reported as wrapper_rss_mib. "
    f"{RUNS} runs per factor, round robin; wall = min over runs, peak RSS = max over runs"
)

# argv: result-file child-executable child-args...; writes JSON to result-file, exits as the child
WRAPPER = """
import json, os, sys, time
try:  # the wrapper's own peak RSS (KiB): the most a forked copy of it can carry into the child
    with open("/proc/self/status") as f:
        floor = next(int(x.split()[1]) for x in f if x.startswith("VmHWM:"))
except (OSError, StopIteration):
    floor = None
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execv(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - t0
with open(sys.argv[1], "w") as f:
    json.dump({"wall_s": wall, "maxrss": usage.ru_maxrss,
               "cpu_s": usage.ru_utime + usage.ru_stime,
               "floor_kib": floor}, f)
sys.exit(os.waitstatus_to_exitcode(status) % 256)
"""


class BenchError(Exception):
    """A failed step or check; the message says which."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# The demo, indexed by patient


def demo_file(name: str) -> Path:
    wanted = {f"{name}.csv".lower(), f"{name}.csv.gz".lower()}
    hits = sorted(p for p in DEMO.iterdir() if p.name.lower() in wanted)
    if not hits:
        raise BenchError(f"{DEMO}: no {name}.csv or {name}.csv.gz")
    return hits[0]


def column(frame: pd.DataFrame, name: str, table: str) -> str | None:
    """The frame's own spelling of `name` (case-insensitive), None when the table lacks it."""
    for c in frame.columns:
        if c.strip().lower() == name:
            return c
    if name in ("row_id", "subject_id"):
        raise BenchError(f"demo table {table} has no {name} column")
    return None


@dataclass
class Table:
    name: str
    frame: pd.DataFrame  # grouped by patient, demo order kept within a patient
    row_col: str
    subject_col: str
    hadm_col: str | None
    offsets: np.ndarray  # first row of each patient
    counts: np.ndarray  # rows per patient
    hadm_rank: np.ndarray | None  # per row: rank of its admission within its patient, -1 if none


def load_demo() -> dict[str, Table]:
    raw = {}
    for name in TABLES:
        raw[name] = pd.read_csv(
            demo_file(name), dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8"
        )
    pat = raw["PATIENTS"]
    pat_subject = column(pat, "subject_id", "PATIENTS")
    if not pat[pat_subject].is_unique:
        raise BenchError("demo PATIENTS repeats a subject_id")
    patient_of = {s: i for i, s in enumerate(pat[pat_subject])}
    n_patients = len(patient_of)

    tables: dict[str, Table] = {}
    rank_of_hadm: dict[str, int] = {}
    patient_of_hadm: dict[str, int] = {}
    for name in TABLES:  # ADMISSIONS first: the others look their admissions up in it
        frame = raw[name]
        subject_col = column(frame, "subject_id", name)
        pidx = frame[subject_col].map(patient_of)
        if pidx.isna().any():
            bad = frame.loc[pidx.isna(), subject_col].iloc[0]
            raise BenchError(f"demo {name}: subject_id {bad} is not in PATIENTS")
        pidx = pidx.to_numpy(dtype=np.int64)
        order = np.argsort(pidx, kind="stable")
        frame = frame.iloc[order].reset_index(drop=True)
        pidx = pidx[order]
        counts = np.bincount(pidx, minlength=n_patients)
        offsets = np.cumsum(counts) - counts
        hadm_col = None if name == "PATIENTS" else column(frame, "hadm_id", name)
        hadm_rank = None
        if hadm_col is not None:
            hadm = frame[hadm_col].str.strip()
            if name == "ADMISSIONS":
                if (hadm == "").any() or not hadm.is_unique:
                    raise BenchError("demo ADMISSIONS: hadm_id empty or repeated")
                ranks = np.arange(len(frame)) - np.repeat(offsets, counts)
                rank_of_hadm = dict(zip(hadm, ranks.tolist(), strict=True))
                patient_of_hadm = dict(zip(hadm, pidx.tolist(), strict=True))
            unknown = (hadm != "") & ~hadm.isin(rank_of_hadm)
            if unknown.any():
                raise BenchError(f"demo {name}: hadm_id {hadm[unknown].iloc[0]} not in ADMISSIONS")
            owner = hadm.map(patient_of_hadm).fillna(-1).to_numpy(dtype=np.int64)
            if ((owner != pidx) & (hadm != "").to_numpy()).any():
                raise BenchError(f"demo {name}: a row's hadm_id belongs to another subject_id")
            hadm_rank = hadm.map(rank_of_hadm).fillna(-1).to_numpy(dtype=np.int64)
        tables[name] = Table(
            name=name,
            frame=frame,
            row_col=column(frame, "row_id", name),
            subject_col=subject_col,
            hadm_col=hadm_col,
            offsets=offsets,
            counts=counts,
            hadm_rank=hadm_rank,
        )
    return tables


# ---------------------------------------------------------------------------------------------
# Writing the exports


def write_demo_copy(folder: Path) -> dict[str, int]:
    """Factor 1: the demo's tables as plain .csv, byte for byte."""
    rows = {}
    for name in TABLES:
        src = demo_file(name)
        dst = folder / f"{name}.csv"
        opener = gzip.open if src.name.lower().endswith(".gz") else open
        with opener(src, "rb") as fin, open(dst, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
        rows[name] = len(pd.read_csv(dst, dtype=str, keep_default_na=False, usecols=[0]))
    return rows


def expand(
    table: Table, drawn: np.ndarray, first_copy: int, first_hadm: np.ndarray, first_row: int
) -> pd.DataFrame:
    """All rows of the drawn patients (copies first_copy, first_copy + 1, ...), ids rewritten.

    `first_hadm[i]` is the fresh hadm_id of the first admission of copy first_copy + i.
    """
    counts = table.counts[drawn]
    total = int(counts.sum())
    start_in_block = np.cumsum(counts) - counts
    pos = (
        np.arange(total)
        - np.repeat(start_in_block, counts)
        + np.repeat(table.offsets[drawn], counts)
    )
    copy = np.repeat(np.arange(len(drawn)), counts)
    out = table.frame.take(pos).reset_index(drop=True)
    out[table.row_col] = (first_row + np.arange(total)).astype(str)
    out[table.subject_col] = (SUBJECT_BASE + first_copy + copy).astype(str)
    if table.hadm_col is not None:
        rank = table.hadm_rank[pos]
        hadm = (first_hadm[copy] + rank).astype(str)
        out[table.hadm_col] = np.where(rank >= 0, hadm, "")
    return out


def write_resampled(folder: Path, tables: dict[str, Table], factor: int) -> dict[str, int]:
    n_patients = len(tables["PATIENTS"].counts)
    rng = np.random.default_rng(SEED)
    draws = rng.integers(0, n_patients, size=factor * n_patients)
    adm_counts = tables["ADMISSIONS"].counts[draws]
    first_hadm = HADM_BASE + np.cumsum(adm_counts) - adm_counts  # per copy
    rows = dict.fromkeys(TABLES, 0)
    handles = {n: open(folder / f"{n}.csv", "w", newline="", encoding="utf-8") for n in TABLES}
    try:
        for lo in range(0, len(draws), COPIES_PER_BLOCK):
            hi = min(lo + COPIES_PER_BLOCK, len(draws))
            for name, table in tables.items():
                block = expand(table, draws[lo:hi], lo, first_hadm[lo:hi], 1 + rows[name])
                block.to_csv(handles[name], index=False, header=lo == 0, lineterminator="\n")
                rows[name] += len(block)
    finally:
        for fh in handles.values():
            fh.close()
    return rows


# ---------------------------------------------------------------------------------------------
# Measuring


def stats_command(folder: str) -> list[str]:
    """The command measured: `pocketrec data stats` on the export in `folder`."""
    cli = [sys.executable, "-m", "pocketrec.cli", "data", "stats"]
    return [*cli, "--path", folder, "--format", "mimic3", "--json"]


def measure(folder: Path) -> dict:
    cmd = stats_command(str(folder))
    with tempfile.TemporaryDirectory(prefix="pocketrec-scale-run-") as tmp:
        report = Path(tmp) / "rusage.json"
        proc = subprocess.run(
            [sys.executable, "-I", "-S", "-c", WRAPPER, str(report), *cmd],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        if proc.returncode != 0:
            raise BenchError(
                f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}"
            )
        try:
            usage = json.loads(report.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise BenchError(
                f"the measuring wrapper wrote no result ({e}): {proc.stderr.strip()[-2000:]}"
            ) from None
    try:
        stats = json.loads(proc.stdout)
    except json.JSONDecodeError as e:
        raise BenchError(
            f"data stats on {folder} printed no JSON ({e}): {proc.stdout[:500]!r}"
        ) from None
    unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return {
        "wall_s": usage["wall_s"],
        "cpu_s": usage["cpu_s"],
        "peak_rss_mib": usage["maxrss"] * unit / 2**20,
        "wrapper_rss_mib": None if usage["floor_kib"] is None else usage["floor_kib"] / 1024,
        "stats": stats,
    }


def check(factor: int, rows: dict[str, int], stats: dict) -> None:
    want_patients = rows["PATIENTS"]
    want_visits = rows["ADMISSIONS"]
    problems = []
    if want_patients != factor * 100:
        problems.append(f"wrote {want_patients} patients, expected {factor * 100}")
    if stats.get("patients") != want_patients:
        problems.append(f"patients is {stats.get('patients')}, expected {want_patients}")
    if stats.get("visits") != want_visits:
        problems.append(
            f"visits is {stats.get('visits')}, expected {want_visits} (admissions written)"
        )
    read = stats.get("rows_read", {})
    for name, n in rows.items():
        if read.get(f"{name}.csv") != n:
            problems.append(f"rows_read[{name}.csv] is {read.get(f'{name}.csv')}, wrote {n}")
    if stats.get("skipped_rows"):
        problems.append(f"skipped_rows is {stats['skipped_rows']}, expected none")
    if problems:
        raise BenchError(f"factor {factor}: " + "; ".join(problems))


# ---------------------------------------------------------------------------------------------
# Reporting


def ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def fmt(x: float | None, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def linearity(entries: list[dict]) -> dict | None:
    """Compare the two largest factors above 1, both net of factor 1."""
    by = {e["factor"]: e for e in entries}
    big = sorted(f for f in by if f > 1)
    if len(big) < 2:
        return None
    one, a, b = by[1], by[big[-2]], by[big[-1]]
    return {
        "factors": [1, a["factor"], b["factor"]],
        "time_ratio": ratio(b["wall_s"] - one["wall_s"], a["wall_s"] - one["wall_s"]),
        "row_ratio": ratio(b["total_rows"], a["total_rows"]),
        "row_ratio_net": ratio(
            b["total_rows"] - one["total_rows"], a["total_rows"] - one["total_rows"]
        ),
        "rss_growth_ratio": ratio(
            b["peak_rss_mib"] - one["peak_rss_mib"], a["peak_rss_mib"] - one["peak_rss_mib"]
        ),
        "rss_ratio": ratio(b["peak_rss_mib"], a["peak_rss_mib"]),
    }


def linearity_line(lin: dict) -> str:
    _, a, b = lin["factors"]
    per_row = None
    if lin["time_ratio"] is not None and lin["row_ratio_net"]:
        per_row = lin["time_ratio"] / lin["row_ratio_net"]
    return (
        f"Linearity: (t{b} - t1)/(t{a} - t1) = {fmt(lin['time_ratio'], '.2f')} against row ratio "
        f"{b}x/{a}x = {fmt(lin['row_ratio'], '.2f')} "
        f"(net of 1x: {fmt(lin['row_ratio_net'], '.2f')}; "
        f"time per row {b}x vs {a}x = {fmt(per_row, '.2f')}, 1.00 = linear); peak RSS growth "
        f"(m{b} - m1)/(m{a} - m1) = {fmt(lin['rss_growth_ratio'], '.2f')}, "
        f"m{b}/m{a} = {fmt(lin['rss_ratio'], '.2f')}"
    )


def table_text(entries: list[dict]) -> str:
    lines = [
        "| factor | input rows (5 tables) | prescription rows | wall s | rows/s "
        "| rows/s net of 1x | peak RSS MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in entries:
        net = "-" if e["rows_per_s_net"] is None else f"{e['rows_per_s_net']:,.0f}"
        lines.append(
            f"| {e['factor']} | {e['total_rows']:,} | {e['rows']['PRESCRIPTIONS']:,} "
            f"| {e['wall_s']:.2f} | {e['rows_per_s']:,.0f} | {net} | {e['peak_rss_mib']:.1f} |"
        )
    return "\n".join(lines)


def machine() -> dict:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = None
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        mem_gib = None
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "memory_gib": None if mem_gib is None else round(mem_gib, 1),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "pandas": pd.__version__,
        "numpy": np.__version__,
    }


# ---------------------------------------------------------------------------------------------


def parse_factors(text: str) -> list[int]:
    try:
        factors = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--factors: {text!r} is not a comma-separated list of whole numbers"
        ) from None
    if not factors or factors[0] < 1:
        raise argparse.ArgumentTypeError("--factors: give whole numbers of 1 or more")
    return factors


def run(factors: list[int], workdir: Path) -> dict:
    if 1 not in factors:
        log("adding factor 1: its time is the start-up cost")
        factors = [1, *factors]
    tables = load_demo()
    folders: dict[int, Path] = {}
    rows: dict[int, dict[str, int]] = {}
    for f in factors:
        folder = workdir / f"x{f}"
        folder.mkdir()
        t0 = time.perf_counter()
        rows[f] = write_demo_copy(folder) if f == 1 else write_resampled(folder, tables, f)
        size = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
        log(
            f"wrote x{f}: {sum(rows[f].values()):,} rows, {size:.1f} MiB in "
            f"{time.perf_counter() - t0:.1f} s -> {folder}"
        )
        folders[f] = folder

    runs: dict[int, list[dict]] = {f: [] for f in factors}
    for r in range(RUNS):
        for f in factors:
            m = measure(folders[f])
            check(f, rows[f], m["stats"])
            runs[f].append(m)
            log(
                f"run {r + 1}/{RUNS} x{f}: {m['wall_s']:.2f} s wall, {m['cpu_s']:.2f} s cpu, "
                f"{m['peak_rss_mib']:.1f} MiB peak RSS "
                f"(wrapper floor {fmt(m['wrapper_rss_mib'], '.1f')} MiB)"
            )

    entries = []
    for f in factors:
        total = sum(rows[f].values())
        wall = min(m["wall_s"] for m in runs[f])
        entries.append(
            {
                "factor": f,
                "patients": rows[f]["PATIENTS"],
                "admissions": rows[f]["ADMISSIONS"],
                "rows": rows[f],
                "total_rows": total,
                "input_mib": round(sum(p.stat().st_size for p in folders[f].iterdir()) / 2**20, 2),
                "wall_s": wall,
                "walls_s": [round(m["wall_s"], 4) for m in runs[f]],
                "cpu_s": [round(m["cpu_s"], 4) for m in runs[f]],
                "peak_rss_mib": max(m["peak_rss_mib"] for m in runs[f]),
                "peak_rss_mib_runs": [round(m["peak_rss_mib"], 2) for m in runs[f]],
                "wrapper_rss_mib": [
                    m["wrapper_rss_mib"] and round(m["wrapper_rss_mib"], 2) for m in runs[f]
                ],
                "rows_per_s": total / wall,
                "stats_checked": {k: runs[f][0]["stats"][k] for k in ("patients", "visits")},
            }
        )
    one = entries[0]
    for e in entries:
        e["rows_per_s_net"] = (
            None
            if e["factor"] == 1
            else ratio(e["total_rows"] - one["total_rows"], e["wall_s"] - one["wall_s"])
        )
    return {"entries": entries, "startup_s": one["wall_s"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--factors",
        type=parse_factors,
        default=[1, 10, 100],
        help="comma-separated multiples of the demo (default 1,10,100)",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        help="folder for the exports (default: a new temporary folder under /tmp)",
    )
    p.add_argument("--keep", action="store_true", help="leave the exports in place")
    args = p.parse_args(argv)

    if args.workdir is None:
        workdir, made = Path(tempfile.mkdtemp(prefix="pocketrec-scale-", dir="/tmp")), True
    else:
        workdir, made = args.workdir.resolve(), not args.workdir.exists()
        workdir.mkdir(parents=True, exist_ok=True)
        taken = [f"x{f}" for f in [1, *args.factors] if (workdir / f"x{f}").exists()]
        if taken:
            print(
                f"scale: error: {workdir} already holds {', '.join(taken)}; remove them or "
                "choose another --workdir",
                file=sys.stderr,
            )
            return 2
    try:
        result = run(args.factors, workdir)
    except BenchError as e:
        print(f"scale: error: {e}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            log(f"kept the exports in {workdir}")
        elif made:
            shutil.rmtree(workdir, ignore_errors=True)
        else:  # a folder the user named: remove only what this script put there
            for f in {1, *args.factors}:
                shutil.rmtree(workdir / f"x{f}", ignore_errors=True)

    entries = result["entries"]
    lin = linearity(entries)
    print(table_text(entries))
    print()
    print(f"Start-up (factor 1 wall): {result['startup_s']:.2f} s. Method: {METHOD}.")
    if lin is not None:
        print(linearity_line(lin))

    payload = {
        "benchmark": "pocketrec data stats --format mimic3 --json on resampled MIMIC-III demo",
        "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": stats_command("DIR"),
        "machine": machine(),
        "method": METHOD,
        "resampling": {
            "seed": SEED,
            "rng": "numpy.random.default_rng(seed).integers(0, 100, size=factor * 100)",
            "factor_1": "the demo's tables decompressed to .csv, unchanged",
            "ids": "fresh subject_id per drawn copy, fresh hadm_id per copied admission, "
            "fresh row_id per row; other columns copied",
        },
        "startup_s": result["startup_s"],
        "rows_per_s_net_definition": "(rows - rows at 1x) / (wall - wall at 1x)",
        "factors": entries,
        "linearity": lin,
    }
    atomic_write_json(RESULTS, payload)
    log(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
