"""`pocketrec data`, `distill`, `export` and `pipeline`: the training side's commands.

Each imports its stage inside itself, so an app-only install (no pandas, no torch) can still
build the parser and run `recommend` and `app`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pocketrec.console import fail as _fail


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
# the medication teacher when --teacher is not given: the LLM, frozen unless asked otherwise
# (LoRA fine-tuning it takes about 2.7 h on 2 cores, see README "Which teacher produced which
# number"); news runs keep NewsTeacherConfig's own default (MiniLM, frozen)
MEDICATION_TEACHER = "smollm2"
FROZEN_BY_DEFAULT = ("smollm2",)


def medication_teacher(args: argparse.Namespace) -> tuple[str, bool]:
    """(backbone, frozen) of a medication run from --teacher, --frozen-teacher,
    --finetune-teacher and --full-finetune: smollm2 (the default) is frozen unless a
    fine-tuning is asked for; any other teacher is fine-tuned unless --frozen-teacher."""
    backbone = args.teacher or MEDICATION_TEACHER
    finetune = args.finetune_teacher or args.full_finetune
    if args.frozen_teacher and finetune:
        flag = "--full-finetune" if args.full_finetune else "--finetune-teacher"
        raise ValueError(f"--frozen-teacher and {flag} exclude each other")
    frozen = args.frozen_teacher or (backbone in FROZEN_BY_DEFAULT and not finetune)
    return backbone, frozen


def _medication_only_given(args: argparse.Namespace) -> list[str]:
    """The medication-only options set on the command line (see `cli.add_distill_options`)."""
    given = []
    for dest, (default, flags) in getattr(args, "medication_only", {}).items():
        value = getattr(args, dest, default)
        if value != default:
            given.append(flags[1] if value is False and len(flags) > 1 else flags[0])
    return given


def _inputs(args: argparse.Namespace) -> list:
    """What the run reads, so that --out can be checked against it (`distill.runs.check_out`):
    the data folder (an embedded source's under assets/), and for medication the reused
    features and a teacher folder."""
    from distill.data import SOURCES
    from distill.data.codes import assets_dir
    from distill.runs import teacher_folder

    data = args.path
    if args.source in SOURCES:
        data = assets_dir() / "data" / SOURCES[args.source][1]
    elif args.source in NEWS_SOURCES:
        data = assets_dir() / "data" / "movielens_small"
    teacher = teacher_folder(args.teacher) if args.teacher else None
    return [data, args.features_from, teacher]


def cmd_distill_news(args: argparse.Namespace) -> int:
    import tempfile

    from distill.news.run import run_news
    from distill.news.teacher import NewsTeacherConfig

    out = Path(args.out)
    given = _medication_only_given(args)
    if given:
        return _fail(
            f"distill: {', '.join(given)} "
            f"{'applies' if len(given) == 1 else 'apply'} to medication runs, not "
            "--domain news (a news run takes --source/--path, --format mind, --teacher, "
            "--mind-unknown, --quick and --force)"
        )
    if args.source is not None:
        if args.source not in NEWS_SOURCES:
            return _fail(f"distill: news sources are {', '.join(NEWS_SOURCES)}, not {args.source}")
        from distill.data.movielens import demo_mind

        # a temporary copy: the run keeps what its export needs, so the copy can go
        data = demo_mind(Path(tempfile.mkdtemp(prefix="pocketrec-movielens-mind-")))
    elif args.format != "mind":
        return _fail("distill: --domain news reads --path DIR with --format mind")
    else:
        data = Path(args.path)
    try:
        teacher = NewsTeacherConfig(**({"backbone": args.teacher} if args.teacher else {}))
    except ValueError as e:
        return _fail(f"distill: {e}")
    try:
        report = run_news(
            out,
            data,
            teacher_cfg=teacher,
            quick=args.quick,
            force=args.force,
            source=args.source,
            unknown_candidates=getattr(args, "mind_unknown", None) or "skip",
        )
    finally:
        if args.source is not None:  # the converted MovieLens copy was ours
            import shutil

            shutil.rmtree(data, ignore_errors=True)
    print((out / "report.md").read_text(encoding="utf-8"))
    print(f"report: {out / 'report.json'}  total {report['wall_s'].get('total', 0):.0f} s")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from distill.medication.run import quick_config, run_distill

    if (args.source is None) == (args.path is None):
        return _fail("distill: give exactly one of --source or --path")
    if args.path is not None and args.format is None:
        return _fail("distill: --path needs --format (mimic3, mimic4 or synthea)")
    news = getattr(args, "domain", "medication") == "news"
    if not news and args.source in NEWS_SOURCES:
        return _fail(f"distill: {args.source} is a news source; add --domain news")
    if not news and args.format == "mind":
        return _fail("distill: --format mind is news data; add --domain news")
    out = Path(args.out)
    err = _check_out(out, args)
    if err:
        return _fail(f"distill: {err}")
    if news:
        return cmd_distill_news(args)
    if getattr(args, "mind_unknown", None) is not None:
        return _fail("distill: --mind-unknown applies to news runs (--domain news --format mind)")
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


def _check_out(out: Path, args: argparse.Namespace) -> str | None:
    """Why --out cannot be used (None when it can): checked before any work starts, as the
    run does again before it writes (`distill.runs.check_out`)."""
    from distill.runs import RunError, check_out

    try:
        check_out(out, args.force, _inputs(args))
    except (RunError, FileExistsError) as e:
        return str(e)
    return None


def _distill_config(args: argparse.Namespace):
    from dataclasses import replace

    from contract.layout import TensorConfig
    from distill.backbone import TeacherConfig
    from distill.data.config import DataConfig
    from distill.medication.run import RunConfig
    from distill.medication.train import DistillConfig

    backbone, frozen = medication_teacher(args)
    try:
        seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
    except ValueError:
        raise ValueError(f"--seeds takes comma-separated integers, got {args.seeds!r}") from None
    teacher = TeacherConfig(backbone=backbone, lora=not args.full_finetune, frozen=frozen)
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
        tensors=TensorConfig(ancestors=args.ancestors),
        distill=DistillConfig(alpha=args.alpha, beta=args.beta, seed=args.seed),
        online_kd=args.online_kd,
        seeds=seeds,
        selection=args.selection,
        features_from=str(args.features_from) if args.features_from else None,
        title_init=args.title_init,
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


def _export(
    run: Path,
    out: Path,
    preset: str | None,
    force: bool,
    data: Path | None,
    int8: str = "weights",
) -> int:
    from export.parity import ParityError

    if data is not None:
        return _fail(
            "export: --data is no longer needed: a run folder keeps everything its export "
            "reads (drop --data)"
        )
    try:
        domain = _run_domain(run)
        if domain == "news":
            from export.news.run import export_news_run

            manifest = export_news_run(run, out, preset=preset or "avx2", force=force)
            p = manifest["parity"]["summary"]
            print(
                f"bundle: {out}  int8 auc {p['int8_auc']:.4f} (fp32 {p['fp32_auc']:.4f}), "
                f"{manifest['data']['catalog_items']:,} catalog items"
            )
            return 0
        from export.medication.run import export_run

        report = export_run(run, out, preset=preset, force=force, int8_form=int8)
    except (FileNotFoundError, ValueError, ParityError) as e:
        return _fail(f"export: {e}")
    m = report["models"]["student_int8"]
    print(f"bundle: {out}  int8 jaccard {m['jaccard']:.4f} prauc {m['prauc']:.4f}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    return _export(Path(args.run), Path(args.out), args.preset, args.force, args.data, args.int8)


def cmd_pipeline(args: argparse.Namespace) -> int:
    out = Path(args.out)
    err = _check_out(out, args)  # DIR as a whole: the run goes into DIR/run
    if err:
        return _fail(f"pipeline: {err}")
    if args.domain == "medication" and args.int8 == "weights" and args.preset is not None:
        # said before the distill's minutes, not after them by the export
        return _fail(
            f"pipeline: --preset {args.preset} chooses the integer kernels of --int8 dynamic; "
            "the default weights form computes in float (leave --preset out, or add --int8 "
            "dynamic)"
        )
    args.out = str(out / "run")
    rc = cmd_distill(args)
    if rc:
        return rc
    rc = _export(out / "run", out / "bundle", args.preset, args.force, None, args.int8)
    if rc:
        return rc
    # the run's report plus what the export measured (student_int8, sizes, parity)
    if args.domain == "news":
        from export.news.run import write_pipeline_report
    else:
        from export.medication.run import write_pipeline_report
    write_pipeline_report(out / "run", out / "bundle", out)
    print(f"report: {out / 'report.json'}")
    return 0
