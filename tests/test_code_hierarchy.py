"""The code hierarchy (`TensorConfig.ancestors`): ICD categories as extra tokens, laid out the
same way in training (`distill.data.tensors`) and on the device (`app.medication.encoding`), so
a code the model never saw moves the scores through its category."""

from __future__ import annotations

import dataclasses
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

from app.medication.encoding import encode_visit as app_encode_visit
from contract.layout import (
    INPUT_NAMES,
    TensorConfig,
    code_ancestors,
    empty_inputs,
    expand_codes,
    row_widths,
)
from distill.data.records import Cohort, ReadReport, Visit
from distill.data.samples import build_samples
from distill.data.tensors import MedVocabs, encode_samples, encode_visit

PROFILE = (("gender", "F"), ("age_band", "60-69"))
ON = TensorConfig(
    max_visits=4, max_diagnoses=3, max_procedures=2, max_medications=3, ancestors=True
)
OFF = dataclasses.replace(ON, ancestors=False)


def visit(pid: str, order: int, dx, px=(), med=()) -> Visit:
    return Visit(pid, f"{pid}-v{order}", order, f"2100-01-{order + 1:02d}", tuple(dx), tuple(px),
                 tuple(med), PROFILE)  # fmt: skip


VISITS = [
    visit("a", 0, ["icd9cm:4280", "icd9cm:4019"], ["icd9pcs:9671"], ["C03C", "B01A"]),
    visit("a", 1, ["icd9cm:42821", "icd9cm:V1582"], ["icd9pcs:3893"], ["C03C"]),
    visit("b", 0, ["icd10cm:I5021", "icd10cm:I10", "icd9cm:E8781"], ["icd10pcs:02HV33Z"], ["C07A"]),
    visit("b", 1, ["icd10cm:E119"], [], ["A10B"]),
]


@pytest.mark.parametrize(
    ("code", "want"),
    [
        ("icd9cm:4280", ("icd9cm:428",)),
        ("icd9cm:42821", ("icd9cm:428",)),
        ("icd9cm:311", ()),  # a 3-digit code is its own category
        ("icd9cm:V1582", ("icd9cm:V15",)),  # V + 2 digits
        ("icd9cm:V5867", ("icd9cm:V58",)),
        ("icd9cm:E8781", ("icd9cm:E878",)),  # E + 3 digits
        ("icd9cm:E878", ()),
        ("icd10cm:I5021", ("icd10cm:I50",)),
        ("icd10cm:T402X1A", ("icd10cm:T40",)),
        ("icd10cm:I10", ()),
        ("icd9pcs:9671", ("icd9pcs:96",)),
        ("icd9pcs:966", ("icd9pcs:96",)),
        ("icd9pcs:96", ()),
        ("icd10pcs:02HV33Z", ("icd10pcs:02H",)),
        ("B01A", ()),  # ATC classes and profile tokens have no ICD category
        ("gender=F", ()),
        ("snomed:12345", ()),
        ("icd9cm:", ()),
    ],
)
def test_code_ancestors(code, want):
    assert code_ancestors(code) == want


def test_expand_codes_once_each_and_not_the_codes_themselves():
    codes = ["icd9cm:4280", "icd9cm:42821", "icd9cm:428", "icd9cm:4019", "icd10cm:I5021"]
    assert expand_codes(codes) == ["icd9cm:401", "icd10cm:I50"]
    assert expand_codes([]) == []


def test_tensor_config_from_dict_keeps_old_bundles_meaning():
    old = {"max_visits": 6, "max_diagnoses": 8, "max_procedures": 4, "max_medications": 8,
           "max_profile": 7}  # fmt: skip
    assert TensorConfig.from_dict(old).ancestors is False
    assert TensorConfig.from_dict({**old, "ancestors": True}).ancestors is True
    assert TensorConfig.from_dict(dataclasses.asdict(ON)) == ON
    with pytest.raises(ValueError, match="ancestors must be true or false"):
        TensorConfig.from_dict({**old, "ancestors": 1})
    with pytest.raises(ValueError, match=r"missing fields \['max_profile'\]"):
        TensorConfig.from_dict({k: v for k, v in old.items() if k != "max_profile"})
    with pytest.raises(ValueError, match=r"unknown fields \['levels'\]"):
        TensorConfig.from_dict({**old, "levels": 2})
    with pytest.raises(ValueError, match="manifest.json: tensor_config: expected an object"):
        TensorConfig.from_dict([], "manifest.json: tensor_config")
    with pytest.raises(ValueError, match="max_visits must be an integer >= 1"):
        TensorConfig.from_dict({**old, "max_visits": True})


