"""Tests for app.medication: bundle verification, visit encoding, and the two inference backends
(onnxruntime and the numpy re-implementation) against the torch student.

A tiny bundle is built by hand: a small LeaderStudent with random weights exported to fp32 ONNX
(named model.int8.onnx, as the app expects; quantisation is tested elsewhere), its weights as
`.npz` through export.weights, and JSON side files with their sha256s in the manifest.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import math
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from app.medication.backends import NumpyBackend, OrtBackend, erf
from app.medication.bundle import Bundle, load_bundle
from app.medication.encoding import encode_visit, trim_padding
from app.medication.recommender import Recommendation, Recommender
from contract.bundle import BundleError
from contract.layout import INPUT_NAMES
from distill.data import tensors as dt
from distill.data.vocab import Vocab
from distill.medication.student import LeaderStudent, StudentConfig
from export.medication.weights import save_numpy_weights

ROOT = Path(__file__).resolve().parents[1]
MODEL_FILE = "model.int8.onnx"

DX = [f"icd9cm:{400 + i}" for i in range(23)]
PX = [f"icd9pcs:{3800 + i}" for i in range(9)]
MED = [f"{letter}{n:02d}X" for letter in "ABCN" for n in range(1, 5)]  # 16 ATC3-like codes
PROFILE = [f"{f}={v}" for f, vs in (("gender", "FM"), ("age", "4567"), ("ins", "xy")) for v in vs]

VOCABS = dt.MedVocabs(
    diagnoses=Vocab(("<pad>", "<unk>", *DX)),
    procedures=Vocab(("<pad>", "<unk>", *PX)),
    medications=Vocab(("<pad>", "<unk>", *MED)),
    profile=Vocab(("<pad>", "<unk>", *PROFILE)),
)
# more visit slots than the slot embedding has, so that distances are clamped
TCFG = dt.TensorConfig(
    max_visits=6, max_diagnoses=5, max_procedures=3, max_medications=4, max_profile=3
)


def student_config(repeat_head: bool, wide: bool = False, codes: str = "sum") -> StudentConfig:
    return StudentConfig.from_vocabs(
        VOCABS, dim=32, heads=4, visit_layers=2, teacher_dim=16, max_visits=4,
        repeat_head=repeat_head, wide=wide,
        wide_codes=codes, wide_codes_scale=1.0 if codes == "sum" else 2.5,
    )  # fmt: skip


def random_model(cfg: StudentConfig, seed: int) -> LeaderStudent:
    """Random weights everywhere (LayerNorm and repeat weights too), in eval mode."""
    torch.manual_seed(seed)
    model = LeaderStudent(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("repeat_") or name == "wide.weight":
                p.copy_(torch.randn_like(p) * 2.0)
            else:
                p.add_(torch.randn_like(p) * 0.2)
    return model


def export_onnx(model: LeaderStudent, path: Path) -> None:
    from torch.export import Dim

    batch, visits = Dim("batch"), Dim("visits")
    dynamic_shapes = (
        {0: batch, 1: visits, 2: Dim("n_dx")},
        {0: batch, 1: visits, 2: Dim("n_px")},
        {0: batch, 1: visits, 2: Dim("n_med")},
        {0: batch, 1: visits},
        {0: batch, 1: Dim("n_profile")},
    )
    example = random_batch(model.config, b=3, v=5, seed=0, cd=6, cp=4, cm=7, p=3)
    torch.onnx.export(
        model,
        tuple(torch.from_numpy(example[n]) for n in INPUT_NAMES),
        str(path),
        dynamo=True,
        external_data=False,
        dynamic_shapes=dynamic_shapes,
        input_names=list(INPUT_NAMES),
        output_names=["logits", "features"],
        verbose=False,
    )


def random_batch(cfg, b: int, v: int, seed: int, cd=5, cp=3, cm=4, p=3) -> dict:
    """Random right-aligned inputs with ragged visit counts (numpy, as the app feeds them)."""
    rng = np.random.default_rng(seed)
    dx = rng.integers(0, cfg.n_diagnoses, (b, v, cd))
    px = rng.integers(0, cfg.n_procedures, (b, v, cp))
    med = rng.integers(0, cfg.n_medications, (b, v, cm))
    profile = rng.integers(0, cfg.n_profile, (b, p))
    n_visits = rng.integers(1, v + 1, b)
    mask = (np.arange(v)[None, :] >= (v - n_visits)[:, None]).astype(np.float32)
    keep = mask[..., None].astype(np.int64)
    dx, px, med = dx * keep, px * keep, med * keep
    med[:, -1] = 0
    dx[:, :, 0] = np.maximum(dx[:, :, 0], 2) * keep[..., 0]
    return {"dx": dx, "px": px, "med": med, "visit_mask": mask, "profile": profile}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_manifest(folder: Path, manifest: dict) -> None:
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")


def build_bundle(folder: Path, model: LeaderStudent, onnx_path: Path, threshold=0.5) -> Path:
    folder.mkdir(parents=True)
    cfg = model.config
    shutil.copyfile(onnx_path, folder / MODEL_FILE)
    save_numpy_weights(model, cfg, folder / "weights.npz")
    vocab = {k: getattr(VOCABS, k).to_json() for k in ("diagnoses", "procedures", "medications")}
    vocab["profile"] = VOCABS.profile.to_json()
    side = {
        "vocab.json": vocab,
        "labels.json": [{"code": c, "name": f"drug class {c}"} for c in VOCABS.labels],
        # A01X-A02X and A01X-B03X interact, plus a ring over the N group
        "ddi.json": [["A01X", "A02X"], ["B03X", "A01X"]]
        + [[f"N0{i}X", f"N0{i % 4 + 1}X"] for i in range(1, 5)],
    }
    for name, obj in side.items():
        (folder / name).write_text(json.dumps(obj, indent=1), encoding="utf-8")
    titles = {c: f"title of {c}" for c in (*DX, *PX)}
    (folder / "titles.json.gz").write_bytes(gzip.compress(json.dumps(titles).encode("utf-8")))
    (folder / "card.md").write_text("# Model card: test bundle\n", encoding="utf-8")
    files = {p.name: sha256(p) for p in sorted(folder.iterdir())}
    manifest = {
        "format": "pocketrec-bundle/1",
        "domain": "medication",
        "name": "test bundle",
        "created": "2025-01-01T00:00:00+00:00",
        "model": {
            "file": MODEL_FILE,
            "inputs": list(INPUT_NAMES),
            "outputs": ["logits", "features"],
            "opset": 18,
            "quantization": {"name": "none (fp32 test model)"},
        },
        "numpy_weights": "weights.npz",
        "student_config": cfg.to_dict(),
        "tensor_config": dataclasses.asdict(TCFG),
        "threshold": threshold,
        "files": files,
        "vocab_sha256": files["vocab.json"],
        "metrics": {},
        "teacher": {},
        "data": {},
        "parity": {},
    }
    write_manifest(folder, manifest)
    return folder


@pytest.fixture(
    scope="module",
    params=[
        (True, True, "sqrt"),
        (True, True, "mean"),
        (True, True, "sum"),
        (True, False, "sum"),
        (False, False, "sum"),
    ],
    ids=["wide_sqrt", "wide_mean", "repeat_head_wide", "repeat_head", "no_repeat_head"],
)
def built(request, tmp_path_factory):
    """(model, bundle folder) for a random student with / without the repeat head / wide path
    (its current codes summed, or averaged times a scale)."""
    tmp = tmp_path_factory.mktemp("bundle")
    repeat, wide, codes = request.param
    model = random_model(student_config(repeat, wide, codes), seed=11 if repeat else 12)
    export_onnx(model, tmp / "student.onnx")
    return model, build_bundle(tmp / "bundle", model, tmp / "student.onnx")


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    """A repeat-head bundle that tests may copy and tamper with."""
    tmp = tmp_path_factory.mktemp("base")
    model = random_model(student_config(True), seed=5)
    export_onnx(model, tmp / "student.onnx")
    return build_bundle(tmp / "bundle", model, tmp / "student.onnx")


def random_visit(rng: np.random.Generator, n_history: int):
    """Codes drawn from the vocabularies, some unknown; caps sometimes exceeded."""

    def pick(pool, hi, unknown_prefix):
        n = int(rng.integers(0, hi))
        out = [pool[int(i)] for i in rng.integers(0, len(pool), n)]
        if n and rng.random() < 0.3:
            out[int(rng.integers(0, n))] = f"{unknown_prefix}{int(rng.integers(0, 99))}"
        return out

    history = [
        (pick(DX, 8, "icd9cm:X"), pick(PX, 5, "icd9pcs:X"), pick(MED, 7, "Z"))
        for _ in range(n_history)
    ]
    fields = [("gender", "F"), ("age", str(int(rng.integers(3, 9)))), ("ins", "x")]
    profile = fields[: int(rng.integers(0, 4))] + (
        [("region", "north")] if rng.random() < 0.3 else []
    )
    if rng.random() < 0.5:
        profile = dict(profile)
    return pick(DX, 8, "icd9cm:X"), pick(PX, 5, "icd9pcs:X"), history, profile


# --------------------------------------------------------------------------------------------
# loading and recommending


def test_loads_and_recommends(bundle_dir):
    bundle = load_bundle(bundle_dir)
    assert isinstance(bundle, Bundle)
    assert bundle.label_codes == VOCABS.labels
    assert bundle.titles["icd9cm:400"] == "title of icd9cm:400"
    assert bundle.threshold == 0.5
    assert bundle.tensor_config.max_visits == TCFG.max_visits
    rec = Recommender(bundle, backend="onnxruntime")
    assert rec.backend == "onnxruntime"
    out = rec.recommend(
        ["icd9cm:401", "icd9cm:NOPE", "icd9cm:405"],
        ["icd9pcs:3801", "icd9pcs:BAD"],
        history=[(["icd9cm:402"], [], ["A01X", "Q99X"])],
        profile={"gender": "F", "age": "12"},
        top_k=5,
    )
    assert isinstance(out, Recommendation) and out.backend == "onnxruntime"
    assert len(out.drugs) == 5
    probs = [d["probability"] for d in out.drugs]
    assert probs == sorted(probs, reverse=True)
    assert all(0.0 <= p <= 1.0 for p in probs)
    assert all(d["suggested"] == (d["probability"] >= 0.5) for d in out.drugs)
    assert all(d["name"] == f"drug class {d['code']}" for d in out.drugs)
    assert set(out.unknown_codes) == {"icd9cm:NOPE", "icd9pcs:BAD", "Q99X"}
    assert len(out.unknown_codes) == 3  # each once
    assert out.unknown_profile == ["age=12"] and out.visit_read
    # unknown codes are left out of the input: they move no score
    clean = rec.recommend(
        ["icd9cm:401", "icd9cm:405"],
        ["icd9pcs:3801"],
        history=[(["icd9cm:402"], [], ["A01X"])],
        profile={"gender": "F"},
        top_k=5,
    )
    assert [d["probability"] for d in clean.drugs] == probs
    # nothing of the visit known: flagged, so no caller shows its scores as suggestions
    assert not rec.recommend(["icd9cm:NOPE"], [], top_k=5).visit_read
    everything = rec.recommend(["icd9cm:401"], [], top_k=None)
    assert len(everything.drugs) == len(VOCABS.labels)
    assert sorted(d["code"] for d in everything.drugs) == sorted(VOCABS.labels)
    assert len(rec.recommend(["icd9cm:401"], [], top_k=100).drugs) == len(VOCABS.labels)
    with pytest.raises(ValueError, match="top_k"):
        rec.recommend(["icd9cm:401"], [], top_k=0)
    with pytest.raises(TypeError, match="single string"):
        rec.recommend("icd9cm:401", [])


def test_recommender_accepts_a_path_and_rejects_unknown_backends(bundle_dir):
    assert Recommender(bundle_dir, backend="numpy").backend == "numpy"
    assert Recommender(str(bundle_dir)).backend == "onnxruntime"  # importable here
    with pytest.raises(ValueError, match="backend"):
        Recommender(bundle_dir, backend="tflite")


def test_threshold_flags_and_ddi_pairs(bundle_dir):
    bundle = dataclasses.replace(load_bundle(bundle_dir), threshold=0.0)  # everything suggested
    assert bundle.label_index["A01X"] == 0
    rec = Recommender(bundle, backend="numpy")
    out = rec.recommend(["icd9cm:401"], ["icd9pcs:3802"], top_k=None)
    assert all(d["suggested"] for d in out.drugs)
    pairs = {frozenset(p[:2]) for p in out.ddi}
    ring = {frozenset((f"N0{i}X", f"N0{i % 4 + 1}X")) for i in range(1, 5)}
    assert pairs == {frozenset(("A01X", "A02X")), frozenset(("A01X", "B03X"))} | ring
    rank = {d["code"]: i for i, d in enumerate(out.drugs)}
    for a, b, name_a, name_b in out.ddi:
        assert rank[a] < rank[b]  # in ranking order
        assert (name_a, name_b) == (f"drug class {a}", f"drug class {b}")
    # a threshold above every probability: nothing suggested, no warnings
    none = Recommender(dataclasses.replace(bundle, threshold=1.0), backend="numpy")
    out_none = none.recommend(["icd9cm:401"], [], top_k=None)
    assert not any(d["suggested"] for d in out_none.drugs) and out_none.ddi == []
    # pairs with drugs already accepted
    assert rec.ddi_with(["A02X", "C01X"], ["A01X"]) == [
        ("A02X", "A01X", "drug class A02X", "drug class A01X")
    ]
    assert {p[:2] for p in rec.ddi_with(out, ["N01X", "A01X"])} == {
        ("N02X", "N01X"),
        ("N04X", "N01X"),
        ("A02X", "A01X"),
        ("B03X", "A01X"),
    }
    assert rec.ddi_with(out_none.drugs, ["A01X"]) == []  # only suggested drugs count
    assert rec.ddi_with(["A02X"], ["ZZZZ"]) == []


# --------------------------------------------------------------------------------------------
# parity: torch vs onnxruntime vs numpy


def torch_logits(model: LeaderStudent, inputs: dict) -> np.ndarray:
    with torch.no_grad():
        logits, _ = model(*(torch.from_numpy(np.asarray(inputs[n])) for n in INPUT_NAMES))
    return logits.numpy()


def test_backends_match_torch(built):
    model, folder = built
    bundle = load_bundle(folder)
    ort_rec = Recommender(bundle, backend="onnxruntime")
    np_rec = Recommender(bundle, backend="numpy")
    assert np_rec.engine.repeat_head == model.config.repeat_head
    assert np_rec.engine.wide == model.config.wide
    assert bundle.student_config.wide_codes == model.config.wide_codes
    assert bundle.student_config.wide_codes_scale == model.config.wide_codes_scale
    rng = np.random.default_rng(7)
    worst = {"numpy-torch": 0.0, "ort-torch": 0.0, "numpy-ort": 0.0}
    cases = []
    for n_history in (0, 1, 2, 4, 5, 8):  # 8 > max_visits - 1: the oldest are dropped
        dx, px, history, profile = random_visit(rng, n_history)
        cases.append(encode_visit(bundle, dx, px, history, profile)[0])
    # batches with other widths, ragged visit counts and more slots than max_visits
    cases.append(random_batch(model.config, b=4, v=9, seed=1, cd=7, cp=2, cm=5, p=4))
    cases.append(random_batch(model.config, b=2, v=2, seed=2))
    for inputs in cases:
        want = torch_logits(model, inputs)
        got_np, got_ort = np_rec.logits(inputs), ort_rec.logits(inputs)
        assert got_np.shape == got_ort.shape == want.shape
        assert got_np.dtype == np.float32
        worst["numpy-torch"] = max(worst["numpy-torch"], float(np.abs(got_np - want).max()))
        worst["ort-torch"] = max(worst["ort-torch"], float(np.abs(got_ort - want).max()))
        worst["numpy-ort"] = max(worst["numpy-ort"], float(np.abs(got_np - got_ort).max()))
        np.testing.assert_allclose(np_rec.scores(inputs), ort_rec.scores(inputs), atol=1e-5)
    print(f"max |diff| of logits (repeat_head={model.config.repeat_head}): {worst}")
    assert all(v <= 1e-4 for v in worst.values()), worst
    # the repeat term really contributes (the parity above is not vacuous)
    if model.config.repeat_head:
        dx, px, history, profile = ["icd9cm:401"], [], [(["icd9cm:402"], [], ["A01X"])], ()
        with_med = encode_visit(bundle, dx, px, history, profile)[0]
        without = encode_visit(bundle, dx, px, [(["icd9cm:402"], [], [])], profile)[0]
        lift = np_rec.logits(with_med)[0] - np_rec.logits(without)[0]
        assert abs(lift[0]) > 0.5
    # the wide path really contributes: a current diagnosis moves every label by its wide row
    if model.config.wide:
        a = encode_visit(bundle, ["icd9cm:401"], [], [], ())[0]
        b = encode_visit(bundle, ["icd9cm:401", "icd9cm:405"], [], [], ())[0]
        row = model.wide.weight[bundle.vocabs["diagnoses"]["icd9cm:405"]].detach().numpy()
        if model.config.wide_codes != "sum":  # both rows, scaled for 2 codes, replace the one
            first = model.wide.weight[bundle.vocabs["diagnoses"]["icd9cm:401"]].detach().numpy()
            p = 1.0 if model.config.wide_codes == "mean" else 0.5
            s = model.config.wide_codes_scale
            row = (s / 2) ** p * (first + row) - s**p * first
        moved = np_rec.logits(b)[0] - np_rec.logits(a)[0]
        assert np.corrcoef(moved, row)[0, 1] > 0.9


def test_float16_numpy_weights_stay_close_to_onnxruntime(built, tmp_path):
    """The shipped bundle stores the numpy fallback's weights as float16 to halve its size."""
    model, folder = built
    bundle = load_bundle(folder)
    half = tmp_path / "weights16.npz"
    save_numpy_weights(model, model.config, half, dtype="float16")
    assert half.stat().st_size < 0.6 * (folder / "weights.npz").stat().st_size
    engine = NumpyBackend(half, bundle.manifest["student_config"])
    ort_rec = Recommender(bundle, backend="onnxruntime")
    inputs = random_batch(model.config, b=8, v=6, seed=3)
    got, want = engine.run(inputs), ort_rec.logits(inputs)
    assert float(np.abs(got - want).max()) < 2e-2
    # the ranking a clinician sees is the same
    assert (np.argsort(-got, axis=1)[:, :5] == np.argsort(-want, axis=1)[:, :5]).mean() > 0.95
    with pytest.raises(ValueError, match="dtype"):
        save_numpy_weights(model, model.config, half, dtype="int4")


