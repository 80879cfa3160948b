"""What a news run keeps for its export, as files in the run folder.

The export reads only the run folder (never the MIND data, never a dataset's name), so the run
writes down everything the bundle and its parity checks are made from:

    data/catalog.json             the catalog in student row order: id, title, category
    data/activity.json            per catalog item, its clicks and first-seen unix time in the
                                  training and validation impressions (the app's cold start)
    data/test.behaviors.tsv       the test impressions, as MIND behaviors lines
    student/catalog_tokens.npy    the catalog's piece ids [n_items + 1, max_tokens] int64
                                  (row 0 = padding), exactly what the student was trained on

The piece vocabulary is `student/vocab.json` (`distill.news.pieces`).
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contract.files import atomic_write_bytes, atomic_write_json, atomic_write_text
from distill.data.mind import format_behavior_line, parse_behavior_line
from distill.news.pieces import NewsCorpus
from distill.news.samples import ItemIndex, catalog_activity

__all__ = [
    "ACTIVITY_FILE",
    "CATALOG_FILE",
    "TEST_FILE",
    "TOKENS_FILE",
    "ExportInputs",
    "read_export_inputs",
    "write_export_inputs",
]

CATALOG_FILE = "data/catalog.json"
ACTIVITY_FILE = "data/activity.json"
TEST_FILE = "data/test.behaviors.tsv"
TOKENS_FILE = "student/catalog_tokens.npy"
CATALOG_FORMAT = "pocketrec-news-run-catalog/1"
ACTIVITY_FORMAT = "pocketrec-news-run-activity/1"


@dataclass
class ExportInputs:
    """A news run's catalog, its student input, its test impressions and the catalog's
    activity before the test period."""

    corpus: NewsCorpus  # catalog rows and piece ids
    items: dict[str, dict[str, str]]  # item id -> {"title", "category"}
    test: list  # `Impression`s
    clicks: dict[str, int]
    seen: dict[str, int]

    @property
    def catalog(self) -> list[str]:
        return self.corpus.index.ids


def write_export_inputs(
    out: Path,
    corpus: NewsCorpus,
    items: dict[str, Any],
    test: Sequence[Any],
    before_test: Sequence[Any],
) -> None:
    """Write the files of the module docstring into the run folder `out`. `items`: item id ->
    `NewsItem`; `before_test`: the training and validation impressions."""
    catalog = corpus.index.ids
    rows = [{"id": i, "title": items[i].title, "category": items[i].category} for i in catalog]
    atomic_write_json(out / CATALOG_FILE, {"format": CATALOG_FORMAT, "items": rows})
    clicks, seen = catalog_activity(before_test, catalog)
    activity = {
        "format": ACTIVITY_FORMAT,
        "from": "training and validation impressions",
        "clicks": clicks,
        "seen": seen,
    }
    atomic_write_json(out / ACTIVITY_FILE, activity)
    atomic_write_text(out / TEST_FILE, "".join(format_behavior_line(i) + "\n" for i in test))
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(corpus.tokens, dtype=np.int64), allow_pickle=False)
    atomic_write_bytes(out / TOKENS_FILE, buf.getvalue())


def _read_json(path: Path, fmt: str) -> dict:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("format") != fmt:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path}: not a {fmt} file (format={got!r})")
    return data


def read_export_inputs(run_dir: Path, vocab_size: int) -> ExportInputs:
    """The files `write_export_inputs` wrote into `run_dir`, checked against each other and
    against the student's vocabulary size."""
    run_dir = Path(run_dir)
    missing = [
        name
        for name in (CATALOG_FILE, ACTIVITY_FILE, TEST_FILE, TOKENS_FILE)
        if not (run_dir / name).is_file()
    ]
    if missing:
        raise FileNotFoundError(
            f"{run_dir}: missing {', '.join(missing)} (expected a finished news run; a run "
            "made before the run folder kept its export inputs must be run again)"
        )
    rows = _read_json(run_dir / CATALOG_FILE, CATALOG_FORMAT)["items"]
    if not rows:
        raise ValueError(f"{run_dir / CATALOG_FILE}: the catalog is empty")
    items = {str(r["id"]): {"title": r["title"], "category": r["category"]} for r in rows}
    index = ItemIndex([str(r["id"]) for r in rows])
    tokens = np.load(run_dir / TOKENS_FILE, allow_pickle=False)
    if tokens.ndim != 2 or tokens.shape[0] != len(index) + 1 or tokens.dtype != np.int64:
        raise ValueError(
            f"{run_dir / TOKENS_FILE}: {tokens.dtype} {list(tokens.shape)}, expected int64 "
            f"[{len(index) + 1}, max_tokens] for the {len(index)} catalog items"
        )
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ValueError(f"{run_dir / TOKENS_FILE}: piece ids outside [0, {vocab_size})")
    path = run_dir / TEST_FILE
    lines = path.read_text(encoding="utf-8").splitlines()
    test = [parse_behavior_line(line, path, n) for n, line in enumerate(lines, 1)]
    if not test:
        raise ValueError(f"{path}: no test impressions")
    activity = _read_json(run_dir / ACTIVITY_FILE, ACTIVITY_FORMAT)
    clicks = {str(k): int(v) for k, v in activity["clicks"].items()}
    seen = {str(k): int(v) for k, v in activity["seen"].items()}
    return ExportInputs(NewsCorpus(index, tokens), items, test, clicks, seen)
