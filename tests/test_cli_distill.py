"""`pocketrec distill` / `pipeline` arguments and run folders: the teacher each domain gets by
default, what --help says, options a news run refuses, and an --out that is refused before
anything is written (or, under --force, kept until the new run has read its data).

No model is loaded: the runs stop at their data stage, or before it.
"""

from __future__ import annotations

import argparse
import gzip
import logging
import shutil
from pathlib import Path

import pytest

from distill.data.tables import DataError
from distill.runs import RunError, check_out, discard_on_bad_input, prepare_out
from pocketrec.cli import build_parser, main
from pocketrec.train_commands import _distill_config, medication_teacher

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.fixture(autouse=True)
def _log_to_this_tests_stderr():
    """`main` binds its log handler to the stderr of its first call, and each test's capsys
    has a stderr of its own: the handler goes after each test (the next `main` adds one)."""
    yield
    for name in ("distill", "export", "app"):
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if getattr(h, "_pocketrec", False)]:
            logger.removeHandler(handler)


def parse(*args: str, command: str = "distill") -> argparse.Namespace:
    return build_parser().parse_args([command, "--out", "o", *args])


# ------------------------------------------------------------------ the teacher by default


@pytest.mark.parametrize("command", ["distill", "pipeline"])
@pytest.mark.parametrize(
    "args, backbone, frozen",
    [
        ([], "smollm2", True),  # what `make demo` runs
        (["--teacher", "smollm2", "--frozen-teacher"], "smollm2", True),
        (["--finetune-teacher"], "smollm2", False),
        (["--full-finetune"], "smollm2", False),
        (["--teacher", "minilm"], "minilm", False),  # LoRA, as before
        (["--teacher", "minilm", "--frozen-teacher"], "minilm", True),
        (["--teacher", "some/folder"], "some/folder", False),
    ],
)
def test_medication_teacher_defaults(command, args, backbone, frozen):
    assert medication_teacher(parse(*args, command=command)) == (backbone, frozen)


def test_the_teacher_config_the_run_gets():
    teacher = _distill_config(parse("--source", "mimic4-demo")).teacher
    assert (teacher.backbone, teacher.frozen) == ("smollm2", True)
    teacher = _distill_config(parse("--source", "mimic4-demo", "--full-finetune")).teacher
    assert (teacher.backbone, teacher.frozen, teacher.lora) == ("smollm2", False, False)
    teacher = _distill_config(parse("--source", "mimic4-demo", "--teacher", "minilm")).teacher
    assert (teacher.backbone, teacher.frozen, teacher.lora) == ("minilm", False, True)


@pytest.mark.parametrize("other", ["--finetune-teacher", "--full-finetune"])
def test_frozen_and_finetuned_exclude_each_other(tmp_path, capsys, other):
    out = tmp_path / "run"
    args = ["distill", "--source", "mimic4-demo", "--out", str(out), "--frozen-teacher", other]
    assert main(args) == 2
    assert f"--frozen-teacher and {other} exclude each other" in capsys.readouterr().err
    assert not out.exists()