def test_int8_numpy_weights_keep_the_ranking(built, tmp_path, monkeypatch):
    """int8 tables (per-row scale) for the numpy fallback: a quarter of the bytes, same top 5."""
    import export.medication.weights as mw

    monkeypatch.setattr(mw, "INT8_MIN_SIZE", 256)  # the test tables are small
    model, folder = built
    bundle = load_bundle(folder)
    small = tmp_path / "weights8.npz"
    save_numpy_weights(model, model.config, small, dtype="int8")
    with np.load(small, allow_pickle=False) as z:
        assert z["embed.weight"].dtype == np.int8 and "embed.weight.qscale" in z.files
        assert ("wide.weight.qscale" in z.files) == model.config.wide
    engine = NumpyBackend(small, bundle.manifest["student_config"])
    assert engine.wide == model.config.wide
    inputs = random_batch(model.config, b=8, v=6, seed=3)
    got, want = engine.run(inputs), torch_logits(model, inputs)
    assert float(np.abs(got - want).max()) < 0.3
    assert (np.argsort(-got, axis=1)[:, :5] == np.argsort(-want, axis=1)[:, :5]).mean() >= 0.85
    with np.load(small, allow_pickle=False) as z:  # a scale without its table is refused
        arrays = {k: z[k] for k in z.files}
    arrays["embed.weight"] = arrays["embed.weight"].astype(np.float32)
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    with pytest.raises(BundleError, match="qscale"):
        NumpyBackend(bad, bundle.manifest["student_config"])


