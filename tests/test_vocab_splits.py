"""Vocabularies, the published patient-split contract and the two sample protocols."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter

import pytest

from distill.data.records import Cohort, ReadReport, Visit
from distill.data.samples import build_samples, usable
from distill.data.splits import fold_of, is_validation, kfold, split
from distill.data.vocab import PAD, PAD_ID, UNK, UNK_ID, Vocab

# ---------------------------------------------------------------- vocabulary


def test_specials_come_first():
    vocab = Vocab.build(["x", "y"])
    assert (PAD, PAD_ID, UNK, UNK_ID) == ("<pad>", 0, "<unk>", 1)
    assert vocab.id("<pad>") == 0
    assert vocab.id("<unk>") == 1
    assert vocab.tokens[:2] == ("<pad>", "<unk>")


def test_frequency_order_then_alphabetical():
    vocab = Vocab.build(["b", "c", "a", "c", "b", "c", "d", "e"])
    # c three times, b twice, then a, d, e once each in alphabetical order
    assert vocab.tokens == ("<pad>", "<unk>", "c", "b", "a", "d", "e")
    assert [vocab.id(t) for t in "cbade"] == [2, 3, 4, 5, 6]
    assert Vocab.build(["z", "y", "x"]).tokens[2:] == ("x", "y", "z")


def test_build_ignores_specials_and_applies_min_count():
    vocab = Vocab.build(["<unk>", "<pad>", "a", "a", "b"], min_count=2)
    assert vocab.tokens == ("<pad>", "<unk>", "a")
    assert len(vocab) == 3
    assert "a" in vocab and "b" not in vocab


def test_same_tokens_give_the_same_ids_whatever_their_order():
    tokens = ["J01C", "N02B", "A02B", "N02B", "B01A", "J01C", "C07A"]
    shuffled = tokens[:]
    random.Random(3).shuffle(shuffled)
    assert Vocab.build(tokens) == Vocab.build(shuffled)


def test_json_round_trip(tmp_path):
    vocab = Vocab.build(["A02B", "N02B", "N02B", "héparine"])
    path = tmp_path / "sub" / "vocab.json"
    vocab.save(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data == {"<pad>": 0, "<unk>": 1, "N02B": 2, "A02B": 3, "héparine": 4}
    loaded = Vocab.load(path)
    assert loaded == vocab
    assert loaded.id("héparine") == 4
    assert [p.name for p in path.parent.iterdir()] == ["vocab.json"]  # no temp file left


def test_unknown_tokens_are_counted_not_dropped():
    vocab = Vocab.build(["a", "b"])
    unknown = Counter()
    ids = vocab.encode(["a", "zz", "b", "zz", "yy"], unknown)
    assert ids == [vocab.id("a"), UNK_ID, vocab.id("b"), UNK_ID, UNK_ID]
    assert unknown == Counter({"zz": 2, "yy": 1})
    assert vocab.encode(["zz"]) == [UNK_ID]  # no counter: still encoded
    assert vocab.id("zz") == UNK_ID


@pytest.mark.parametrize(
    "data",
    [
        {"<pad>": 0, "<unk>": 1, "a": 3},  # gap at 2
        {"<pad>": 0, "<unk>": 1, "a": 1},  # repeated id
        {"<pad>": 1, "<unk>": 2, "a": 3},  # does not start at 0
    ],
    ids=["gap", "repeat", "offset"],
)
def test_gapped_ids_are_rejected(tmp_path, data):
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match="no gaps") as info:
        Vocab.load(path)
    assert str(path) in str(info.value)


def test_specials_must_lead():
    with pytest.raises(ValueError, match="starts with"):
        Vocab.from_json({"a": 0, "<pad>": 1, "<unk>": 2})
    with pytest.raises(ValueError, match="duplicate"):
        Vocab(("<pad>", "<unk>", "a", "a"))


# ---------------------------------------------------------------- splits

IDS = ["10006", "10011", "42458", "10025463", "p-7", ""]


def contract_fold(p, k):
    return int(hashlib.sha256(str(p).encode()).hexdigest(), 16) % k


def contract_validation(p):
    return int(hashlib.sha256(("val:" + str(p)).encode()).hexdigest(), 16) % 8 == 0


@pytest.mark.parametrize("k", [2, 5, 10])
def test_fold_of_is_the_published_formula(k):
    for p in IDS:
        assert fold_of(p, k) == contract_fold(p, k), p
    assert fold_of("10006", 5) == contract_fold(10006, 5)  # str(p) of an int id


def test_is_validation_is_the_published_formula():
    ids = [str(i) for i in range(10000, 10200)]
    assert [is_validation(p) for p in ids] == [contract_validation(p) for p in ids]
    assert any(is_validation(p) for p in ids) and not all(is_validation(p) for p in ids)


def test_folds_partition_the_patients():
    patients = [str(i) for i in range(1000)]
    splits = kfold(patients, 5)
    assert [s.fold for s in splits] == list(range(5))
    tests = [s.test for s in splits]
    assert set().union(*tests) == set(patients)
    assert sum(len(t) for t in tests) == len(patients)  # disjoint
    for s in splits:
        assert not s.test & (s.train | s.validation)
        assert not s.train & s.validation
        assert s.train | s.validation | s.test == set(patients)
        assert all(fold_of(p, 5) == s.fold for p in s.test)
        assert all(is_validation(p) for p in s.validation)
        assert all(not is_validation(p) for p in s.train)
    # about one training patient in eight is held out for validation
    val = len(splits[0].validation) / (len(splits[0].validation) + len(splits[0].train))
    assert 0.06 < val < 0.2


def test_seed_zero_is_the_contract_and_seed_one_differs():
    patients = [str(i) for i in range(200)]
    seed0 = [fold_of(p, 5, seed=0) for p in patients]
    seed1 = [fold_of(p, 5, seed=1) for p in patients]
    assert seed0 == [contract_fold(p, 5) for p in patients]
    assert seed1 != seed0
    assert seed1 == [contract_fold("1:" + p, 5) for p in patients]
    assert split(patients, 5, 0, seed=0) == kfold(patients, 5)[0]
    assert split(patients, 5, 0, seed=1).test != split(patients, 5, 0).test
    val1 = [is_validation(p, seed=1) for p in patients]
    assert val1 != [is_validation(p) for p in patients]


def test_split_arguments_are_checked():
    with pytest.raises(ValueError, match="k >= 2"):
        fold_of("1", 1)
    with pytest.raises(ValueError, match="fold must be in 0..4"):
        split(["1"], 5, 5)
    with pytest.raises(ValueError):
        split(["1"], 5, -1)


# ---------------------------------------------------------------- samples


def visit(pid, vid, order, dx=("icd9cm:4019",), px=("icd9pcs:3893",), rx=("C07A",)):
    return Visit(
        patient_id=pid,
        visit_id=vid,
        order=order,
        time=f"2150-01-{order + 1:02d} 08:00:00",
        diagnoses=tuple(dx),
        procedures=tuple(px),
        medications=tuple(rx),
    )


# p1: four visits, the second has no medications, the third no procedures
P1 = [
    visit("p1", "a0", 0),
    visit("p1", "a1", 1, rx=()),
    visit("p1", "a2", 2, px=()),
    visit("p1", "a3", 3),
]
# p2: one visit without procedures; p3: one visit without diagnoses (never usable)
P2 = [visit("p2", "b0", 0, px=())]
P3 = [visit("p3", "c0", 0, dx=())]


@pytest.fixture
def cohort():
    # visits out of order on purpose: samples follow `order`, not list position
    return Cohort(visits=[P1[2], P3[0], P1[0], P2[0], P1[3], P1[1]], report=ReadReport("hand"))


def test_usable():
    assert usable(P1[0]) and usable(P1[2]) and usable(P2[0])
    assert not usable(P1[1])  # no medications
    assert not usable(P3[0])  # no diagnoses
    assert not usable(P1[2], require_procedures=True)
    assert usable(P1[3], require_procedures=True)


def test_last_visit_protocol(cohort):
    samples = {s.patient_id: s for s in build_samples(cohort, "last-visit")}
    assert set(samples) == {"p1", "p2"}
    assert samples["p1"].target == P1[3]
    assert samples["p1"].history == (P1[0], P1[2])  # a1 (no medications) left out
    assert samples["p1"].sample_id == "p1:a3"
    assert samples["p2"].target == P2[0]
    assert samples["p2"].history == ()


def test_all_visits_protocol(cohort):
    samples = build_samples(cohort, "all-visits")
    got = [(s.sample_id, tuple(v.visit_id for v in s.history)) for s in samples]
    assert sorted(got) == [
        ("p1:a0", ()),
        ("p1:a2", ("a0",)),
        ("p1:a3", ("a0", "a2")),
        ("p2:b0", ()),
    ]
    for s in samples:
        assert all(usable(v) for v in s.history)
        assert all(v.order < s.target.order for v in s.history)


def test_require_procedures_filters_more(cohort):
    last = build_samples(cohort, "last-visit", require_procedures=True)
    assert [(s.sample_id, s.history) for s in last] == [("p1:a3", (P1[0],))]
    every = build_samples(cohort, "all-visits", require_procedures=True)
    assert sorted(s.sample_id for s in every) == ["p1:a0", "p1:a3"]


def test_unknown_protocol():
    with pytest.raises(ValueError, match="unknown protocol 'next-visit'"):
        build_samples(Cohort(visits=[], report=ReadReport("x")), "next-visit")
