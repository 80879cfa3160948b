"""The whole news job on generated MIND data with a tiny BERT teacher built in a temp folder."""

from __future__ import annotations

import json
import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers reads it

import numpy as np
import pytest
import torch
from test_news_models import build_news_bert

from distill.data.mind import generate_mind, load_mind, time_split
from distill.news.evaluate import METRICS, MODELS, bootstrap_std, popularity_scores
from distill.news.export_inputs import read_export_inputs
from distill.news.pieces import load_piece_vocab
from distill.news.run import run_news
from distill.news.student import load_news_student
from distill.news.teacher import NewsTeacherConfig
from distill.news.train import NewsDistillConfig
from distill.news.vectors import load_teacher_vectors


@pytest.fixture(autouse=True)
def few_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(min(2, before))
    yield
    torch.set_num_threads(before)


class _Lines(logging.Handler):
    """The messages logged under `distill` while it is attached."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def __enter__(self) -> _Lines:
        logger = logging.getLogger("distill")
        self.level = logger.level
        logger.setLevel(logging.INFO)
        logger.addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        logger = logging.getLogger("distill")
        logger.removeHandler(self)
        logger.setLevel(self.level)


@pytest.mark.slow
def test_run_news_on_generated_data(tmp_path):
    data = generate_mind(tmp_path / "mind", n_users=80, n_items=120, n_impressions=800, seed=2)
    bert = build_news_bert(tmp_path / "bert")
    tcfg = NewsTeacherConfig(backbone=bert, epochs=3, lr=3e-3, attention_dim=16, max_history=20)
    dcfg = NewsDistillConfig(epochs=3, patience=3, lr=3e-3, max_history=20, max_title_tokens=12)
    out = tmp_path / "run"
    with _Lines() as log:
        report = run_news(out, data, tcfg, dcfg, student_dim=32, student_heads=2)

    assert report["domain"] == "news" and report["protocol"] == "time-split"
    assert report["folds"] == 1 and report["source"].startswith("generated")
    assert list(report["models"]) == list(MODELS)
    for name, m in report["models"].items():
        for k in METRICS:
            assert 0.0 <= m[k] <= 1.0, (name, k, m)
            assert 0.0 <= m[f"{k}_std"] < 0.5, (name, k, m)
    for name in ("teacher", "student_kd", "student_nokd"):
        assert report["models"][name]["auc"] > 0.5, (name, report["models"][name])
    assert report["params"]["student"] < report["params"]["teacher"]
    assert {"data", "teacher", "student_kd", "student_nokd", "evaluate", "total"} <= set(
        report["wall_s"]
    )
    assert json.loads((out / "report.json").read_text()) == report
    md = (out / "report.md").read_text()
    assert "bootstrap" in md and "student_kd" in md
    # progress a person can follow: a bar per stage, the students' epochs with their
    # validation AUC, an overall share and ETA on every bar line
    assert log.lines[0].startswith("data  [") and "started" in log.lines[0]
    assert log.lines[1].startswith("data:") and "| popularity |" in "\n".join(log.lines)
    bars = [line for line in log.lines if "] " in line and "| all " in line]
    for step in ("teacher", "teacher vectors", "student_kd", "student_nokd", "evaluate"):
        assert any(line.startswith(f"{step}  [") for line in bars), step
    assert any("epoch 1/3: val auc" in line for line in bars)
    assert bars[-1].startswith("evaluate  [############] 100% done | all 100%")

    # the files the student side and the app read
    n = sum(report["impressions"].values())
    users, ids, info = load_teacher_vectors(out / "teacher" / "users.safetensors")
    assert users.shape == (n, 32) and len(ids) == n and info["backbone"] == bert
    items, ids_of_items, _ = load_teacher_vectors(out / "teacher" / "items.safetensors")
    assert items.shape == (report["items"], 32)
    vocab, meta = load_piece_vocab(out / "student" / "vocab.json")
    model = load_news_student(out / "student" / "student_kd.safetensors")
    assert model.config.vocab_size == len(vocab) and meta["max_tokens"] == 12

    # what the export reads instead of the data: catalog, its tokens, test split, activity
    train, val, test = time_split(load_mind(data).impressions)
    inputs = read_export_inputs(out, len(vocab))
    assert inputs.catalog == ids_of_items and inputs.test == test
    assert inputs.corpus.tokens.shape == (len(ids_of_items) + 1, 12)
    assert not inputs.corpus.tokens[0].any() and inputs.corpus.tokens[1:, 0].all()
    assert sum(inputs.clicks.values()) == sum(sum(imp.labels) for imp in (*train, *val))
    assert set(inputs.seen) <= set(ids_of_items) and inputs.items[ids_of_items[0]]["title"]

    with pytest.raises(FileExistsError):
        run_news(out, data, tcfg, dcfg)


def test_popularity_ranks_by_training_clicks_then_id():
    class Imp:
        def __init__(self, candidates, labels):
            self.candidates, self.labels = candidates, labels

    train = [Imp(("b", "c"), (1, 0)), Imp(("b", "a"), (1, 0)), Imp(("c", "a"), (1, 0))]
    (scores,) = popularity_scores(train, [Imp(("a", "c", "b", "z", "y"), (0, 0, 1, 0, 0))])
    order = [("a", "c", "b", "z", "y")[i] for i in np.argsort(-scores)]
    assert order == ["b", "c", "a", "y", "z"]  # b: 2 clicks, c: 1, then ids a < y < z


def test_bootstrap_std_is_zero_for_identical_impressions():
    labels = [np.array([1, 0, 0])] * 4
    scores = [np.array([0.9, 0.1, 0.2])] * 4
    assert bootstrap_std(labels, scores, 5) == {f"{m}_std": 0.0 for m in METRICS}
    rng = np.random.default_rng(0)
    noisy = [rng.normal(size=3) for _ in range(30)]
    assert bootstrap_std([labels[0]] * 30, noisy, 5)["auc_std"] > 0