def test_numpy_features_match_torch(built):
    model, folder = built
    bundle = load_bundle(folder)
    engine = NumpyBackend(bundle.weights_path, bundle.manifest["student_config"])
    inputs = random_batch(model.config, b=3, v=7, seed=3)
    _, features = engine.forward(inputs)
    with torch.no_grad():
        _, want = model(*(torch.from_numpy(inputs[n]) for n in INPUT_NAMES))
    np.testing.assert_allclose(features, want.numpy(), rtol=0, atol=1e-4)


def test_numpy_backend_rejects_bad_ids_and_foreign_weights(bundle_dir, tmp_path):
    bundle = load_bundle(bundle_dir)
    engine = NumpyBackend(bundle.weights_path, bundle.student_config)
    inputs = random_batch(student_config(True), b=1, v=3, seed=4)
    inputs["dx"][0, -1, 0] = len(VOCABS.diagnoses)
    with pytest.raises(ValueError, match="outside"):
        engine.run(inputs)
    wrong = {**bundle.manifest["student_config"], "dim": 16, "heads": 2}
    with pytest.raises(BundleError, match="weights.npz"):
        NumpyBackend(bundle.weights_path, wrong)
    junk = tmp_path / "weights.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(BundleError, match="weights.npz"):
        NumpyBackend(junk, bundle.student_config)