def test_a_news_run_keeps_its_own_default_teacher(tmp_path, monkeypatch):
    from distill.news import run as news_run

    asked = []

    def fake_run_news(out, data, teacher_cfg, **kwargs):
        asked.append(teacher_cfg.backbone)
        raise DataError("stop here")

    monkeypatch.setattr(news_run, "run_news", fake_run_news)
    base = ["distill", "--domain", "news", "--path", str(tmp_path / "mind"), "--format", "mind"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 2
    assert main([*base, "--out", str(tmp_path / "b"), "--teacher", "smollm2"]) == 2
    assert asked == ["minilm", "smollm2"]  # `make bundle-news` passes no --teacher


# ------------------------------------------------------------------ what --help and README say


@pytest.mark.parametrize("command", ["distill", "pipeline"])
def test_help_states_the_defaults(command):
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    text = " ".join(sub.format_help().split())
    for said in (
        "(default medication)",
        "all-visits (the default)",
        "(default 5)",
        "(default 0.1)",
        "(default 0: the published formula)",
        "the medication default, used frozen",
        "the news default",
        "--finetune-teacher",
        "medication only (refused with --domain news)",
    ):
        assert said in text, said


def test_every_distill_option_is_in_the_readme():
    sub = build_parser()._subparsers._group_actions[0].choices["distill"]
    missing = [
        a.option_strings
        for a in sub._actions
        if a.option_strings
        and a.dest != "help"
        and not any(f"{o}`" in README or f"{o} " in README for o in a.option_strings)
    ]
    assert not missing, f"distill options the README does not name: {missing}"


# ------------------------------------------------------------------ news refuses medication options


@pytest.mark.parametrize("command", ["distill", "pipeline"])
def test_news_refuses_medication_options(tmp_path, capsys, command):
    out = tmp_path / "run"
    args = [command, "--domain", "news", "--source", "movielens-demo", "--out", str(out)]
    args += ["--seeds", "0", "--protocol", "last-visit", "--frozen-teacher", "--no-ancestors"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--protocol, --frozen-teacher, --seeds, --no-ancestors apply to medication runs" in err
    assert "Traceback" not in err and not out.exists()


def test_news_takes_medication_defaults_given_explicitly(tmp_path, monkeypatch):
    """They change nothing, so they are not refused."""
    from distill.news import run as news_run

    reached = []

    def fake_run_news(out, data, **kwargs):
        reached.append(out)
        raise DataError("stop here")

    monkeypatch.setattr(news_run, "run_news", fake_run_news)
    args = ["distill", "--domain", "news", "--path", str(tmp_path / "mind"), "--format", "mind"]
    args += ["--out", str(tmp_path / "run"), "--folds", "5", "--ancestors", "--seeds", "0,1,2"]
    assert main(args) == 2 and reached


def test_a_news_source_without_domain_news_is_hinted(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["distill", "--source", "movielens-demo", "--out", str(out)]) == 2
    assert "movielens-demo is a news source; add --domain news" in capsys.readouterr().err
    mind = str(tmp_path / "mind")
    assert main(["pipeline", "--path", mind, "--format", "mind", "--out", str(out)]) == 2
    assert "--format mind is news data; add --domain news" in capsys.readouterr().err
    assert not out.exists()


# ------------------------------------------------------------------ the run folder


def test_check_out_refuses_the_input_what_holds_it_and_what_lies_inside(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "table.csv").write_text("x\n")
    for out, how in [(data, "is"), (tmp_path, "holds"), (data / "run", "lies inside")]:
        with pytest.raises(RunError, match=f"the run folder {how} the run's input"):
            check_out(out, True, [data])
    check_out(tmp_path / "run", False, [data, None, tmp_path / "not-there"])  # apart: fine
    (tmp_path / "afile").write_text("x")
    with pytest.raises(RunError, match="not a folder"):
        check_out(tmp_path / "afile", True)
    with pytest.raises(FileExistsError, match="pass --force"):
        check_out(data, False)


def test_prepare_out_that_cannot_be_made(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(RunError, match="cannot create the run folder"):
        prepare_out(tmp_path / "afile" / "run", False)


def _old_run(out: Path) -> None:
    (out / "fold0").mkdir(parents=True)
    (out / "report.json").write_text("old")
    (out / "fold0" / "metrics.json").write_text("old")


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b""
        for p in sorted(folder.rglob("*"))
    }


@pytest.mark.parametrize("failure", [DataError("bad table"), KeyboardInterrupt()])
def test_force_keeps_the_old_run_when_the_data_stage_fails(tmp_path, failure):
    out = tmp_path / "run"
    _old_run(out)
    before = _tree(out)
    folder = prepare_out(out, force=True)
    assert folder.aside is not None and not any(out.iterdir())
    with pytest.raises(type(failure)), discard_on_bad_input(folder):
        (out / "config.json").write_text("new")
        raise failure
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # the aside folder went


def test_force_removes_the_old_run_once_the_data_stage_passed(tmp_path):
    out = tmp_path / "run"
    _old_run(out)
    folder = prepare_out(out, force=True)
    with discard_on_bad_input(folder):
        (out / "config.json").write_text("new")
    assert _tree(out) == {"config.json": b"new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_bad_input_removes_every_folder_the_run_made(tmp_path):
    folder = prepare_out(tmp_path / "pipe" / "run", False)
    assert folder.made and folder.top == tmp_path / "pipe"
    with pytest.raises(DataError), discard_on_bad_input(folder):
        raise DataError("bad table")
    assert not (tmp_path / "pipe").exists()


def _broken_mimic4(tmp_path: Path) -> Path:
    """A copy of the MIMIC-IV demo whose diagnoses table lacks its icd_version column."""
    folder = tmp_path / "mimic4_export"
    shutil.copytree(ROOT / "assets" / "data" / "mimic4_demo" / "hosp", folder)
    path = folder / "diagnoses_icd.csv.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().splitlines(keepends=True)[:40]
    lines[0] = lines[0].replace("icd_version", "version")
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(lines))
    return folder


@pytest.mark.parametrize("command", ["distill", "pipeline"])
def test_force_on_bad_input_loses_nothing(tmp_path, capsys, command):
    data = _broken_mimic4(tmp_path)
    out = tmp_path / "prev"
    _old_run(out)
    before = _tree(out)
    args = [command, "--path", str(data), "--format", "mimic4", "--out", str(out)]
    assert main([*args, "--teacher", "minilm", "--quick", "--force"]) == 2
    assert "missing column(s) icd_version" in capsys.readouterr().err
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mimic4_export", "prev"]


@pytest.mark.parametrize("command", ["distill", "pipeline"])
def test_out_on_the_input_is_refused_and_the_input_kept(tmp_path, capsys, command):
    data = _broken_mimic4(tmp_path)
    before = _tree(data)
    for out in (data, data / "run", tmp_path):
        args = [command, "--path", str(data), "--format", "mimic4", "--out", str(out)]
        assert main([*args, "--quick", "--force"]) == 2
        err = capsys.readouterr().err
        assert f"pocketrec: error: {command}: {out}: the run folder" in err
        assert str(data) in err and "Traceback" not in err
    assert _tree(data) == before
    assert not (data / "run").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["--path", "{tmp}/no-such-mind", "--format", "mind"],  # the reviewer's bad MIND path
        ["--path", "{tmp}", "--format", "mind"],  # a folder without news.tsv
    ],
)
def test_a_news_pipeline_on_bad_data_leaves_no_folder(tmp_path, capsys, args):
    out = tmp_path / "pipe"
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(["pipeline", "--domain", "news", *args, "--out", str(out), "--quick"]) == 2
    err = capsys.readouterr().err
    assert "pocketrec: error:" in err and "Traceback" not in err
    assert not out.exists()