def test_rows_are_twice_as_wide_with_ancestors():
    assert row_widths(OFF) == {"dx": 3, "px": 2, "med": 3}
    assert row_widths(ON) == {"dx": 6, "px": 4, "med": 3}
    assert empty_inputs(2, ON)["dx"].shape == (2, 4, 6)


def test_vocab_holds_the_categories_only_when_asked():
    plain, wide = MedVocabs.build(VISITS), MedVocabs.build(VISITS, ancestors=True)
    cats = {"icd9cm:428", "icd9cm:401", "icd9cm:V15", "icd9cm:E878", "icd10cm:I50", "icd10cm:E11"}
    assert not cats & set(plain.diagnoses.tokens)
    assert cats <= set(wide.diagnoses.tokens)
    assert {"icd9pcs:96", "icd9pcs:38", "icd10pcs:02H"} <= set(wide.procedures.tokens)
    assert "icd10cm:I10" in wide.diagnoses  # its own category, once
    assert wide.medications == plain.medications  # the labels do not change
    # counted per visit row: icd9cm:428 is in two visits, as often as the most frequent code
    assert wide.diagnoses.tokens.index("icd9cm:428") < wide.diagnoses.tokens.index("icd9cm:401")


def _ids(vocabs, kind, codes):
    return [getattr(vocabs, kind).id(c) for c in codes]


def test_layout_known_codes_then_known_categories_unknowns_left_out_and_counted_once():
    v = MedVocabs.build(VISITS, ancestors=True)
    unknown: Counter = Counter()
    # an unseen child of a known category, an entirely unknown code, a known one
    dx = ["icd9cm:42823", "icd9cm:99999", "icd9cm:4019"]
    px = ["icd9pcs:9672"]  # unseen, category icd9pcs:96 known
    out = encode_visit(dx, px, [], PROFILE, v, ON, unknown)
    row = out["dx"][0, -1]
    # no <unk> (id 1) is written: its row never learnt anything
    want = [v.diagnoses.id("icd9cm:4019"), *_ids(v, "diagnoses", ["icd9cm:428", "icd9cm:401"])]
    assert row.tolist() == want + [0] * (6 - len(want))
    assert out["px"][0, -1].tolist() == [v.procedures.id("icd9pcs:96"), 0, 0, 0]
    # the codes the model does not know are counted, the categories never
    assert unknown == Counter({"icd9cm:42823": 1, "icd9cm:99999": 1, "icd9pcs:9672": 1})
    off = encode_visit(dx, px, [], PROFILE, MedVocabs.build(VISITS), OFF)
    assert off["dx"][0, -1].tolist() == [MedVocabs.build(VISITS).diagnoses.id("icd9cm:4019"), 0, 0]
    # a visit of unknown codes only, without the hierarchy: nothing of it is written
    alone = encode_visit(["icd9cm:99999"], [], [], PROFILE, v, OFF)
    assert not alone["dx"][0, -1].any() and alone["visit_mask"][0, -1] == 1.0


def test_cap_applies_to_the_codes_and_their_categories_follow():
    v = MedVocabs.build(VISITS, ancestors=True)
    dx = ["icd10cm:I5021", "icd9cm:42821", "icd9cm:4280", "icd9cm:4019"]  # 4 codes, cap 3
    row = encode_visit(dx, [], [], PROFILE, v, ON)["dx"][0, -1]
    # icd9cm:4019 is cut, so its category is not added either
    assert row.tolist() == _ids(v, "diagnoses", dx[:3] + ["icd10cm:I50", "icd9cm:428"]) + [0]


def test_training_samples_and_live_visit_agree():
    v = MedVocabs.build(VISITS, ancestors=True)
    samples = build_samples(Cohort(visits=VISITS, report=ReadReport(source="t")), "last-visit")
    want = encode_samples(samples, v, ON)
    for i, s in enumerate(samples):
        history = [(h.diagnoses, h.procedures, h.medications) for h in s.history]
        got = encode_visit(s.target.diagnoses, s.target.procedures, history, PROFILE, v, ON)
        for name in INPUT_NAMES:
            np.testing.assert_array_equal(got[name][0], want[name][i], err_msg=name)


def _app_bundle(vocabs: MedVocabs, cfg: TensorConfig):
    # what app.medication.encoding reads from a Bundle: the vocabularies and the tensor config
    return SimpleNamespace(
        vocabs={k: getattr(vocabs, k).to_json() for k in ("diagnoses", "procedures",
                                                          "medications", "profile")},
        tensor_config=cfg,
    )  # fmt: skip


