"""Tests for distill.medication.evaluate: thresholds, summaries, DDI label pairs, patient folds,
fold evaluation and the markdown report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from distill.data import codes
from distill.data.records import Visit
from distill.data.samples import MedSample
from distill.data.splits import split
from distill.medication import evaluate as ev

# --------------------------------------------------------------------------- thresholds


def test_choose_threshold_picks_the_best_grid_value():
    y_val = np.array([[1, 0, 1], [0, 1, 0]])
    s_val = np.array([[0.90, 0.57, 0.62], [0.10, 0.70, 0.30]])
    # every positive scores >= 0.62 and every negative <= 0.57, so only a threshold in
    # (0.57, 0.62] gets both rows right (Jaccard 1); the one grid value there is 0.60.
    # 0.55 also admits label 1 of row 0 (Jaccard 2/3 there); 0.65 drops its label 2 (1/2).
    t = ev.choose_threshold(y_val, s_val)
    assert t == pytest.approx(0.60) and t in ev.THRESHOLDS
    assert isinstance(t, float)


def test_choose_threshold_without_validation_samples_is_one_half():
    assert ev.choose_threshold(np.zeros((0, 4)), np.zeros((0, 4))) == 0.5


def test_threshold_grid():
    assert ev.THRESHOLDS[0] == pytest.approx(0.05) and ev.THRESHOLDS[-1] == pytest.approx(0.95)
    assert len(ev.THRESHOLDS) == 19


# --------------------------------------------------------------------------- summaries


def test_summarize_mean_and_population_std():
    per_fold = [{"jaccard": j, "f1": 0.5} for j in (0.1, 0.2, 0.4)]
    out = ev.summarize(per_fold)
    assert set(out) == {"jaccard", "jaccard_std", "f1", "f1_std"}
    assert out["jaccard"] == pytest.approx(0.2333, abs=1e-4)
    mean = 0.7 / 3
    pop_std = float(np.sqrt(((0.1 - mean) ** 2 + (0.2 - mean) ** 2 + (0.4 - mean) ** 2) / 3))
    assert out["jaccard_std"] == pytest.approx(round(pop_std, 4))  # 0.1247, not 0.1528 (ddof=1)
    assert out["f1"] == 0.5 and out["f1_std"] == 0.0
    assert ev.summarize([{"a": 1.0}, {"a": 3.0}]) == {"a": 2.0, "a_std": 1.0}


def test_summarize_metric_missing_from_some_folds():
    # a fold whose test patients are all single-visit has no multi_visit_* keys (e.g.
    # synthea-demo, last-visit, 5 folds: fold 4); this used to raise KeyError at the very end
    # of a run, or silently drop the metric when fold 0 was the one lacking it
    per_fold = [{"a": 1.0, "m": 0.2}, {"a": 3.0}, {"a": 2.0, "m": 0.4}]
    assert ev.summarize(per_fold) == {"a": 2.0, "a_std": 0.8165, "m": 0.3, "m_std": 0.1}
    assert ev.summarize(per_fold[1:]) == {"a": 2.5, "a_std": 0.5, "m": 0.4, "m_std": 0.0}


# --------------------------------------------------------------------------- DDI pairs


def test_ddi_label_pairs_from_the_shipped_table():
    assert ("A01A", "C04A") in codes.ddi_pairs()
    # label index of A01A is 1 and of C04A is 0; ZZZZ is not a drug class at all
    assert ev.ddi_label_pairs(["C04A", "A01A", "ZZZZ"]) == [(1, 0)]


def test_ddi_label_pairs_maps_and_drops(monkeypatch):
    table = frozenset({("A01A", "B01A"), ("B01A", "C01A"), ("A01A", "X99X")})
    monkeypatch.setattr(codes, "ddi_pairs", lambda: table)
    # sorted pairs: (A01A, B01A) -> (2, 1); (A01A, X99X) dropped (X99X not a label);
    # (B01A, C01A) -> (1, 0)
    assert ev.ddi_label_pairs(["C01A", "B01A", "A01A"]) == [(2, 1), (1, 0)]
    assert ev.ddi_label_pairs(["A01A"]) == []


# --------------------------------------------------------------------------- samples


def _visit(pid: str, order: int, meds: tuple[str, ...]) -> Visit:
    return Visit(pid, f"{pid}-v{order}", order, f"2100-01-{order + 1:02d}", ("icd10cm:I10",), (),
                 meds)  # fmt: skip


def _samples(n_patients: int = 40) -> list[MedSample]:
    """Patients with 1..3 visits, every visit a target (all-visits)."""
    out = []
    for p in range(n_patients):
        pid = f"p{p}"
        visits = [_visit(pid, o, ("A01A",)) for o in range(1 + p % 3)]
        for i, t in enumerate(visits):
            out.append(MedSample(f"{pid}:{t.visit_id}", pid, tuple(visits[:i]), t))
    return out


@pytest.mark.parametrize(("k", "seed"), [(2, 0), (3, 0), (5, 7)])
def test_fold_indices_partition_samples_by_patient(k, seed):
    samples = _samples()
    pids = np.array([s.patient_id for s in samples])
    test_union = []
    for fold in range(k):
        tr, va, te = ev.fold_indices(samples, k, fold, seed)
        parts = [set(tr.tolist()), set(va.tolist()), set(te.tolist())]
        assert sum(len(p) for p in parts) == len(samples)
        assert set().union(*parts) == set(range(len(samples)))  # disjoint and covering
        patient_sets = [set(pids[sorted(p)]) for p in parts]
        for a in range(3):
            for b in range(a + 1, 3):
                assert not patient_sets[a] & patient_sets[b]  # a patient is in one part only
        sp = split(set(pids), k, fold, seed)
        assert patient_sets == [set(sp.train), set(sp.validation), set(sp.test)]
        assert all(np.all(np.diff(i) > 0) for i in (tr, va, te))  # sorted sample order
        test_union += te.tolist()
    assert sorted(test_union) == list(range(len(samples)))  # every sample tested exactly once


def test_previous_multi_hot():
    a = _visit("p", 0, ("B01A", "C01A", "ZZZZ"))
    b = _visit("p", 1, ("A01A",))
    c = _visit("p", 2, ("C01A",))
    samples = [MedSample("p:0", "p", (), a), MedSample("p:2", "p", (a, b), c)]
    prev, has = ev.previous_multi_hot(samples, ["A01A", "B01A", "C01A"])
    assert has.tolist() == [False, True]
    assert prev.tolist() == [[0, 0, 0], [1, 0, 0]]  # only the LAST previous visit counts


# --------------------------------------------------------------------------- fold evaluation


def _problem(seed: int = 0, n: int = 60, labels: int = 6):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, labels)) < 0.35).astype(np.float32)
    y[np.arange(n), rng.integers(labels, size=n)] = 1.0  # at least one drug each
    idx = (np.arange(0, 30), np.arange(30, 40), np.arange(40, n))
    has_prev = rng.random(n) < 0.5
    has_prev[40], has_prev[41] = True, False  # both kinds in the test part
    prev = np.where(has_prev[:, None], (rng.random((n, labels)) < 0.3), 0).astype(np.float32)
    return y, idx, prev, has_prev


def test_evaluate_fold_reports_every_model_and_breakdown():
    y, idx, prev, has_prev = _problem()
    rng = np.random.default_rng(1)
    scores = {
        "teacher": y.copy(),  # a perfect model
        "student_kd": np.clip(y * 0.6 + rng.random(y.shape) * 0.5, 0, 1).astype(np.float32),
        "student_nokd": rng.random(y.shape).astype(np.float32),
    }
    ddi = [(0, 1), (2, 3)]
    out, chosen = ev.evaluate_fold(0, idx, y, scores, prev, has_prev, ddi)
    assert set(out) == set(ev.MODELS)
    for name, m in out.items():
        assert set(ev.METRICS) <= set(m), name
        for key in ("single_visit_jaccard", "single_visit_prauc", "multi_visit_jaccard",
                    "multi_visit_prauc"):  # fmt: skip
            assert key in m, (name, key)
        for key in ("jaccard", "f1", "prauc", "ddi_rate"):
            assert 0.0 <= m[key] <= 1.0, (name, key)
        assert 0.0 <= m["avg_drugs"] <= y.shape[1]
    t = out["teacher"]
    assert t["jaccard"] == 1.0 and t["f1"] == 1.0 and t["prauc"] == 1.0
    assert t["single_visit_jaccard"] == 1.0 and t["multi_visit_jaccard"] == 1.0
    te = idx[2]
    assert t["avg_drugs"] == pytest.approx(y[te].sum(1).mean())
    assert out["student_nokd"]["jaccard"] < 1.0
    assert set(chosen) == {"teacher", "student_kd", "student_nokd", "popularity_k"}
    assert all(t in ev.THRESHOLDS for k, t in chosen.items() if k != "popularity_k")
    assert 1 <= chosen["popularity_k"] <= y.shape[1]
    # popularity predicts the same chosen top-k for everyone
    assert out["popularity"]["avg_drugs"] == chosen["popularity_k"]


def test_evaluate_fold_breakdown_only_for_kinds_present():
    y, idx, prev, has_prev = _problem()
    has_prev = np.ones_like(has_prev)  # every test sample has a previous visit
    prev = y.copy()  # ... whose drugs were exactly the current ones
    out, _ = ev.evaluate_fold(0, idx, y, {"teacher": y.copy()}, prev, has_prev, [])
    assert set(out) == {"teacher", "popularity", "previous_visit"}
    for m in out.values():
        assert "multi_visit_jaccard" in m and "single_visit_jaccard" not in m
        assert "single_visit_prauc" not in m
    assert out["previous_visit"]["jaccard"] == 1.0
    assert out["previous_visit"]["multi_visit_jaccard"] == 1.0


# --------------------------------------------------------------------------- report


def _meta() -> dict:
    return {
        "domain": "medication",
        "source": "tiny",
        "protocol": "all-visits",
        "folds": 2,
        "params": {"teacher": 1234567, "student": 8901},
        "wall_s": {"data": 0.4, "total": 12.3},
        "teacher": {"backbone": "tiny-llama", "lora": True},
    }


def test_build_report_and_markdown_render_every_model():
    y, idx, prev, has_prev = _problem()
    per_fold = []
    for seed in (2, 3):
        rng = np.random.default_rng(seed)
        scores = {name: rng.random(y.shape) for name in ("teacher", "student_kd", "student_nokd")}
        per_fold.append(ev.evaluate_fold(0, idx, y, scores, prev, has_prev, [(0, 1)])[0])
    report = ev.build_report(per_fold, _meta())
    assert set(report["models"]) == set(ev.MODELS)
    for m in report["models"].values():
        for key in ev.METRICS:
            assert key in m and f"{key}_std" in m
    md = ev.report_markdown(report)
    assert md.startswith("# pocketrec report: medication on tiny")
    for name in ev.MODELS:
        assert sum(line.startswith(f"| {name} |") for line in md.splitlines()) == 2, name
    header = next(line for line in md.splitlines() if line.startswith("| model | jaccard"))
    assert header == "| model | " + " | ".join(ev.METRICS) + " |"
    jac = report["models"]["popularity"]["jaccard"]
    assert f"{jac:.4f} ± " in md
    assert "teacher 1,234,567" in md and "student 8,901" in md
    assert "total 12.3" in md and "tiny-llama" in md


def test_markdown_marks_a_missing_breakdown_with_a_dash_and_skips_a_model_without_one():
    part = {k: 0.5 for k in ev.METRICS} | {"single_visit_jaccard": 0.4, "single_visit_prauc": 0.6}
    report = {**_meta(), "models": {
        "popularity": ev.summarize([part, part]),
        "student_int8": ev.summarize([{k: 0.5 for k in ev.METRICS}] * 2),
    }}  # fmt: skip
    md = ev.report_markdown(report)
    assert "| popularity | 0.5000 ± 0.0000 |" in md
    assert "| popularity | 0.4000 | 0.6000 | – | – |" in md
    assert sum(line.startswith("| student_int8 |") for line in md.splitlines()) == 1
    assert "nan" not in md


def test_markdown_states_the_export_and_the_teacher_in_words():
    row = ev.summarize([{k: 0.5 for k in ev.METRICS}] * 2)
    report = {
        **_meta(),
        "seeds": [0, 1],
        "teacher": {"backbone": "smollm2", "frozen": True, "max_length": 384},
        "models": {"student_kd": row, "student_int8": row},
        "bundle": "runs/x/bundle",
        "size_bytes": {"onnx_fp32": 2000, "onnx_int8": 500},
        "export": {
            "int8_form": "weights",
            "preset": None,
            "parity_fold0": {"summary": {"passed": True, "n_samples": 21,
                                         "torch_vs_onnx_max_abs_diff": 1e-6,
                                         "int8_delta_prauc": -0.0012, "int8_delta_jaccard": 0.0,
                                         "int8_top10_overlap": 1.0}},
        },
    }  # fmt: skip
    md = ev.report_markdown(report)
    assert "the students over 2 seeds x 2 folds" in md
    assert "student_int8 over seed 0's student of each fold" in md
    assert "- bundle: `runs/x/bundle`" in md and "- int8 form: weights\n" in md
    assert "onnx_int8 500 bytes" in md
    assert "passed; torch vs ONNX max |diff| 1.0e-06, int8 - fp32 PR-AUC -0.0012" in md
    assert "Teacher: smollm2, frozen (linear probe on its features); prompts cut at 384" in md


def test_write_report(tmp_path):
    report = {**_meta(), "models": {"teacher": {k: 0.25 for k in ev.METRICS}
                                    | {f"{k}_std": 0.0 for k in ev.METRICS}}}  # fmt: skip
    ev.write_report(report, tmp_path)
    assert json.loads((tmp_path / "report.json").read_text()) == report
    assert (tmp_path / "report.md").read_text(encoding="utf-8") == ev.report_markdown(report)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "report.md"]