def test_numpy_weights_file_holds_the_state_dict_only(built):
    model, folder = built
    with np.load(folder / "weights.npz", allow_pickle=False) as z:
        assert set(z.files) == set(model.state_dict())
        for k in z.files:
            assert z[k].dtype == np.float32
            np.testing.assert_array_equal(z[k], model.state_dict()[k].numpy())
    with pytest.raises(ValueError, match="config"):
        other = student_config(not model.config.repeat_head, model.config.wide)
        save_numpy_weights(model, other, folder / "x.npz")
    assert not (folder / "x.npz").exists()
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temp files left


def test_erf_is_accurate():
    xs = np.linspace(-6.0, 6.0, 4001)
    want = np.array([math.erf(x) for x in xs])
    assert np.abs(erf(xs) - want).max() < 2e-7
    np.testing.assert_array_equal(erf(-xs), -erf(xs))  # odd


# --------------------------------------------------------------------------------------------
# encoding


def test_encode_visit_matches_distill(bundle_dir):
    bundle = load_bundle(bundle_dir)
    rng = np.random.default_rng(0)
    for trial in range(200):
        dx, px, history, profile = random_visit(rng, int(rng.integers(0, 10)))
        counted: Counter = Counter()
        want = dt.encode_visit(dx, px, history, profile, VOCABS, TCFG, counted)
        got, unknown = encode_visit(bundle, dx, px, history, profile)
        assert set(got) == set(want) == set(INPUT_NAMES)
        for name in INPUT_NAMES:
            assert got[name].dtype == want[name].dtype, (trial, name)
            np.testing.assert_array_equal(got[name], want[name], err_msg=f"{trial} {name}")
        assert unknown == list(dict.fromkeys(unknown))  # no repeats
        assert set(unknown) == set(counted), trial


