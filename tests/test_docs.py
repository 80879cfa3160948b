"""The README documents every command the CLI has, and the commands it shows exist."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from pocketrec.cli import build_parser

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def _commands(parser: argparse.ArgumentParser, prefix: str = "pocketrec") -> list[str]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = _commands(sub, f"{prefix} {name}")
                if not nested or sub.get_default("func") is not None:
                    out.append(f"{prefix} {name}")  # runs on its own too (e.g. `pocketrec app`)
                out.extend(nested)
    return out


def test_every_command_is_in_the_readme():
    commands = _commands(build_parser())
    assert "pocketrec data stats" in commands and "pocketrec distill" in commands
    missing = [c for c in commands if c not in README]
    assert not missing, f"undocumented commands: {missing}"


def test_every_command_in_the_readme_exists():
    commands = set(_commands(build_parser()))
    shown = set(re.findall(r"`(pocketrec (?:data \w+|app (?:backup|restore)|\w+))", README))
    assert shown, "the README shows no pocketrec command"
    assert shown <= commands, f"README shows commands the CLI lacks: {shown - commands}"


def test_readme_names_both_setup_commands_and_ci_calls_the_test_one():
    assert "make demo" in README and "make test" in README
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text(encoding="utf-8")
    assert "make test" in ci


def test_flet_build_configuration_points_at_a_real_entry_module():
    import tomllib

    root = Path(__file__).resolve().parents[1]
    cfg = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["flet"]
    app = cfg["app"]
    entry = root / app["path"] / f"{app['module']}.py"
    assert entry.is_file()
    assert "from app.main import run" in entry.read_text(encoding="utf-8")
    # the packaged app carries no training code and no raw data
    assert {"distill", "export", "assets/data"} <= set(app["exclude"])
    assert cfg["org"] and cfg["product"]


def test_every_source_file_the_readme_names_exists():
    root = Path(__file__).resolve().parents[1]
    pattern = r"`((?:contract|distill|export|app|pocketrec|bench|tests)/[\w/.]*\.py)"
    named = set(re.findall(pattern, README))
    assert named, "the README names no source file"
    missing = sorted(p for p in named if not (root / p).is_file())
    assert not missing, f"README names files that do not exist: {missing}"
