"""Run-folder helpers both domains' distill runs use.

A run folder starts empty (`prepare_out` refuses a non-empty one unless forced), keeps its
configuration as ``config.json`` beside what it produced (`write_config`, `read_config`), and
reports where its time went (`StageClock`) and on what machine (`environment`). Progress goes
to ``logging``: the CLI prints these records as ``[pocketrec] message``.
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from contract.files import atomic_write_json

__all__ = [
    "CONFIG_FILE",
    "StageClock",
    "environment",
    "prepare_out",
    "read_config",
    "write_config",
]

CONFIG_FILE = "config.json"


def prepare_out(out: Path, force: bool) -> None:
    """Make `out` an empty folder; an existing non-empty one is replaced only with `force`."""
    if out.exists() and any(out.iterdir()):
        if not force:
            raise FileExistsError(f"{out} is not empty; pass --force to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def write_config(out: Path, config: dict[str, Any]) -> None:
    atomic_write_json(Path(out) / CONFIG_FILE, config)


def read_config(run: Path) -> dict[str, Any]:
    """The run's ``config.json`` (FileNotFoundError naming the run when it has none)."""
    path = Path(run) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run}: no {CONFIG_FILE} (expected a distill run folder)")
    return json.loads(path.read_text(encoding="utf-8"))


class StageClock:
    """Wall seconds per named stage, summed over folds."""

    def __init__(self) -> None:
        self.seconds: Counter = Counter()

    def __call__(self, name: str):
        clock = self

        class _Timer:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                clock.seconds[name] += time.perf_counter() - self.t0

        return _Timer()


def environment() -> dict:
    import torch

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
