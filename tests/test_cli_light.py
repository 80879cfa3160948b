"""The CLI module itself needs no heavy library: an `app`-only install (no pandas, no torch)
must still start `pocketrec` and reach the commands that do not train."""

from __future__ import annotations

import subprocess
import sys

BLOCK = """
import sys
for name in ("pandas", "torch", "transformers", "peft", "optimum", "safetensors"):
    sys.modules[name] = None  # any import of these now raises ImportError
from pocketrec.cli import build_parser, main
parser = build_parser()
assert {"data", "distill"} <= set(parser._subparsers._group_actions[0].choices)
try:
    main(["--help"])
except SystemExit as e:
    assert e.code == 0
print("light-ok")
"""


def test_cli_starts_without_pandas_or_torch():
    r = subprocess.run([sys.executable, "-c", BLOCK], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "light-ok" in r.stdout


def test_export_and_pipeline_take_the_int8_form(capsys):
    import pytest

    from pocketrec.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["export", "--run", "r", "--out", "o"]).int8 == "weights"
    assert parser.parse_args(["pipeline", "--out", "o", "--int8", "dynamic"]).int8 == "dynamic"
    with pytest.raises(SystemExit):
        parser.parse_args(["export", "--run", "r", "--out", "o", "--int8", "int4"])
    assert "invalid choice: 'int4'" in capsys.readouterr().err


def test_a_preset_with_the_float_computing_weights_form_is_refused(tmp_path, capsys):
    """--preset picks integer kernels; the weights form has none, so asking for one is a
    mistake said at once (before a pipeline's distill), not a preset recorded as used."""
    from pocketrec.cli import main

    out = tmp_path / "p"
    assert main(["pipeline", "--out", str(out), "--preset", "arm64"]) == 2
    err = capsys.readouterr().err
    assert "--preset arm64 chooses the integer kernels of --int8 dynamic" in err
    assert not out.exists() or not any(out.iterdir())  # nothing was distilled


def test_export_hands_the_form_and_preset_to_the_exporter(tmp_path, monkeypatch, capsys):
    """The plumbing from the command line to `export_run` (the export itself is tested in
    test_pipeline; here a stand-in records what it was asked)."""
    import json

    import pytest

    run_module = pytest.importorskip("export.medication.run")
    from pocketrec.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "report.json").write_text(json.dumps({"domain": "medication"}))
    asked = []

    def fake_export_run(run_dir, out_dir, **kwargs):
        asked.append(kwargs)
        return {"models": {"student_int8": {"jaccard": 0.5, "prauc": 0.7}}}

    monkeypatch.setattr(run_module, "export_run", fake_export_run)
    out = str(tmp_path / "bundle")
    assert main(["export", "--run", str(run), "--out", out]) == 0
    assert main(["export", "--run", str(run), "--out", out, "--int8", "dynamic"]) == 0
    assert main(["export", "--run", str(run), "--out", out, "--int8", "dynamic",
                 "--preset", "arm64"]) == 0  # fmt: skip
    assert [(a["int8_form"], a["preset"]) for a in asked] == [
        ("weights", None),
        ("dynamic", None),  # export_run picks its default kernels, avx2
        ("dynamic", "arm64"),
    ]
    assert "int8 jaccard 0.5000 prauc 0.7000" in capsys.readouterr().out
