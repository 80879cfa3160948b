"""Tests for export.medication.parity on a trained tiny student: passes when the graphs agree,
fails with the numbers when they do not (a corrupted int8 model, a different model, a float
graph)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from torch.nn import functional as F  # noqa: N812

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import numpy_helper  # noqa: E402

from contract.layout import INPUT_NAMES  # noqa: E402
from distill.medication.evaluate import choose_threshold  # noqa: E402
from distill.medication.student import LeaderStudent, StudentConfig  # noqa: E402
from distill.metrics import prauc  # noqa: E402
from export.medication.graph import example_inputs, export_student  # noqa: E402
from export.medication.parity import (  # noqa: E402
    check_int8_vs_fp32,
    check_torch_vs_onnx,
    parity_report,
    run_onnx,
)
from export.parity import (  # noqa: E402
    INTEGER_MATMUL_OPS,
    ParityError,
    check_integer_ops,
    top_k_overlap,
)
from export.quantize import quantize  # noqa: E402

CFG = StudentConfig(
    n_diagnoses=60,
    n_procedures=20,
    n_medications=42,
    n_profile=10,
    n_labels=40,
    dim=32,
    heads=4,
    visit_layers=1,
    dropout=0.0,
    teacher_dim=48,
)


# tiny models: one intra-op thread is fastest on the shared 2-core machine
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def synthetic(n: int, seed: int) -> dict[str, np.ndarray]:
    """A learnable task: the current visit's diagnoses decide its drugs (dx id -> 3 labels)."""
    args = example_inputs(CFG, n, 4, seed=seed, codes=(3, 3, 4, 3))
    out = {name: a.numpy() for name, a in zip(INPUT_NAMES, args, strict=True)}
    current = out["dx"][:, -1]  # [n, 5] ids, 0 = pad
    y = np.zeros((n, CFG.n_labels), dtype=np.float32)
    rows = np.repeat(np.arange(n), current.shape[1])
    ids = current.reshape(-1)
    keep = ids > 0
    for shift in (0, 11, 23):
        y[rows[keep], (ids[keep] * 7 + shift) % CFG.n_labels] = 1.0
    out["y"] = y
    return out


