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


NEWS_SOURCES = ("movielens-demo",)


def cmd_distill_news(args: argparse.Namespace) -> int:
    import tempfile

    from distill.news_run import run_news
    from distill.news_teacher import NewsTeacherConfig

    out = Path(args.out)
    if args.source is not None:
        if args.source not in NEWS_SOURCES:
            return _fail(f"distill: news sources are {', '.join(NEWS_SOURCES)}, not {args.source}")
        from distill.data.movielens import demo_mind

        # a temporary copy: the conversion is seeded, so the export rebuilds it when needed
        data = demo_mind(Path(tempfile.mkdtemp(prefix="pocketrec-movielens-mind-")))
    elif args.format != "mind":
        return _fail("distill: --domain news reads --path DIR with --format mind")
    else:
        data = Path(args.path)
    try:
        teacher = NewsTeacherConfig(backbone=args.teacher)
    except ValueError as e:
        return _fail(f"distill: {e}")
    try:
        report = run_news(
            out, data, teacher_cfg=teacher, quick=args.quick, force=args.force, source=args.source
        )
    finally:
        if args.source is not None:  # the converted MovieLens copy was ours
            import shutil

            shutil.rmtree(data, ignore_errors=True)
    print((out / "report.md").read_text(encoding="utf-8"))
    print(f"report: {out / 'report.json'}  total {report['wall_s'].get('total', 0):.0f} s")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from distill.run import quick_config, run_distill

    if (args.source is None) == (args.path is None):
        return _fail("distill: give exactly one of --source or --path")
    if args.path is not None and args.format is None:
        return _fail("distill: --path needs --format (mimic3, mimic4 or synthea)")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        return _fail(f"distill: {out} is not empty; pass --force to replace it")
    if getattr(args, "domain", "medication") == "news":
        return cmd_distill_news(args)
    try:
        cfg = _distill_config(args)
    except ValueError as e:  # a config's own validation names the field and the rule
        return _fail(f"distill: {e}")
    if args.quick:
        cfg = quick_config(cfg)
    report = run_distill(out, cfg, force=args.force)
    print((out / "report.md").read_text(encoding="utf-8"))
    print(f"report: {out / 'report.json'}  total {report['wall_s']['total']:.0f} s")
    return 0


def _distill_config(args: argparse.Namespace):
    from dataclasses import replace

    from distill.config import DataConfig
    from distill.data.tensors import TensorConfig
    from distill.run import RunConfig
    from distill.teacher import TeacherConfig
    from distill.train import DistillConfig

    teacher = TeacherConfig(backbone=args.teacher, lora=not args.full_finetune)
    teacher = replace(teacher, epochs=args.teacher_epochs, max_length=args.max_length)
    return RunConfig(
        data=DataConfig(
            source=args.source,
            path=str(args.path) if args.path else None,
            fmt=args.format,
            protocol=args.protocol,
            folds=args.folds,
            seed=args.seed,
        ),
        teacher=teacher,
        tensors=TensorConfig(),
        distill=DistillConfig(alpha=args.alpha, beta=args.beta, seed=args.seed),
        online_kd=args.online_kd,
    )


