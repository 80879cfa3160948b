"""Tests for distill.data.tensors: layout, truncation, labels, unknown codes, vocab files."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from contract.layout import INPUT_NAMES, TensorConfig, profile_tokens
from distill.data import load_cohort
from distill.data.records import Cohort, ReadReport, Visit
from distill.data.samples import build_samples
from distill.data.tensors import MedVocabs, encode_samples, encode_visit

PROFILE = (("gender", "F"), ("age_band", "60-69"))


def visit(pid: str, order: int, dx, px=(), med=(), profile=PROFILE) -> Visit:
    return Visit(
        pid,
        f"{pid}-v{order}",
        order,
        f"2100-01-{order + 1:02d}",
        tuple(dx),
        tuple(px),
        tuple(med),
        profile,
    )


def long_patient(n: int = 12) -> list[Visit]:
    """Visit k has the single diagnosis d<k>, procedure p<k> and drug M<k:03d>."""
    return [visit("p1", k, [f"icd10cm:D{k}"], [f"icd10pcs:P{k}"], [f"M{k:03d}"]) for k in range(n)]


def cohort(visits: list[Visit]) -> Cohort:
    return Cohort(visits=visits, report=ReadReport(source="test"))


def test_profile_tokens_accepts_pairs_and_mappings():
    assert profile_tokens(PROFILE) == ["gender=F", "age_band=60-69"]
    assert profile_tokens(dict(PROFILE)) == ["gender=F", "age_band=60-69"]


def test_vocabs_build_and_labels():
    visits = [
        visit("a", 0, ["icd10cm:A"], ["icd10pcs:X"], ["B01A", "C07A"]),
        visit("a", 1, ["icd10cm:A", "icd10cm:B"], [], ["B01A"]),
    ]
    v = MedVocabs.build(visits)
    assert v.diagnoses.tokens == ("<pad>", "<unk>", "icd10cm:A", "icd10cm:B")
    assert v.procedures.tokens == ("<pad>", "<unk>", "icd10pcs:X")
    assert v.labels == ("B01A", "C07A")
    assert v.medications.id("C07A") - 2 == v.labels.index("C07A")
    assert set(v.profile.tokens[2:]) == {"gender=F", "age_band=60-69"}
    assert v.sizes() == {"diagnoses": 4, "procedures": 3, "medications": 4, "profile": 4}


def test_vocabs_save_load_round_trip(tmp_path):
    v = MedVocabs.build(long_patient(5))
    v.save(tmp_path / "vocab")
    names = sorted(p.name for p in (tmp_path / "vocab").iterdir())
    assert names == ["diagnoses.json", "medications.json", "procedures.json", "profile.json"]
    assert MedVocabs.load(tmp_path / "vocab") == v


@pytest.mark.parametrize("field", ["max_visits", "max_diagnoses", "max_profile"])
def test_tensor_config_rejects_non_positive(field):
    with pytest.raises(ValueError, match=field):
        TensorConfig(**{field: 0})


def test_right_alignment_and_current_med_row_zero():
    visits = long_patient(3)
    v = MedVocabs.build(visits)
    cfg = TensorConfig(max_visits=5, max_diagnoses=3, max_procedures=2, max_medications=2)
    samples = build_samples(cohort(visits), "all-visits")
    out = encode_samples(samples, v, cfg)
    assert set(out) == {*INPUT_NAMES, "y"}
    # sample 0: a first visit; only slot 4 exists
    np.testing.assert_array_equal(out["visit_mask"][0], [0, 0, 0, 0, 1])
    assert out["dx"][0, 4, 0] == v.diagnoses.id("icd10cm:D0")
    assert not out["dx"][0, :4].any() and not out["med"][0].any()
    # sample 2: visits 0, 1 in slots 2, 3; the target (visit 2) in slot 4
    s = 2
    np.testing.assert_array_equal(out["visit_mask"][s], [0, 0, 1, 1, 1])
    for slot, k in ((2, 0), (3, 1), (4, 2)):
        assert out["dx"][s, slot].tolist() == [v.diagnoses.id(f"icd10cm:D{k}"), 0, 0]
        assert out["px"][s, slot].tolist() == [v.procedures.id(f"icd10pcs:P{k}"), 0]
    assert out["med"][s, 2].tolist() == [v.medications.id("M000"), 0]
    assert out["med"][s, 3].tolist() == [v.medications.id("M001"), 0]
    assert not out["med"][s, 4].any()  # the current visit's drugs are the answer
    assert out["y"][s].tolist() == [1.0 if lab == "M002" else 0.0 for lab in v.labels]
    assert out["profile"][s].tolist()[:3] == [*v.profile.encode(profile_tokens(PROFILE)), 0]


def test_truncation_keeps_the_last_visits():
    visits = long_patient(12)
    v = MedVocabs.build(visits)
    cfg = TensorConfig(max_visits=10)
    samples = build_samples(cohort(visits), "last-visit")
    assert len(samples) == 1 and len(samples[0].history) == 11
    out = encode_samples(samples, v, cfg)
    assert out["visit_mask"][0].tolist() == [1.0] * 10
    # visits 2..11 kept, oldest in slot 0; visits 0 and 1 dropped
    kept = [v.diagnoses.tokens[i] for i in out["dx"][0, :, 0]]
    assert kept == [f"icd10cm:D{k}" for k in range(2, 12)]
    meds = [v.medications.tokens[i] for i in out["med"][0, :9, 0]]
    assert meds == [f"M{k:03d}" for k in range(2, 11)]
    assert not out["med"][0, 9].any()
    assert np.flatnonzero(out["y"][0]).tolist() == [v.labels.index("M011")]


def test_codes_beyond_the_cap_are_cut_keeping_the_first():
    dx = [f"icd10cm:C{i}" for i in range(6)]
    visits = [visit("a", 0, dx, [], ["B01A"])]
    v = MedVocabs.build(visits)
    out = encode_samples(
        build_samples(cohort(visits), "all-visits"), v, TensorConfig(max_visits=2, max_diagnoses=4)
    )
    assert out["dx"][0, 1].tolist() == [v.diagnoses.id(c) for c in dx[:4]]


def test_multi_hot_labels():
    visits = [
        visit("a", 0, ["icd10cm:A"], [], ["B01A", "C07A", "N02B"]),
        visit("b", 0, ["icd10cm:B"], [], ["C07A"]),
    ]
    v = MedVocabs.build(visits)
    out = encode_samples(build_samples(cohort(visits), "all-visits"), v, TensorConfig())
    assert out["y"].shape == (2, 3)
    got = [{v.labels[j] for j in np.flatnonzero(row)} for row in out["y"]]
    assert got == [{"B01A", "C07A", "N02B"}, {"C07A"}]


def test_unknown_codes_are_counted_and_left_out():
    train = [visit("a", 0, ["icd10cm:A"], ["icd10pcs:X"], ["B01A"])]
    v = MedVocabs.build(train)
    other = [
        visit(
            "b",
            0,
            ["icd10cm:A", "icd10cm:NEW"],
            ["icd10pcs:Y"],
            ["Z99Z"],
            profile=(("gender", "X"),),
        ),
        visit("b", 1, ["icd10cm:NEW"], [], ["B01A", "Q01Q"], profile=(("gender", "X"),)),
    ]
    unknown: Counter = Counter()
    out = encode_samples(build_samples(cohort(other), "last-visit"), v, TensorConfig(), unknown)
    assert unknown == Counter(
        {"icd10cm:NEW": 2, "icd10pcs:Y": 1, "Z99Z": 1, "Q01Q": 1, "gender=X": 1}
    )
    # not written as <unk> (1): no training sample holds it, so its row never learnt anything
    assert out["dx"][0, -2, :2].tolist() == [v.diagnoses.id("icd10cm:A"), 0]
    assert out["med"][0, -2, 0] == 0
    assert not (out["dx"] == 1).any() and not (out["profile"] == 1).any()
    assert out["y"][0].tolist() == [1.0]  # the unknown target drug is not a label


def test_encode_visit_matches_encode_samples():
    visits = long_patient(4)
    v = MedVocabs.build(visits)
    cfg = TensorConfig(max_visits=3)
    want = encode_samples(build_samples(cohort(visits), "last-visit"), v, cfg)
    history = [(h.diagnoses, h.procedures, h.medications) for h in visits[:3]]
    got = encode_visit(visits[3].diagnoses, visits[3].procedures, history, dict(PROFILE), v, cfg)
    assert set(got) == set(INPUT_NAMES)
    for name in INPUT_NAMES:
        assert got[name].shape[0] == 1
        assert got[name].dtype == want[name].dtype
        np.testing.assert_array_equal(got[name], want[name])


def test_encode_visit_first_visit():
    v = MedVocabs.build(long_patient(2))
    got = encode_visit(["icd10cm:D1"], [], [], PROFILE, v, TensorConfig(max_visits=4))
    assert got["visit_mask"].tolist() == [[0.0, 0.0, 0.0, 1.0]]
    assert got["dx"][0, 3, 0] == v.diagnoses.id("icd10cm:D1")
    assert not got["med"].any() and not got["px"].any()


def test_mimic4_demo_shapes_and_labels():
    c = load_cohort("mimic4-demo")
    v = MedVocabs.build(c.visits)
    cfg = TensorConfig()
    samples = build_samples(c, "all-visits")
    unknown: Counter = Counter()
    out = encode_samples(samples, v, cfg, unknown)
    n, vv = len(samples), cfg.max_visits
    shapes = {
        "dx": ((n, vv, cfg.max_diagnoses), np.int64),
        "px": ((n, vv, cfg.max_procedures), np.int64),
        "med": ((n, vv, cfg.max_medications), np.int64),
        "visit_mask": ((n, vv), np.float32),
        "profile": ((n, cfg.max_profile), np.int64),
        "y": ((n, len(v.labels)), np.float32),
    }
    for name, (shape, dtype) in shapes.items():
        assert out[name].shape == shape, name
        assert out[name].dtype == dtype, name
    assert not unknown  # the vocabulary was built from these very visits
    assert (out["y"].sum(axis=1) >= 1).all()
    assert (out["visit_mask"][:, -1] == 1).all()
    assert not out["med"][:, -1].any()
    # each visit slot that exists has a diagnosis; empty slots hold nothing
    has_dx = out["dx"][:, :, 0] > 0
    np.testing.assert_array_equal(has_dx, out["visit_mask"] > 0)
    hist = np.array([min(len(s.history), vv - 1) for s in samples])
    np.testing.assert_array_equal(out["visit_mask"].sum(axis=1), hist + 1)