def test_history_visits_may_be_mappings(bundle_dir):
    bundle = load_bundle(bundle_dir)
    as_tuple = encode_visit(
        bundle, ["icd9cm:401"], [], [(["icd9cm:402"], ["icd9pcs:3801"], ["A01X"])]
    )
    as_dict = encode_visit(
        bundle,
        ["icd9cm:401"],
        [],
        [{"diagnoses": ["icd9cm:402"], "procedures": ["icd9pcs:3801"], "medications": ["A01X"]}],
    )
    for name in INPUT_NAMES:
        np.testing.assert_array_equal(as_tuple[0][name], as_dict[0][name])


# --------------------------------------------------------------------------------------------
# tampering


@pytest.fixture
def copy(bundle_dir, tmp_path) -> Path:
    return Path(shutil.copytree(bundle_dir, tmp_path / "copy"))


def edit_manifest(folder: Path, **changes) -> dict:
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    manifest.update(changes)
    write_manifest(folder, manifest)
    return manifest


def test_flipped_byte_in_the_model_is_refused(copy):
    data = bytearray((copy / MODEL_FILE).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=rf"{MODEL_FILE}.*sha256"):
        load_bundle(copy)


def test_missing_file_is_refused(copy):
    (copy / "ddi.json").unlink()
    with pytest.raises(BundleError, match=r"ddi\.json.*missing"):
        load_bundle(copy)