def _run_domain(run: Path) -> str:
    """The domain a finished run's report.json names ("medication" when it names none)."""
    try:
        report = json.loads((run / "report.json").read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{run}: no report.json (expected a finished distill run)") from e
    except ValueError as e:
        raise ValueError(f"{run / 'report.json'}: not JSON ({e})") from e
    return report.get("domain", "medication") if isinstance(report, dict) else "medication"


def _export(run: Path, out: Path, preset: str, force: bool, data: Path | None) -> int:
    from export.parity import ParityError

    try:
        domain = _run_domain(run)
        if domain == "news":
            from export.news import export_news_run

            manifest = export_news_run(run, out, preset=preset, force=force, data_folder=data)
            p = manifest["parity"]["summary"]
            print(
                f"bundle: {out}  int8 auc {p['int8_auc']:.4f} (fp32 {p['fp32_auc']:.4f}), "
                f"{manifest['data']['catalog_items']:,} catalog items"
            )
            return 0
        if data is not None:
            return _fail("export: --data is for news runs (their MIND folder)")
        from export.from_run import export_run

        report = export_run(run, out, preset=preset, force=force)
    except (FileNotFoundError, ValueError, ParityError) as e:
        return _fail(f"export: {e}")
    m = report["models"]["student_int8"]
    print(f"bundle: {out}  int8 jaccard {m['jaccard']:.4f} prauc {m['prauc']:.4f}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    return _export(Path(args.run), Path(args.out), args.preset, args.force, args.data)


def cmd_pipeline(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        return _fail(f"pipeline: {out} is not empty; pass --force to replace it")
    args.out = str(out / "run")
    rc = cmd_distill(args)
    if rc:
        return rc
    # a news run on your own MIND folder is exported against that folder
    data = args.path if args.domain == "news" and args.path is not None else None
    return _export(out / "run", out / "bundle", args.preset, args.force, data)


def default_bundle() -> Path:
    from distill.data.codes import assets_dir  # standard library only

    return assets_dir() / "bundles" / "medication-demo"


def _codes(text: str | None) -> list[str]:
    return [c.strip() for c in (text or "").split(",") if c.strip()]


def cmd_recommend(args: argparse.Namespace) -> int:
    # app-only install: numpy and onnxruntime at most, no pandas, no torch
    from app.runtime import BundleError, Recommender, load_bundle

    try:
        bundle = load_bundle(Path(args.bundle) if args.bundle else default_bundle())
    except BundleError as e:
        return _fail(str(e))
    history = []
    if args.history:
        try:
            data = json.loads(Path(args.history).read_text(encoding="utf-8"))
            history = [
                (v.get("diagnoses", []), v.get("procedures", []), v.get("medications", []))
                for v in data
            ]
        except (OSError, ValueError, AttributeError, TypeError) as e:
            return _fail(
                f"{args.history}: cannot read the history ({e}); expected a JSON list of "
                '{"diagnoses": [...], "procedures": [...], "medications": [...]}, oldest first'
            )
    profile = [tuple(p.split("=", 1)) for p in _codes(args.profile) if "=" in p]
    dx = _codes(args.dx)
    if not dx:
        return _fail("recommend: --dx needs at least one diagnosis code, e.g. icd9cm:4019")
    rec = Recommender(bundle, backend=args.backend).recommend(
        dx, _codes(args.px), history=history, profile=profile, top_k=args.top
    )
    out = {
        "bundle": bundle.manifest["name"],
        "backend": rec.backend,
        "drugs": rec.drugs,
        "ddi": [list(p) for p in rec.ddi],
        "unknown_codes": list(rec.unknown_codes),
    }
    if args.json:
        print(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        for d in rec.drugs:
            mark = "*" if d["suggested"] else " "
            print(f"{mark} {d['code']}  {d['probability']:.3f}  {d['name']}")
        for p in rec.ddi:
            print(f"! interaction: {p[0]} + {p[1]}")
        if rec.unknown_codes:
            print(f"unknown codes (not in the bundle's vocabulary): {', '.join(rec.unknown_codes)}")
    return 0


def cmd_app(args: argparse.Namespace) -> int:
    # app-only install: flet, sqlite-utils, onnxruntime, numpy
    if args.app_command == "backup":
        from app.history import History, HistoryError

        try:
            history = History(Path(args.db) if args.db else None)
            path = history.backup(Path(args.out))
            history.close()
        except HistoryError as e:
            return _fail(str(e))
        print(f"backup written: {path}")
        return 0
    if args.app_command == "restore":
        from app.history import HistoryError, restore

        try:
            restore(Path(args.backup), Path(args.db) if args.db else None)
        except HistoryError as e:
            return _fail(str(e))
        print(f"restored {args.backup} into {args.db or 'the default database'}")
        return 0
    from app.history import HistoryError
    from app.main import run
    from app.runtime import BundleError

    if args.port is not None and not 1 <= args.port <= 65535:
        return _fail(f"app: --port must be 1..65535, got {args.port}")
    try:
        run(
            bundle=args.bundle,
            web=args.web or args.kiosk,
            port=args.port or 8550,
            kiosk=args.kiosk,
            db=args.db,
            pin=args.pin,
            news_bundle=args.news_bundle,
        )
    except (HistoryError, BundleError) as e:  # a full disk, a locked database, a bad bundle
        return _fail(f"app: {e}")
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
    ds.add_argument("--domain", default="medication", choices=["medication", "news"])
    ds.add_argument(
        "--source",
        choices=sorted(SOURCES) + list(NEWS_SOURCES),
        help="an embedded demo source (news: movielens-demo)",
    )
    ds.add_argument("--path", type=Path, help="folder of your own export (MIND folder for news)")
    ds.add_argument("--format", choices=[*FORMATS, "mind"], help="format of the export at --path")
    ds.add_argument("--out", required=True, help="run folder (refused if not empty, see --force)")
    ds.add_argument(
        "--teacher",
        default="minilm",
        help="minilm (embedded all-MiniLM-L6-v2), a local model folder or a hub id",
    )
    ds.add_argument("--protocol", default="all-visits", choices=["all-visits", "last-visit"])
    ds.add_argument("--folds", type=int, default=5)
    ds.add_argument("--seed", type=int, default=0, help="0 = the published split formula")
    ds.add_argument("--alpha", type=float, default=1.0, help="weight of the feature-KD loss")
    ds.add_argument("--beta", type=float, default=0.1, help="weight of the profile InfoNCE loss")
    ds.add_argument(
        "--teacher-epochs", type=float, default=2.0, help="teacher fine-tuning epochs (default 2)"
    )
    ds.add_argument(
        "--max-length",
        type=int,
        default=384,
        help="teacher prompt budget in tokens (default 384; --quick caps it at 128)",
    )
    ds.add_argument(
        "--full-finetune", action="store_true", help="fine-tune all teacher weights, not LoRA"
    )
    ds.add_argument(
        "--online-kd",
        action="store_true",
        help="ask the live teacher for features batch by batch instead of the cache",
    )
    ds.add_argument("--quick", action="store_true", help="a small run: a few minutes on 2 cores")
    ds.add_argument("--force", action="store_true", help="replace a non-empty --out")
    ds.set_defaults(func=cmd_distill)

    ex = sub.add_parser("export", help="a distill run -> int8 ONNX with parity gates -> a bundle")
    ex.add_argument("--run", required=True, help="folder of a finished `pocketrec distill` run")
    ex.add_argument("--out", required=True, help="bundle folder to write")
    ex.add_argument("--preset", default="avx2", choices=["avx2", "avx512_vnni", "arm64"])
    ex.add_argument(
        "--data",
        type=Path,
        help="news runs: the MIND folder the run read (default: the folder its config names, "
        "or a fresh conversion for movielens-demo)",
    )
    ex.add_argument("--force", action="store_true", help="replace a non-empty --out")
    ex.set_defaults(func=cmd_export)

    pl = sub.add_parser("pipeline", help="distill + export end to end")
    pl.add_argument("--domain", default="medication", choices=["medication", "news"])
    for action in ds._actions:  # the distill options, unchanged
        if action.dest not in ("help", "domain") and action.option_strings:
            pl._add_action(action)
    pl.add_argument("--preset", default="avx2", choices=["avx2", "avx512_vnni", "arm64"])
    pl.set_defaults(func=cmd_pipeline)

    rc = sub.add_parser("recommend", help="score one visit with a bundle (app extra only)")
    rc.add_argument("--bundle", help="bundle folder (default: the shipped medication demo)")
    rc.add_argument("--dx", required=True, help="diagnosis codes, comma-separated: icd9cm:4019,...")
    rc.add_argument("--px", help="procedure codes, comma-separated (icd9pcs:3893,...)")
    rc.add_argument("--history", help="JSON file: earlier visits, oldest first")
    rc.add_argument("--profile", help="profile fields, e.g. gender=F,age_band=70-79")
    rc.add_argument("--top", type=int, default=10, help="how many drug classes to list")
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
    except FileExistsError as e:
        return _fail(str(e))
    except BrokenPipeError:  # output piped into `head`: not an error of ours
        sys.stderr.close()
        return 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