def test_a_medication_pipeline_on_bad_data_leaves_no_folder(tmp_path, capsys):
    data = _broken_mimic4(tmp_path)
    out = tmp_path / "pipe"
    args = ["pipeline", "--path", str(data), "--format", "mimic4", "--out", str(out)]
    assert main([*args, "--teacher", "minilm", "--quick"]) == 2
    assert "missing column(s) icd_version" in capsys.readouterr().err
    assert not out.exists()
    out.mkdir()  # a folder the user made stays, empty again
    assert main([*args, "--teacher", "minilm", "--quick"]) == 2
    assert out.is_dir() and not any(out.iterdir())


@pytest.mark.parametrize("domain", ["medication", "news"])
def test_a_teacher_that_cannot_be_found_writes_nothing(tmp_path, capsys, domain):
    data = ["--source", "mimic4-demo"]
    if domain == "news":  # the teacher is checked before the data are read
        data = ["--path", str(tmp_path / "mind"), "--format", "mind"]
    empty = tmp_path / "empty-model"
    empty.mkdir()
    for teacher, said in [
        (tmp_path / "nonexistent" / "model", "no such model folder"),
        (empty, "not a Hugging Face model directory"),
    ]:
        out = tmp_path / "run"
        args = ["distill", "--domain", domain, *data, "--out", str(out), "--quick"]
        assert main([*args, "--teacher", str(teacher)]) == 2
        err = capsys.readouterr().err
        assert f"pocketrec: error: distill: teacher {teacher}: " in err and said in err
        assert "Traceback" not in err and not out.exists()


def test_an_out_that_is_a_file_or_cannot_be_made(tmp_path, capsys):
    (tmp_path / "afile").write_text("mine")
    for out, said in [
        (tmp_path / "afile", "not a folder"),
        (tmp_path / "afile" / "run", "cannot create the run folder"),
    ]:
        args = ["distill", "--source", "mimic4-demo", "--out", str(out), "--teacher", "minilm"]
        assert main([*args, "--quick"]) == 2
        err = capsys.readouterr().err
        assert f"pocketrec: error: distill: {out}: {said}" in err and "Traceback" not in err
    assert (tmp_path / "afile").read_text() == "mine"