def train(steps: int = 100, seed: int = 0) -> LeaderStudent:
    torch.manual_seed(seed)
    model = LeaderStudent(CFG)
    data = synthetic(2048, seed=100 + seed)
    x = [torch.from_numpy(data[n]) for n in INPUT_NAMES]
    y = torch.from_numpy(data["y"])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(y), (128,), generator=g)
        logits, _ = model(*(t[idx] for t in x))
        loss = F.binary_cross_entropy_with_logits(logits, y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """A trained student, its fp32 export and its arm64 int8 model, plus held-out samples
    and the decision threshold chosen on a validation set."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    model = train()
    folder = tmp_path_factory.mktemp("parity")
    fp32, int8 = folder / "student.onnx", folder / "student.int8.onnx"
    export_student(model, CFG, fp32)
    quantize(fp32, int8, "arm64")
    val = synthetic(200, seed=5)
    with torch.no_grad():
        logits, _ = model(*(torch.from_numpy(val[n]) for n in INPUT_NAMES))
    threshold = choose_threshold(val["y"], torch.sigmoid(logits).numpy())
    torch.set_num_threads(before)
    return model, fp32, int8, synthetic(300, seed=7), threshold


def test_the_student_learned_something(shipped):
    model, _, _, held, threshold = shipped
    with torch.no_grad():
        logits, _ = model(*(torch.from_numpy(held[n]) for n in INPUT_NAMES))
    probs = torch.sigmoid(logits).numpy()
    assert prauc(held["y"], probs) > 0.6  # chance is ~0.1
    assert probs.std() > 0.1  # predictions differ: the checks below are not vacuous
    pred = probs >= threshold
    assert 0 < pred.mean() < 0.5


def test_parity_passes_and_reports_its_numbers(shipped):
    model, fp32, int8, held, threshold = shipped
    report = parity_report(
        model, fp32, int8, held, held["y"], threshold, ddi_pairs=[(0, 1)], int8_form="dynamic"
    )
    json.dumps(report)  # goes into the bundle manifest
    assert report["passed"]

    t = report["torch_vs_onnx"]
    assert t["passed"] and max(t["max_abs_diff"].values()) <= 1e-4
    assert t["n_samples"] == 300

    q = report["int8_vs_fp32"]
    assert q["passed"] and q["n_samples"] == 300
    assert abs(q["delta"]["prauc"]) <= 0.01 and abs(q["delta"]["jaccard"]) <= 0.01
    assert q["top10_overlap_mean"] >= 0.9
    assert q["fp32"]["prauc"] > 0.6
    assert 0 <= q["int8"]["ddi_rate"] <= 1
    assert q["max_abs_diff"]["logits"] > 0  # quantization did change something

    i = report["integer_ops"]
    # plain (MatMulInteger) or ORT-fused (MatMulIntegerToFloat, DynamicQuantizeMatMul) products
    assert i["passed"] and sum(i["integer_ops"].get(op, 0) for op in INTEGER_MATMUL_OPS) >= 1
    assert i["initializers_by_type"]["int8"] >= 1

    summary = report["summary"]
    assert summary["passed"] and summary["n_samples"] == 300
    assert summary["int8_delta_prauc"] == q["delta"]["prauc"]
    assert summary["int8_top10_overlap"] == q["top10_overlap_mean"]
    assert summary["torch_vs_onnx_max_abs_diff"] <= 1e-4


def test_a_corrupted_int8_model_fails_with_numbers(shipped, tmp_path):
    _, fp32, int8, held, threshold = shipped
    model = onnx.load(str(int8))
    # the per-channel weight scales of the output layer (one per label), scrambled
    head_scale = next(
        t
        for t in model.graph.initializer
        if t.name.endswith("_scale") and list(t.dims) == [CFG.n_labels]
    )
    scale = numpy_helper.to_array(head_scale)
    factors = np.exp(np.random.default_rng(0).normal(0.0, 1.5, scale.shape)).astype(scale.dtype)
    head_scale.CopyFrom(numpy_helper.from_array(scale * factors, head_scale.name))
    bad = tmp_path / "corrupt.onnx"
    onnx.save(model, str(bad))

    with pytest.raises(ParityError) as err:
        check_int8_vs_fp32(fp32, bad, held, held["y"], threshold)
    message = str(err.value)
    assert "int8_vs_fp32 on 300 samples" in message
    assert "> 0.01" in message or "< 0.9" in message  # a limit, with the numbers
    assert "fp32 0." in message or "overlap = 0." in message
    report = err.value.report
    assert report["passed"] is False and report["failures"]
    assert report["limits"]["max_abs_delta_prauc"] == 0.01


def test_an_int8_model_of_a_different_network_fails(shipped, tmp_path):
    """Compare against a different model: the fp32 graph with its embedding table resampled."""
    _, fp32, int8, held, threshold = shipped
    model = onnx.load(str(fp32))
    table = next(t for t in model.graph.initializer if t.name == "embed.weight")
    w = numpy_helper.to_array(table)
    rng = np.random.default_rng(1)
    table.CopyFrom(numpy_helper.from_array(rng.permutation(w), table.name))
    other = tmp_path / "other.onnx"
    onnx.save(model, str(other))

    with pytest.raises(ParityError, match=r"\|delta (prauc|jaccard)\| = 0\.\d+ > 0\.01"):
        check_int8_vs_fp32(other, int8, held, held["y"], threshold)


def test_torch_vs_a_different_model_fails(shipped):
    _, fp32, _, held, _ = shipped
    torch.manual_seed(123)
    stranger = LeaderStudent(CFG).eval()
    with pytest.raises(ParityError, match=r"max \|torch - onnx\| logits \d.*exceeds atol 0\.0001"):
        check_torch_vs_onnx(stranger, fp32, held)


def test_the_fp32_graph_is_not_an_int8_graph(shipped):
    _, fp32, int8, _, _ = shipped
    with pytest.raises(ParityError, match="no integer product op") as err:
        check_integer_ops(fp32)
    assert "float weights (limit 0)" in str(err.value)
    assert err.value.report["integer_product_ops"] == 0
    ok = check_integer_ops(int8)
    assert ok["float_weight_matmuls"] == 0 and ok["quantized_weight_tensors"] >= 1


def test_output_names_and_shapes_must_match(shipped, tmp_path):
    _, fp32, int8, held, threshold = shipped
    model = onnx.load(str(int8))
    model.graph.output[0].name = "scores"
    for node in model.graph.node:
        for k, name in enumerate(node.output):
            if name == "logits":
                node.output[k] = "scores"
    renamed = tmp_path / "renamed.onnx"
    onnx.save(model, str(renamed))
    with pytest.raises(ParityError, match=r"output names \['scores', 'features'\]"):
        check_int8_vs_fp32(fp32, renamed, held, held["y"], threshold)


def test_parity_report_runs_every_check_and_can_return_failures(shipped, tmp_path):
    model, fp32, int8, held, threshold = shipped
    not_int8 = tmp_path / "copy.onnx"
    shutil.copyfile(fp32, not_int8)  # "int8" model that is the fp32 graph
    report = parity_report(
        model, fp32, not_int8, held, held["y"], threshold, raise_on_failure=False,
        int8_form="dynamic",
    )  # fmt: skip
    assert report["passed"] is False
    assert report["torch_vs_onnx"]["passed"] and report["int8_vs_fp32"]["passed"]
    assert report["integer_ops"]["passed"] is False
    assert "no integer product op" in report["integer_ops"]["error"]
    with pytest.raises(ParityError, match="parity failed: integer_ops") as err:
        parity_report(model, fp32, not_int8, held, held["y"], threshold, int8_form="dynamic")
    assert err.value.report["integer_ops"]["passed"] is False


def test_top_k_overlap_counts_shared_labels():
    a = np.array([[9.0, 8, 7, 1, 0], [0, 1, 2, 3, 4]])
    b = np.array([[9.0, 0, 7, 8, 1], [4, 3, 2, 1, 0]])
    np.testing.assert_allclose(top_k_overlap(a, b, k=3), [2 / 3, 1 / 3])
    np.testing.assert_allclose(top_k_overlap(a, a, k=10), [1.0, 1.0])  # k capped at 5 labels


def test_inputs_may_be_torch_tensors_or_a_sequence(shipped):
    _, fp32, _, held, _ = shipped
    as_dict = run_onnx(fp32, held)
    as_tuple = run_onnx(fp32, tuple(torch.from_numpy(held[n]) for n in INPUT_NAMES))
    np.testing.assert_array_equal(as_dict["logits"], as_tuple["logits"])
    with pytest.raises(ValueError, match="lack"):
        run_onnx(fp32, {"dx": held["dx"]})
