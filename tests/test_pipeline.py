"""The whole distill job on the embedded MIMIC-IV demo with a tiny Llama teacher built from a
config (conftest.py; no download): data -> prompts -> teacher -> features -> students -> report.
Plus what the run keeps for its export, the export reading only the run, and `pocketrec distill`
refusing a non-empty run folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from contract.layout import TensorConfig
from distill.backbone import TeacherConfig
from distill.data import load_cohort
from distill.data.config import DataConfig
from distill.data.samples import build_samples
from distill.data.tensors import MedVocabs, encode_samples
from distill.features import load_features
from distill.medication.evaluate import METRICS, MODELS, ddi_label_pairs, fold_indices
from distill.medication.export_inputs import (
    read_bundle_inputs,
    read_heldout,
    read_trained_ids,
)
from distill.medication.run import RunConfig, quick_config, run_distill
from distill.medication.student import LeaderStudent, load_student
from distill.medication.train import DistillConfig, predict
from distill.metrics import jaccard

ROOT = Path(__file__).resolve().parents[1]
FOLDS = 2
SEEDS = (0, 1)
RATES = ("jaccard", "f1", "prauc", "ddi_rate")
FOLD_FILES = (
    "features.safetensors",
    "features.safetensors.json",
    "student_kd.safetensors",
    "student_nokd.safetensors",
    "metrics.json",
    "heldout.npz",
)
# epochs of a tiny model end within a second, which trips the Trainer's mtime heuristic
pytestmark = pytest.mark.filterwarnings("ignore:mtime may not be reliable")


@pytest.fixture(scope="module")
def run(tmp_path_factory, llama_dir):
    """One run, shared by the tests below; one thread, as suits the tiny models on 2 cores."""
    out = tmp_path_factory.mktemp("distill") / "run"
    cfg = RunConfig(
        data=DataConfig(source="mimic4-demo", folds=FOLDS),
        teacher=TeacherConfig(backbone=llama_dir, epochs=1, max_length=64, batch_size=16),
        tensors=TensorConfig(),
        distill=DistillConfig(max_epochs=3, patience=2),
        seeds=SEEDS,
        inner_folds=2,
        inner_max_epochs=3,
    )
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")  # the teacher otherwise takes every core
        torch.set_num_threads(1)
        try:
            report = run_distill(out, cfg)
        finally:
            torch.set_num_threads(threads)
    return out, cfg, report


@pytest.mark.slow
def test_report(run):
    out, _, returned = run
    report = json.loads((out / "report.json").read_text())
    assert report == json.loads(json.dumps(returned))
    assert report["domain"] == "medication"
    assert report["source"] == "mimic4-demo"
    assert report["protocol"] == "all-visits"
    assert report["folds"] == FOLDS
    assert set(report["models"]) == set(MODELS)
    for name, m in report["models"].items():
        for key in METRICS:
            assert key in m and f"{key}_std" in m, (name, key)
            assert m[f"{key}_std"] >= 0, (name, key)
        for key in RATES:
            assert 0.0 <= m[key] <= 1.0, (name, key)
        assert m["avg_drugs"] >= 0.0
    assert set(report["params"]) == {"teacher", "student"}
    assert all(isinstance(v, int) and v > 0 for v in report["params"].values())
    assert report["samples"] >= 10 and report["labels"] == len(
        json.loads((out / "labels.json").read_text())
    )
    assert len(report["chosen_on_validation"]) == FOLDS * len(SEEDS)
    assert report["seeds"] == list(SEEDS) and "inner 2-fold" in report["selection"]
    runs = report["runs"]
    assert [(r["seed"], r["fold"]) for r in runs] == [(s, f) for f in range(FOLDS) for s in SEEDS]
    for name in ("jaccard", "prauc"):  # the summary is over seeds x folds
        vals = [r["models"]["student_kd"][name] for r in runs]
        assert report["models"]["student_kd"][name] == pytest.approx(np.mean(vals), abs=1e-4)
        assert report["models"]["student_kd"][f"{name}_std"] == pytest.approx(
            np.std(vals), abs=1e-4
        )
    paired = report["paired"]["student_kd - previous_visit"]["prauc"]
    assert len(paired["per_fold"]) == FOLDS and 0 <= paired["wins"] <= FOLDS
    lo, hi = paired["bootstrap_95"]
    assert lo <= paired["pooled_mean"] <= hi and 0 <= paired["sign_test_p"] <= 1
    assert report["wall_s"]["total"] > 0

    md = (out / "report.md").read_text(encoding="utf-8")
    for name in MODELS:
        assert f"| {name} |" in md
    assert "| student_kd - student_nokd | prauc |" in md
    assert (out / "config.json").is_file() and (out / "prompts.jsonl").is_file()


@pytest.mark.slow
def test_fold_folders(run):
    out, _, _ = run
    ids = [json.loads(line)["id"] for line in (out / "prompts.jsonl").read_text().splitlines()]
    for fold in range(FOLDS):
        fdir = out / f"fold{fold}"
        for name in FOLD_FILES:
            assert (fdir / name).is_file(), fdir / name
        assert (fdir / "teacher").is_dir()
        feats, probs, info = load_features(fdir / "features.safetensors", ids)
        assert feats.shape == (len(ids), 32)  # the tiny Llama's hidden size
        assert probs.shape[0] == len(ids) and np.isfinite(feats).all()
        assert info["backbone"] == run[1].teacher.backbone
        metrics = json.loads((fdir / "metrics.json").read_text())
        assert set(metrics["test"]) == set(MODELS)
        assert 1 <= len(metrics["kd_history"]) <= 3
        assert all("kd" in row and "nce" in row for row in metrics["kd_history"])
        assert all("kd" not in row for row in metrics["nokd_history"])


@pytest.mark.slow
def test_students_load_back_and_score(run):
    out, cfg, _ = run
    d = cfg.data
    samples = build_samples(load_cohort(d.source, None, None), d.protocol)
    vocabs = MedVocabs.load(out / "vocab")
    arrays = encode_samples(samples, vocabs, cfg.tensors)
    labels = json.loads((out / "labels.json").read_text())
    for fold in range(FOLDS):
        fdir = out / f"fold{fold}"
        metrics = json.loads((fdir / "metrics.json").read_text())
        _, _, te = fold_indices(samples, d.folds, fold, d.seed)
        for name in ("student_kd", "student_nokd"):
            model, scfg = load_student(fdir / f"{name}.safetensors")
            assert isinstance(model, LeaderStudent) and not model.training
            assert scfg.n_labels == len(labels) and scfg.dim == cfg.student_dim
            scores = predict(model, arrays)
            assert scores.shape == (len(samples), len(labels))
            assert np.isfinite(scores).all()
            # the saved weights are the ones the report measured
            t = metrics["chosen_on_validation"][name]
            got = jaccard(arrays["y"][te], scores[te] >= t)
            assert got == pytest.approx(metrics["test"][name]["jaccard"], abs=1e-6)


@pytest.mark.slow
def test_run_keeps_what_export_needs(run):
    out, cfg, _ = run
    d = cfg.data
    cohort = load_cohort(d.source, None, None)
    samples = build_samples(cohort, d.protocol)
    vocabs = MedVocabs.load(out / "vocab")
    arrays = encode_samples(samples, vocabs, cfg.tensors)
    for fold in range(FOLDS):
        _, va, te = fold_indices(samples, d.folds, fold, d.seed)
        held = read_heldout(out / f"fold{fold}")
        # the students trained on the validation patients (inner k-fold, then refit):
        # only the test patients are held out
        va = va if cfg.selection == "validation" else va[:0]
        rows = np.concatenate([va, te])
        assert held.n_validation == len(va)
        assert held.sample_ids == [samples[i].sample_id for i in rows]
        for name, value in held.arrays.items():
            assert value.dtype == arrays[name].dtype
            np.testing.assert_array_equal(value, arrays[name][rows])
            np.testing.assert_array_equal(held.test[name], arrays[name][te])
        # the ids the fold's students trained on: everything in its non-test samples
        trained = read_trained_ids(out / f"fold{fold}")
        tr = np.setdiff1d(np.arange(len(samples)), te)
        for name, kind in (("dx", "diagnoses"), ("px", "procedures")):
            want = np.unique(arrays[name][tr])
            assert trained[kind] == [int(i) for i in want if i > 1]
    inputs = read_bundle_inputs(out)
    labels = json.loads((out / "labels.json").read_text())
    assert [row["code"] for row in inputs.labels] == labels
    assert inputs.ddi_label_pairs() == ddi_label_pairs(labels)
    assert list(inputs.titles) == [*vocabs.diagnoses.tokens[2:], *vocabs.procedures.tokens[2:]]
    assert all(inputs.titles[c] == cohort.titles[c] for c in inputs.titles if c in cohort.titles)


@pytest.mark.slow
def test_export_reads_the_run_and_leaves_it_alone(run, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    import distill.data
    from export.medication.run import export_json_path, export_run

    out, _, returned = run
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def no_raw_data(*args, **kwargs):
        raise AssertionError("export must not read the cohort")

    monkeypatch.setattr(distill.data, "load_cohort", no_raw_data)
    bundle = tmp_path / "bundle"
    combined = export_run(out, bundle)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    results = json.loads(export_json_path(bundle).read_text())
    assert export_json_path(bundle) == tmp_path / "bundle.export.json"
    # the weights form computes in float: no integer kernels, so no preset is recorded
    assert set(results["models"]) == {"student_int8"} and results["export"]["preset"] is None
    report = json.loads(json.dumps(returned))
    assert combined == {
        **report,
        "models": {**report["models"], **results["models"]},
        "size_bytes": results["size_bytes"],
        "export": results["export"],
        "bundle": str(bundle),
    }
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["metrics"] == combined["models"]
    assert json.loads((bundle / "labels.json").read_text()) == read_bundle_inputs(out).labels
    # the bundle's vocabulary: the codes fold 0's students trained on, renumbered
    trained = read_trained_ids(out / "fold0")
    vocab = json.loads((bundle / "vocab.json").read_text())
    full = MedVocabs.load(out / "vocab")
    for kind in ("diagnoses", "procedures"):
        kept = [getattr(full, kind).tokens[i] for i in trained[kind]]
        assert list(vocab[kind]) == ["<pad>", "<unk>", *kept]
        assert list(vocab[kind].values()) == list(range(len(kept) + 2))
        assert manifest["data"]["vocabulary"][kind] == {
            "kept": len(kept) + 2, "of": len(getattr(full, kind))
        }  # fmt: skip
        assert manifest["student_config"][f"n_{kind}"] == len(kept) + 2
    # the manifest counts the shipped (pruned) student's parameters, the run the full one's
    assert 0 < manifest["params"]["student"] <= combined["params"]["student"]
    assert "codes fold 0's training patients had" in (bundle / "card.md").read_text()
    # the default int8 file stores 8-bit weights that the session restores; `int8_form="dynamic"`
    # (`--int8 dynamic`) ships integer products instead, each behind its own gate
    assert results["export"]["int8_form"] == "weights"
    assert manifest["model"]["quantization"]["form"] == "weights"
    assert results["export"]["parity_fold0"]["weights_8bit"]["passed"]
    dynamic = tmp_path / "dynamic"
    export_run(out, dynamic, int8_form="dynamic")
    results = json.loads(export_json_path(dynamic).read_text())
    assert results["export"]["parity_fold0"]["integer_ops"]["integer_product_ops"] >= 4
    assert results["export"]["preset"] == "avx2"  # the dynamic form's default kernels
    manifest = json.loads((dynamic / "manifest.json").read_text())
    assert manifest["model"]["quantization"]["name"] == "avx2"
    with pytest.raises(ValueError, match="unknown int8 form 'int4'"):
        export_run(out, tmp_path / "nope", int8_form="int4")
    with pytest.raises(ValueError, match="'arm64' chooses the integer kernels of the dynamic"):
        export_run(out, tmp_path / "nope", preset="arm64")  # with the weights form
    assert not (tmp_path / "nope").exists()


@pytest.mark.slow
def test_second_run_without_force_is_refused(run):
    out, cfg, _ = run
    before = (out / "report.json").stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="--force"):
        run_distill(out, cfg)
    assert (out / "report.json").stat().st_mtime_ns == before


def test_quick_config_shortens_training_only():
    cfg = RunConfig(
        data=DataConfig(source="mimic4-demo", folds=3),
        teacher=TeacherConfig(epochs=3, max_length=512),
        tensors=TensorConfig(),
        distill=DistillConfig(max_epochs=200, alpha=0.5),
    )
    quick = quick_config(cfg)
    assert quick.teacher.epochs == 1 and quick.teacher.max_length <= 128
    assert quick.distill.max_epochs <= 60 and quick.distill.alpha == 0.5
    assert quick.data == cfg.data and quick.tensors == cfg.tensors
    short = replace(cfg, teacher=replace(cfg.teacher, max_length=64))
    assert quick_config(short).teacher.max_length == 64  # never lengthened
    assert json.loads(json.dumps(quick.to_dict()))["teacher"]["epochs"] == 1


def test_the_plan_prices_a_quick_lora_teacher_as_measured():
    from distill.medication.run import _plan

    cfg = RunConfig(
        data=DataConfig(source="mimic4-demo", folds=2),
        teacher=TeacherConfig(backbone="minilm", epochs=2, max_length=384, frozen=False),
        tensors=TensorConfig(),
        distill=DistillConfig(),
        seeds=(0,),
    )
    full = _plan(cfg).weights["fold 1/2 teacher"]
    quick = _plan(quick_config(cfg)).weights["fold 1/2 teacher"]
    # ~300 s per fold and epoch at 384 tokens, ~9 s for --quick's one epoch at 128
    assert full == pytest.approx(600.0) and quick == pytest.approx(9.0, abs=1.0)


def test_cli_refuses_a_non_empty_out_folder(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    done = subprocess.run(
        [sys.executable, "-m", "pocketrec.cli", "distill", "--source", "mimic4-demo",
         "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("pocketrec: error: distill:")
    assert "not empty" in done.stderr and "--force" in done.stderr and str(out) in done.stderr
    assert done.stdout == ""
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "mine"


@pytest.mark.slow
def test_frozen_teacher_extracts_features_once(tmp_path, llama_dir):
    """A frozen (label-free) teacher: one features file for all folds, a linear probe as the
    teacher row; a second run reuses those features without any teacher."""
    cfg = RunConfig(
        data=DataConfig(source="mimic4-demo", folds=FOLDS),
        teacher=TeacherConfig(backbone=llama_dir, frozen=True, max_length=64, batch_size=16),
        tensors=TensorConfig(),
        distill=DistillConfig(max_epochs=2, patience=1),
        seeds=(0,),
        selection="validation",
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = run_distill(tmp_path / "frozen", cfg)
        reused = run_distill(
            tmp_path / "reused", replace(cfg, features_from=str(tmp_path / "frozen"))
        )
    finally:
        torch.set_num_threads(threads)
    assert (tmp_path / "frozen" / "features.safetensors").is_file()
    for fold in range(FOLDS):
        assert not (tmp_path / "frozen" / f"fold{fold}" / "features.safetensors").exists()
        assert not (tmp_path / "reused" / f"fold{fold}" / "teacher").exists()
    assert report["teacher"]["frozen"] and report["params"]["teacher"] > 0
    assert set(report["models"]) == set(MODELS)
    assert report["models"]["teacher"] == reused["models"]["teacher"]
    assert report["models"]["student_kd"] == reused["models"]["student_kd"]
