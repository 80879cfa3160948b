"""`pocketrec`: one console command, one subcommand per job.

Each subcommand imports its heavy libraries inside itself, so `pocketrec recommend` and
`pocketrec app` run in an install with only the `app` extra (no pandas, no torch).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _fail(message: str) -> int:
    print(f"pocketrec: error: {message}", file=sys.stderr)
    return 2


def cmd_data_stats(args: argparse.Namespace) -> int:
    from distill.data import load_cohort
    from distill.data.stats import cohort_stats

    if (args.source is None) == (args.path is None):
        return _fail("data stats: give exactly one of --source or --path")
    if args.path is not None and args.format is None:
        return _fail("data stats: --path needs --format (mimic3, mimic4 or synthea)")
    cohort = load_cohort(args.source, args.path, args.format)
    stats = cohort_stats(cohort)
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        width = max(len(k) for k in stats)
        for k, v in stats.items():
            print(f"{k:<{width}}  {v}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from distill.data import FORMATS, SOURCES

    p = argparse.ArgumentParser(
        prog="pocketrec",
        description="Offline, LLM-distilled recommenders: data, distillation, export, app.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="inspect EHR data sources")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    st = data_sub.add_parser("stats", help="patients, visits, vocabularies and drug mapping of a source")
    st.add_argument("--source", choices=sorted(SOURCES), help="an embedded demo source")
    st.add_argument("--path", type=Path, help="folder of your own export")
    st.add_argument("--format", choices=FORMATS, help="format of the export at --path")
    st.add_argument("--json", action="store_true", help="print one JSON object")
    st.set_defaults(func=cmd_data_stats)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from distill.data.tables import DataError
    except ImportError:  # an app-only install has no pandas; data commands are not there
        DataError = ValueError  # noqa: N806
    try:
        return args.func(args)
    except DataError as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        return _fail("interrupted")


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
