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