def test_unknown_format_is_refused(copy):
    edit_manifest(copy, format="pocketrec-bundle/2")
    with pytest.raises(BundleError, match=r"pocketrec-bundle/2.*supported.*pocketrec-bundle/1"):
        load_bundle(copy)
    edit_manifest(copy, format=None)
    with pytest.raises(BundleError, match="supported formats"):
        load_bundle(copy)


def test_required_file_missing_from_the_list_is_refused(copy):
    manifest = json.loads((copy / "manifest.json").read_text(encoding="utf-8"))
    for name in (
        MODEL_FILE,
        "weights.npz",
        "vocab.json",
        "labels.json",
        "ddi.json",
        "titles.json.gz",
    ):
        files = {k: v for k, v in manifest["files"].items() if k != name}
        edit_manifest(copy, files=files)
        with pytest.raises(BundleError, match=rf"{name}.*not listed"):
            load_bundle(copy)


def test_vocab_sha256_mismatch_is_refused(copy):
    edit_manifest(copy, vocab_sha256="0" * 64)
    with pytest.raises(BundleError, match=r"vocab\.json.*vocab_sha256"):
        load_bundle(copy)


def test_edited_side_file_is_refused(copy):
    labels = json.loads((copy / "labels.json").read_text(encoding="utf-8"))
    labels[0]["name"] = "something else"
    (copy / "labels.json").write_text(json.dumps(labels), encoding="utf-8")
    with pytest.raises(BundleError, match=r"labels\.json.*sha256"):
        load_bundle(copy)