@pytest.mark.parametrize("cfg", [ON, OFF], ids=["ancestors", "plain"])
def test_app_encoding_equals_training_encoding(cfg):
    v = MedVocabs.build(VISITS, ancestors=cfg.ancestors)
    bundle = _app_bundle(v, cfg)
    cases = [
        (["icd9cm:42899", "icd10cm:I5029", "icd9cm:xyz"], ["icd9pcs:9672"], []),
        (["icd10cm:E1165"], [], [(["icd9cm:42821"], ["icd10pcs:02HV3ZZ"], ["C03C", "N06A"])]),
        ([], [], [(["icd9cm:4280"], [], ["B01A"])] * 6),
    ]
    for dx, px, history in cases:
        counted: Counter = Counter()
        want = encode_visit(dx, px, history, PROFILE, v, cfg, counted)
        got, unknown = app_encode_visit(bundle, dx, px, history, PROFILE)
        for name in INPUT_NAMES:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
        assert unknown == list(counted)


def test_an_unseen_child_code_moves_a_tiny_models_scores():
    torch = pytest.importorskip("torch")
    from distill.medication.student import LeaderStudent, StudentConfig

    def scores(vocabs, cfg, dx):
        x = encode_visit(dx, [], [], PROFILE, vocabs, cfg)
        with torch.no_grad():
            out = model(*(torch.from_numpy(x[n]) for n in INPUT_NAMES))[0]
        return out[0].numpy()

    v = MedVocabs.build(VISITS, ancestors=True)
    torch.manual_seed(0)
    model = LeaderStudent(
        StudentConfig.from_vocabs(v, dim=16, heads=2, visit_layers=1, teacher_dim=8, max_visits=4)
    ).eval()
    child = ["icd9cm:42823"]  # never seen; its category icd9cm:428 is known
    stranger = ["icd9cm:99999"]  # neither it nor icd9cm:999 is known
    on_child, on_stranger = scores(v, ON, child), scores(v, ON, stranger)
    assert np.abs(on_child - on_stranger).max() > 1e-4  # the category moves the scores
    # ... exactly as the category itself would: the unknown child adds nothing of its own
    np.testing.assert_allclose(on_child, scores(v, OFF, ["icd9cm:99999", "icd9cm:428"]), atol=1e-6)
    np.testing.assert_allclose(on_child, scores(v, OFF, ["icd9cm:428"]), atol=1e-6)
    # without the hierarchy both are left out: the scores of an empty visit
    np.testing.assert_allclose(scores(v, OFF, child), scores(v, OFF, stranger), atol=0)
    np.testing.assert_allclose(scores(v, OFF, child), scores(v, OFF, []), atol=0)


def _with_tensor_config(src, dst, **changes):
    import json
    import shutil

    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["tensor_config"].update(changes)
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def test_bundle_switch_parsed_old_bundles_keep_their_meaning(tiny_bundle, tmp_path):
    from app.medication.bundle import load_bundle
    from contract.bundle import BundleError

    assert load_bundle(tiny_bundle).tensor_config.ancestors is False  # no field: off
    on = load_bundle(_with_tensor_config(tiny_bundle, tmp_path / "on", ancestors=True))
    assert on.tensor_config.ancestors is True
    with pytest.raises(BundleError, match="ancestors must be true or false"):
        load_bundle(_with_tensor_config(tiny_bundle, tmp_path / "bad", ancestors="yes"))


def test_the_runtime_scores_the_wider_rows(tiny_bundle, tmp_path):
    from app.medication.recommender import Recommender

    on = Recommender(_with_tensor_config(tiny_bundle, tmp_path / "on", ancestors=True))
    off = Recommender(tiny_bundle)
    # the tiny bundle's vocabulary holds no categories: the same ids, in rows twice as wide
    dx, px = ["icd9cm:4019", "icd9cm:42731", "icd9cm:42899"], ["icd9pcs:3893"]
    x_on, unknown = on.encode(dx, px)
    assert x_on["dx"].shape[-1] == 2 * off.encode(dx, px)[0]["dx"].shape[-1]
    assert unknown == ["icd9cm:42899"]
    for backend in ("onnxruntime", "numpy"):
        a = Recommender(on.bundle, backend=backend).recommend(dx, px, top_k=None)
        b = Recommender(off.bundle, backend=backend).recommend(dx, px, top_k=None)
        assert [d["probability"] for d in a.drugs] == pytest.approx(
            [d["probability"] for d in b.drugs], abs=1e-6
        )
