"""Run-folder helpers both domains' distill runs use.

A run folder starts empty (`prepare_out` refuses a non-empty one unless forced, and one that is,
holds or lies inside the run's input), keeps its configuration as ``config.json`` beside what it
produced (`write_config`, `read_config`), and reports where its time went (`StageClock`) and on
what machine (`environment`). Under ``--force`` the old contents wait in a sibling folder until
the new run's data stage has passed (`discard_on_bad_input`), so bad input loses nothing. A run
that cannot start (its folder, its teacher) raises `RunError` before it writes anything.
Progress goes to ``logging``: the CLI prints these records as ``[pocketrec] message``.

`Progress` (`distill.progress`: named steps, bars, an overall share and an ETA) is driven by a
`StageClock` given one: ``with clock("teacher_train", step="fold 1/5 teacher"):``; inside a
step, ``progress.update(step, fraction, "epoch 3/60 val PR-AUC 0.61")`` (a training loop's
per-epoch callback) moves its bar.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.files import atomic_write_json
from distill.progress import Progress  # re-exported: both runs import it from here

__all__ = [
    "CONFIG_FILE",
    "Progress",
    "RunError",
    "RunFolder",
    "StageClock",
    "check_out",
    "discard_on_bad_input",
    "environment",
    "load_teacher_tokenizer",
    "prepare_out",
    "read_config",
    "teacher_folder",
    "write_config",
]

CONFIG_FILE = "config.json"


class RunError(Exception):
    """A run that cannot start as asked: its run folder or its teacher. The message names
    which and why; nothing has been written (the CLI prints it as a one-line error)."""


@dataclass(frozen=True)
class RunFolder:
    """What `prepare_out` did: `made` the folder (else it was there, empty or forced), `top`
    the outermost folder it made (``pipeline``'s DIR for DIR/run), and under --force where the
    old contents wait (`aside`) until the data stage has passed."""

    path: Path
    made: bool
    top: Path | None = None
    aside: Path | None = None


def _local(path: str | Path | None) -> Path | None:
    if path is None:
        return None
    p = Path(path).expanduser()
    return p if p.exists() else None


def check_out(out: Path, force: bool, inputs: Iterable[str | Path | None] = ()) -> None:
    """Refuse, before anything is written, a run folder `out` that is one of `inputs` (the data
    folder, a teacher folder, a run whose features are reused: None and paths that do not exist
    are skipped), holds one or lies inside one (--force would delete the input, and the run
    would write into it), or is not a folder: RunError. A non-empty one without `force`:
    FileExistsError."""
    out = Path(out)
    target = out.expanduser().resolve()
    for given in inputs:
        src = _local(given)
        if src is None:
            continue
        src = src.resolve()
        if target == src:
            how = "is"
        elif target in src.parents:
            how = "holds"
        elif src in target.parents:
            how = "lies inside"
        else:
            continue
        raise RunError(
            f"{out}: the run folder {how} the run's input {given}; choose an --out apart "
            "from the data, the teacher's folder and reused features"
        )
    if out.exists() and not out.is_dir():
        raise RunError(f"{out}: not a folder (a file is there; give --out a folder's path)")
    try:
        full = out.is_dir() and any(out.iterdir())
    except OSError as e:
        raise RunError(f"{out}: cannot read the run folder ({e.strerror or e})") from e
    if full and not force:
        raise FileExistsError(f"{out} is not empty; pass --force to replace it")


def prepare_out(out: Path, force: bool, inputs: Iterable[str | Path | None] = ()) -> RunFolder:
    """Make `out` an empty folder, after `check_out`. A non-empty one (with `force`) is not
    deleted here: its contents move into a hidden sibling folder, which `discard_on_bad_input`
    removes once the data stage has passed or moves back when it has failed."""
    out = Path(out)
    check_out(out, force, inputs)
    aside = None
    if out.is_dir() and any(out.iterdir()):
        aside = _move_aside(out)
    top = None
    if not out.exists():
        top = out
        while top.parent != top and not top.parent.exists():
            top = top.parent
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"{out}: cannot create the run folder ({e.strerror or e})") from e
    return RunFolder(out, top is not None, top, aside)


def _move_aside(out: Path) -> Path:
    """The contents of `out` moved into a new sibling folder (a rename each: the same file
    system), returned; on a failure what moved goes back and RunError says why."""
    try:
        aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.replaced-", dir=out.parent))
    except OSError as e:
        raise RunError(
            f"{out}: cannot keep the old contents aside while the new run starts "
            f"({e.strerror or e}); remove them yourself or choose another --out"
        ) from e
    moved = []
    try:
        for child in list(out.iterdir()):
            os.replace(child, aside / child.name)
            moved.append(child.name)
    except OSError as e:
        _move_back(aside, out, moved)
        raise RunError(
            f"{out}: cannot move the old contents aside ({e.strerror or e}); "
            "remove them yourself or choose another --out"
        ) from e
    return aside


def _move_back(aside: Path, out: Path, names: Iterable[str] | None = None) -> None:
    for name in list(names) if names is not None else [p.name for p in aside.iterdir()]:
        os.replace(aside / name, out / name)
    aside.rmdir()


def _empty(folder: RunFolder) -> None:
    """Undo what the run wrote: the folders `prepare_out` made, else the folder's contents."""
    out = folder.path
    if folder.made:
        shutil.rmtree(folder.top or out, ignore_errors=True)
        return
    for child in out.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


@contextmanager
def discard_on_bad_input(folder: RunFolder) -> Iterator[None]:
    """Around a run's data stage: when the input cannot be used (a `DataError`, or a
    ValueError / FileNotFoundError saying what is wrong with it), undo `prepare_out` before the
    error goes on, so that nothing half-made is left and the corrected command needs no
    --force: the folder goes if `prepare_out` made it, else (a folder the user made, empty
    when the run began) only what the run wrote into it. Under --force the old contents come
    back after any failure here (the user asked to replace them by a run, not to lose them to
    one that never got going), and are deleted once the stage has passed."""
    from distill.data.tables import DataError

    try:
        yield
    except BaseException as e:
        bad_input = isinstance(e, DataError | ValueError | FileNotFoundError)
        if bad_input or folder.aside is not None:
            _empty(folder)
        if folder.aside is not None:
            folder.path.mkdir(exist_ok=True)
            _move_back(folder.aside, folder.path)
        raise
    if folder.aside is not None:
        shutil.rmtree(folder.aside, ignore_errors=True)


def teacher_folder(backbone: str) -> str | None:
    """`backbone` when it names a local model folder (an input of the run, see `check_out`);
    None for the names `distill.backbone.resolve_backbone` maps to installed packages."""
    return None if backbone in ("minilm", "smollm2") else backbone


def load_teacher_tokenizer(backbone: str, truncation_side: str = "left"):
    """The tokenizer of teacher `backbone` (`distill.backbone`), loaded before a run writes
    anything: a teacher that cannot be found is a RunError naming it, not a traceback after a
    half-written run folder."""
    from distill.backbone import load_backbone_tokenizer, resolve_backbone

    name = str(backbone)
    if name.startswith(("/", "./", "../", "~")) and _local(name) is None:
        raise RunError(f"teacher {name}: no such model folder")
    try:
        return load_backbone_tokenizer(resolve_backbone(name), truncation_side)
    except (OSError, ImportError, ValueError) as e:
        raise RunError(f"teacher {name}: {e}") from e


def write_config(out: Path, config: dict[str, Any]) -> None:
    atomic_write_json(Path(out) / CONFIG_FILE, config)


def read_config(run: Path) -> dict[str, Any]:
    """The run's ``config.json`` (FileNotFoundError naming the run when it has none)."""
    path = Path(run) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run}: no {CONFIG_FILE} (expected a distill run folder)")
    return json.loads(path.read_text(encoding="utf-8"))


class StageClock:
    """Wall seconds per named stage, summed over folds; with a `Progress`, each timed stage
    given a `step` name also moves that step's bar (``with clock("teacher", step="fold 1/5
    teacher"):``)."""

    def __init__(self, progress: Progress | None = None) -> None:
        self.seconds: Counter = Counter()
        self.progress = progress

    def __call__(self, name: str, step: str | None = None):
        clock = self

        class _Timer:
            def __enter__(self):
                self.t0 = time.perf_counter()
                if clock.progress is not None and step is not None:
                    clock.progress.start(step)

            def __exit__(self, exc_type, *exc):
                clock.seconds[name] += time.perf_counter() - self.t0
                if clock.progress is not None and step is not None and exc_type is None:
                    clock.progress.done(step)

        return _Timer()


def environment() -> dict:
    import torch

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