def test_manifest_that_is_not_json_is_refused(copy):
    (copy / "manifest.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(BundleError, match=r"manifest\.json.*not valid JSON"):
        load_bundle(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match=r"manifest\.json.*missing"):
        load_bundle(copy)
    with pytest.raises(BundleError, match="not a bundle directory"):
        load_bundle(copy / "nowhere")


def test_paths_outside_the_bundle_are_refused(copy):
    manifest = json.loads((copy / "manifest.json").read_text(encoding="utf-8"))
    edit_manifest(copy, files={**manifest["files"], "../escape.txt": "0" * 64})
    with pytest.raises(BundleError, match="escape"):
        load_bundle(copy)


def test_unlisted_files_are_ignored(copy):
    (copy / "extra.onnx").write_bytes(b"garbage that is never read")
    assert load_bundle(copy).label_codes == VOCABS.labels


def test_inconsistent_side_files_are_refused(copy):
    """Hash-valid files whose content does not fit the model are still refused."""
    manifest = json.loads((copy / "manifest.json").read_text(encoding="utf-8"))
    labels = json.loads((copy / "labels.json").read_text(encoding="utf-8"))[::-1]
    (copy / "labels.json").write_text(json.dumps(labels), encoding="utf-8")
    files = {**manifest["files"], "labels.json": sha256(copy / "labels.json")}
    edit_manifest(copy, files=files)
    with pytest.raises(BundleError, match=r"labels\.json.*medication id"):
        load_bundle(copy)


# --------------------------------------------------------------------------------------------
# fallback without onnxruntime


def test_auto_falls_back_to_numpy_without_onnxruntime(bundle_dir):
    script = f"""
import json, sys
sys.modules["onnxruntime"] = None
from app.medication.bundle import load_bundle
from app.medication.recommender import Recommender
from app.onnx_session import onnxruntime_available
assert not onnxruntime_available()
rec = Recommender(load_bundle({str(bundle_dir)!r}))
out = rec.recommend(["icd9cm:401"], ["icd9pcs:3801"], top_k=None)
try:
    Recommender(rec.bundle, backend="onnxruntime")
except ImportError:
    refused = True
else:
    refused = False
print(json.dumps({{"backend": rec.backend, "drugs": out.drugs, "refused": refused}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["backend"] == "numpy" and result["refused"]
    ort = Recommender(bundle_dir, backend="onnxruntime")
    want = {
        d["code"]: d["probability"]
        for d in ort.recommend(["icd9cm:401"], ["icd9pcs:3801"], top_k=None).drugs
    }
    got = {d["code"]: d["probability"] for d in result["drugs"]}
    assert got.keys() == want.keys()
    assert max(abs(got[k] - want[k]) for k in got) < 1e-5


def test_ort_backend_names_a_model_it_cannot_load(tmp_path):
    bad = tmp_path / MODEL_FILE
    bad.write_bytes(b"\x08\x07 not an onnx graph")
    with pytest.raises(BundleError, match=MODEL_FILE):
        OrtBackend(bad)


def test_trimming_padding_changes_no_output(built):
    model, folder = built
    bundle = load_bundle(folder)
    engine = Recommender(bundle, backend="onnxruntime").engine
    rng = np.random.default_rng(5)
    for n_history in (0, 1, 3):
        dx, px, history, profile = random_visit(rng, n_history)
        inputs = encode_visit(bundle, dx, px, history, profile)[0]
        trimmed = trim_padding(inputs)
        assert trimmed["visit_mask"].shape[1] == n_history + 1
        assert trimmed["dx"].shape[2] <= inputs["dx"].shape[2]
        np.testing.assert_allclose(engine.run(trimmed), engine.run(inputs), atol=1e-5)
    batch = random_batch(model.config, b=4, v=6, seed=9)
    np.testing.assert_allclose(engine.run(trim_padding(batch)), engine.run(batch), atol=1e-5)
